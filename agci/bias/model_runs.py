"""Running the model over probe items (the metrics from their rows are :mod:`agci.bias.metrics`): Yes/No from
one forward, the reference's generate-and-parse, teacher-forced occlusion maps, and image-caption similarity.

Works for every supported family through its own processor and chat template; batches are left
padded. AGCI's lambda is read from the model's config at call time, so a sweep reuses the model.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from ..configs import read_lambda, using_lambda
from ..vlm import LoadedVLM, chat_messages, load_vlm, processor_inputs

log = logging.getLogger(__name__)

ANSWER_WORDS = {"Yes": ("Yes", "yes", "YES"), "No": ("No", "no", "NO")}


@dataclass
class ProbeVLM(LoadedVLM):
    """A loaded VLM with the token ids of its Yes and No answers."""

    yes_ids: list[int] = field(default_factory=list)
    no_ids: list[int] = field(default_factory=list)


def answer_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """First-token ids of Yes and No in every case and with or without a leading space."""
    found: dict[str, list[int]] = {"Yes": [], "No": []}
    for label, words in ANSWER_WORDS.items():
        for word in words:
            for text in (word, " " + word):
                ids = tokenizer.encode(text, add_special_tokens=False)
                if not ids:
                    continue
                if tokenizer.decode(ids[:1]).strip().lower() == label.lower() and ids[0] not in found[label]:
                    found[label].append(ids[0])
    if not found["Yes"] or not found["No"] or set(found["Yes"]) & set(found["No"]):
        raise ValueError(
            f"the tokenizer has no distinct single tokens for Yes/No (found {found}); "
            "use --generate to score by generating and parsing the answer"
        )
    return found["Yes"], found["No"]


def load_probe_vlm(model: str | Path, dtype: str = "auto", device: str | None = None, attn: str | None = None,
                   device_map: str | None = None, config=None, yes_no: bool = True) -> ProbeVLM:  # fmt: skip
    """:func:`agci.vlm.load_vlm` (refuses unsupported models and processors without a chat template before
    loading weights), with the Yes/No token ids of the tokenizer: refused when it has none, unless
    ``yes_no`` is False (scoring by generating and parsing needs none)."""
    loaded = load_vlm(model, dtype=dtype, device=device, attn=attn, device_map=device_map, config=config)
    yes, no = answer_token_ids(loaded.tokenizer) if yes_no else ([], [])
    return ProbeVLM(**{f.name: getattr(loaded, f.name) for f in fields(loaded)}, yes_ids=yes, no_ids=no)


def encode(vlm: LoadedVLM, images: list, prompts: list[str]) -> dict:
    """Chat-templated, left-padded inputs for one question per image, ready for the model's device."""
    with vlm.tokenizer_lock:
        texts = [vlm.processor.apply_chat_template(chat_messages(p), add_generation_prompt=True) for p in prompts]
        return processor_inputs(vlm, texts, [[image] for image in images])


_END = object()


