"""Grounding with expressions in several languages: per-language text features, and the
mixed-language centroid: the text encoder's hidden states averaged over languages at the layer where
the languages agree most, then carried through the remaining layers (SigLIP / SigLIP2)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from .encoders import Encoder


def read_translations(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """A CSV with a ``sent_id`` column (REFER sentence ids) and one column per language; returns the
    languages and ``sent_id -> {language: text}``. Rows are joined to expressions by id, never by text."""
    what = "a CSV with a sent_id column (the REFER sentence id) and one column per language"
    if not Path(path).is_file():
        raise FileNotFoundError(f"--translations {path} does not exist; give {what}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "sent_id" not in reader.fieldnames:
                raise ValueError(f"{path}: no sent_id column; give {what}")
            languages = [c for c in reader.fieldnames if c != "sent_id"]
            if not languages:
                raise ValueError(f"{path}: no language columns beside sent_id; give {what}")
            rows = {str(r["sent_id"]): {lang: r[lang] or "" for lang in languages} for r in reader}
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path} is not a UTF-8 CSV file ({exc}); give {what}") from exc
    return languages, rows


def _tokens(encoder: Encoder, texts: list[str]) -> torch.Tensor:
    tok = encoder.processor.tokenizer(list(texts), padding="max_length", truncation=True,
                                      max_length=encoder.text_length, return_tensors="pt")  # fmt: skip
    return tok["input_ids"].to(encoder.device)


def _check(encoder: Encoder) -> None:
    if encoder.family not in ("siglip", "siglip2"):
        raise ValueError(
            f"the mixed-language centroid needs a SigLIP or SigLIP2 text encoder (fixed-length, last-token "
            f"pooling); this is {encoder.family}"
        )


@torch.no_grad()
def agreement_by_layer(encoder: Encoder, texts_by_language: dict[str, list[str]]) -> list[float]:
    """Per text layer (1-based index = list index + 1), the mean pairwise cosine between languages of
    the pooled (last-token) hidden state, averaged over expressions."""
    _check(encoder)
    text_model = encoder.model.text_model
    states = [text_model(input_ids=_tokens(encoder, t), output_hidden_states=True).hidden_states[1:]
              for t in texts_by_language.values()]  # fmt: skip
    scores = []
    for layer in range(len(states[0])):
        pooled = torch.stack([torch.nn.functional.normalize(s[layer][:, -1], dim=-1) for s in states])  # (L, B, D)
        sims = torch.einsum("lbd,mbd->blm", pooled, pooled)
        n = pooled.shape[0]
        scores.append(((sims.sum((1, 2)) - n) / max(1, n * (n - 1))).mean().item())
    return scores


@torch.no_grad()
def centroid_features(encoder: Encoder, texts_by_language: dict[str, list[str]], layer: int | None = None):
    """L2-normalised text features of the mixed-language centroid, and the layer used (1-based; by default
    the one where the languages agree most)."""
    from ..compat import layer_output

    _check(encoder)
    if len(texts_by_language) < 2:
        raise ValueError("the centroid needs at least two languages")
    agreement = agreement_by_layer(encoder, texts_by_language)
    layer = layer or 1 + max(range(len(agreement)), key=agreement.__getitem__)
    text_model = encoder.model.text_model
    hidden = torch.stack([
        text_model(input_ids=_tokens(encoder, t), output_hidden_states=True).hidden_states[layer]
        for t in texts_by_language.values()
    ]).mean(0)  # fmt: skip
    for block in text_model.encoder.layers[layer:]:
        hidden = layer_output(block(hidden, None))
    pooled = text_model.head(text_model.final_layer_norm(hidden)[:, -1])
    return torch.nn.functional.normalize(pooled, dim=-1), layer