def prefetched(prepare: Callable, items: Iterable, ahead: int = 1) -> Iterator:
    """``prepare(item)`` for each item, in order, with up to ``ahead`` more items being prepared on a worker
    thread while the caller works on the current one: image decoding and the processor's resizing then
    overlap the model's forward (both release the GIL). ``ahead=0``: no thread, one item after the other."""
    from concurrent.futures import ThreadPoolExecutor

    if ahead <= 0:
        yield from map(prepare, items)
        return
    items = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="agci-prefetch") as pool:
        pending = deque()
        for _ in range(ahead + 1):
            item = next(items, _END)
            if item is _END:
                break
            pending.append(pool.submit(prepare, item))
        while pending:
            result = pending.popleft().result()
            item = next(items, _END)
            if item is not _END:
                pending.append(pool.submit(prepare, item))
            yield result


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """Lists of ``size`` consecutive items (the last one shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_yes_no(vlm: ProbeVLM, images: list, prompts: list[str]) -> list[dict]:
    """One forward per batch; the next-token distribution decides Yes or No.

    ``prediction`` compares the best Yes token with the best No token, so it equals what greedy decoding
    answers whenever that answer is a Yes or No token. ``p_yes`` is P(Yes) / (P(Yes) + P(No)), summed
    over case and space variants; ``yes_no_mass`` is how much probability the two answers hold."""
    return yes_no_from_inputs(vlm, encode(vlm, images, prompts))


@torch.no_grad()
def yes_no_from_inputs(vlm: ProbeVLM, inputs: dict) -> list[dict]:
    """:func:`score_yes_no` on inputs already encoded (reused across a lambda sweep)."""
    logits = vlm.model(**inputs, logits_to_keep=1).logits[:, -1].float()  # no logits for the prompt
    logp = logits.log_softmax(-1)
    yes, no = torch.tensor(vlm.yes_ids, device=logits.device), torch.tensor(vlm.no_ids, device=logits.device)
    best_yes, best_no = logits[:, yes].max(1).values, logits[:, no].max(1).values
    lp_yes, lp_no = logp[:, yes].logsumexp(1), logp[:, no].logsumexp(1)
    p_yes = torch.sigmoid(lp_yes - lp_no)
    mass = lp_yes.exp() + lp_no.exp()
    return [
        {"prediction": "Yes" if a > b else "No", "p_yes": round(p, 6), "yes_no_mass": round(m, 6)}
        for a, b, p, m in zip(best_yes.tolist(), best_no.tolist(), p_yes.tolist(), mass.tolist(), strict=False)
    ]


def parse_answer(text: str) -> str:
    """Yes / No from a generated answer (the reference's parsing: the first word decides), else Unknown."""
    word = text.strip().lstrip("'\"*`([").split(maxsplit=1)
    head = word[0].strip(".,!:;'\"*`)]").lower() if word else ""
    return {"yes": "Yes", "no": "No"}.get(head, "Unknown")


def generate_answers(vlm: LoadedVLM, images: list, prompts: list[str], max_new_tokens: int = 128) -> list[dict]:
    """The reference's way: greedy generation, then parsing."""
    return generate_from_inputs(vlm, encode(vlm, images, prompts), max_new_tokens)


@torch.no_grad()
def generate_from_inputs(vlm: LoadedVLM, inputs: dict, max_new_tokens: int = 128) -> list[dict]:
    """:func:`generate_answers` on inputs already encoded."""
    with vlm.tokenizer_lock:
        pad, eos = vlm.tokenizer.pad_token_id, vlm.tokenizer.eos_token_id
        # an answer ends at the first special token: scored again, an image placeholder would ask for an image
        stop = {pad, eos, *vlm.tokenizer.all_special_ids}
    out = vlm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    new = out[:, inputs["input_ids"].shape[1] :]
    with vlm.tokenizer_lock:
        texts = vlm.tokenizer.batch_decode(new, skip_special_tokens=True)
    return [
        {"prediction": parse_answer(t), "generated": t, "answer_ids": _until(ids.tolist(), stop)}
        for t, ids in zip(texts, new, strict=False)
    ]


def _until(ids: list[int], stop: set) -> list[int]:
    """``ids`` up to the first stop token."""
    out = []
    for i in ids:
        if i in stop:
            break
        out.append(i)
    return out


def masked_copies(image, mask: int, colour=(255, 255, 255)):
    """Every copy of ``image`` with one ``mask`` x ``mask`` square painted over, row by row (PIL images,
    as the reference makes them)."""
    from PIL import Image

    for copy in masked_tensors(image, mask, colour):
        yield Image.fromarray(copy.permute(1, 2, 0).numpy())


def masked_tensors(image, mask: int, colour=(255, 255, 255)):
    """:func:`masked_copies` as uint8 (3, H, W) tensors, which every supported processor turns into the
    same pixel values as the PIL images, without the PIL round trips."""
    import numpy as np

    w, h = image.size
    if w % mask or h % mask:
        raise ValueError(f"mask size {mask} must divide the image size {w}x{h}")
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    fill = torch.tensor(colour, dtype=pixels.dtype).view(3, 1, 1)
    for top in range(0, h, mask):
        for left in range(0, w, mask):
            copy = pixels.clone()
            copy[:, top : top + mask, left : left + mask] = fill
            yield copy


@torch.no_grad()
def answer_logprob(vlm: LoadedVLM, images: list, prompt: str, answer_ids: list[int]) -> torch.Tensor:
    """Teacher-forced log-probability of ``answer_ids`` after the prompt, for each image."""
    return answer_logprob_from_inputs(vlm, encode(vlm, images, [prompt] * len(images)), answer_ids)


@torch.no_grad()
def answer_logprob_from_inputs(vlm: LoadedVLM, inputs: dict, answer_ids: list[int]) -> torch.Tensor:
    """:func:`answer_logprob` on inputs already encoded (left unchanged, so they can be reused)."""
    n = len(answer_ids)
    rows = inputs["input_ids"].shape[0]
    answer = torch.tensor(answer_ids, device=vlm.device).expand(rows, n)
    inputs = dict(inputs)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], answer], 1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(answer)], 1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in inputs:
            inputs[key] = torch.cat([inputs[key], torch.zeros_like(answer)], 1)
    logits = vlm.model(**inputs, logits_to_keep=n + 1).logits[:, -n - 1 : -1].float()
    return logits.log_softmax(-1).gather(-1, answer.unsqueeze(-1)).squeeze(-1).sum(-1)


def occlusion_map(vlm: LoadedVLM, image, prompt: str, answer_ids: list[int], mask: int = 42,
                  batch_size: int = 32, prefetch: int = 1) -> tuple[float, torch.Tensor]:  # fmt: skip
    """How much the log-probability of the model's own answer drops when each square is masked.

    Returns the unmasked log-probability and a (H/mask, W/mask) map of drops (positive: the square
    mattered for the answer)."""
    lam = read_lambda(vlm.model.config)
    return occlusion_maps(vlm, image, prompt, {lam: answer_ids}, mask, batch_size, prefetch)[lam]


def occlusion_maps(vlm: LoadedVLM, image, prompt: str, answers: dict, mask: int = 42, batch_size: int = 32,
                   prefetch: int = 1, inputs: dict | None = None, setting: Callable | None = None) -> dict:  # fmt: skip
    """:func:`occlusion_map` for several lambdas (the keys of ``answers``), each with the answer the model
    gave at that lambda; every batch of masked copies goes through the processor once for all of them,
    ``prefetch`` batches ahead on a worker thread (0: none). ``inputs``: the unmasked image and prompt
    already encoded. ``setting(key)``: a context manager that sets the model up for a key (default: the key
    is a lambda and it sets that lambda), e.g. to score several adapters' answers on the same copies."""
    setting = setting or (lambda lam: using_lambda(vlm.model, lam))

    def score(encoded) -> dict:
        out = {}
        for key, ids in answers.items():
            with setting(key):
                out[key] = answer_logprob_from_inputs(vlm, encoded, ids).cpu()
        return out

    w, h = image.size
    drops: dict = {lam: [] for lam in answers}
    unmasked = inputs if inputs is not None else encode(vlm, [image], [prompt])
    base = {lam: v[0].item() for lam, v in score(unmasked).items()}
    batches = chunks(masked_tensors(image, mask), batch_size)
    for encoded in prefetched(lambda batch: encode(vlm, batch, [prompt] * len(batch)), batches, prefetch):
        for lam, logp in score(encoded).items():
            drops[lam].append(base[lam] - logp)
    return {lam: (base[lam], torch.cat(drops[lam]).view(h // mask, w // mask)) for lam in answers}


def occlusion_map_by_generation(vlm: LoadedVLM, image, prompt: str, mask: int = 42, max_new_tokens: int = 128):
    """The reference's way, for comparison: a generate call (batch 1, up to ``max_new_tokens``) for every
    masked copy, reading the original answer's token scores from the generation's own step scores.
    Equal to :func:`occlusion_map` while the masked generation keeps the original answer's prefix
    (always, for one-token answers)."""
    original = generate_answers(vlm, [image], [prompt], max_new_tokens)[0]["answer_ids"]
    if not original:
        raise ValueError("the model generated no answer tokens for the unmasked image")

    def score(im) -> float:
        out = vlm.model.generate(**encode(vlm, [im], [prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=vlm.tokenizer.pad_token_id)  # fmt: skip
        steps = min(len(out.scores), len(original))
        return sum(out.scores[t][0].float().log_softmax(-1)[original[t]].item() for t in range(steps))

    base = score(image)
    drops = [base - score(copy) for copy in masked_copies(image, mask)]
    w, h = image.size
    return base, torch.tensor(drops).view(h // mask, w // mask)


def _feature_kwargs(vlm: LoadedVLM, inputs: dict) -> dict:
    """The processor outputs get_image_features takes for this family (``Family.image_inputs``)."""
    from ..registry import FAMILIES

    return {k: inputs[k] for k in FAMILIES[vlm.model.config.model_type].image_inputs if k in inputs}


SIMILARITY_PROMPT = "Describe the image."


def similarity(vlm: LoadedVLM, images: list, captions: list[str], pooling: str = "max") -> list[float]:
    """Cosine between pooled image features (in the language model's embedding space, after the
    projector and AGCI) and the pooled input embeddings of the caption's tokens."""
    _check_pooling(pooling)
    return similarity_from_inputs(vlm, encode(vlm, images, [SIMILARITY_PROMPT] * len(images)), captions, pooling)


def _check_pooling(pooling: str) -> None:
    if pooling not in ("max", "mean"):
        raise ValueError(f"pooling must be 'max' or 'mean', got {pooling!r}")


@torch.no_grad()
def similarity_from_inputs(vlm: LoadedVLM, inputs: dict, captions: list[str], pooling: str = "max") -> list[float]:
    """:func:`similarity` on inputs encoded with :data:`SIMILARITY_PROMPT`."""
    from ..compat import image_features_per_image
    from ..patches.hooks import grouping_input_ids

    _check_pooling(pooling)
    n_images = len(captions)
    with grouping_input_ids(vlm.model, inputs["input_ids"]):  # tiles and crops into images, as in the forward
        features = image_features_per_image(vlm.model.get_image_features(**_feature_kwargs(vlm, inputs)))
    per_image = _group_tiles(vlm, inputs, features, n_images)
    embed = vlm.model.get_input_embeddings()
    out = []
    for feats, caption in zip(per_image, captions, strict=False):
        with vlm.tokenizer_lock:
            ids = torch.tensor(vlm.tokenizer.encode(caption, add_special_tokens=False), device=vlm.device)
        text = embed(ids).float()
        feats = feats.reshape(-1, feats.shape[-1]).float()
        pool = (lambda t: t.max(0).values) if pooling == "max" else (lambda t: t.mean(0))
        out.append(torch.cosine_similarity(pool(feats), pool(text), dim=0).item())
    return out


def _group_tiles(vlm, inputs, features, n_images) -> list[torch.Tensor]:
    """Features per image, by the family's grouping rule (tiles of InternVL, crops of Idefics3 joined)."""
    if len(features) == n_images:
        return list(features)
    from ..grouping import image_lengths
    from ..registry import FAMILIES

    family = FAMILIES[vlm.model.config.model_type]
    entries = features
    if family.grouping == "tile_runs" or len({f.shape for f in features}) == 1:  # rows of one stacked tensor
        entries = torch.stack(list(features))
    lengths = (
        None if not family.reads_input_ids else image_lengths(family, vlm.model.config, entries, inputs["input_ids"])
    )
    if lengths is None or len(lengths) != n_images:
        raise ValueError(f"{family.model_type}: got {len(features)} feature sets for {n_images} images")
    return list(torch.cat([f.reshape(-1, f.shape[-1]) for f in features]).split(lengths))
