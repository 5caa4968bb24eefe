"""Query outputs of every resampler layer, in one pass, cached once to disk.

An adapter turns (images, texts) into a ``(batch, layers, queries, hidden)`` tensor. BLIP-2's stage-1
Q-Former (``Blip2ForImageTextRetrieval``: text and queries share self-attention, only queries attend
to the image) and InstructBLIP's Q-Former (text = the instruction) are built in; another Q-Former-like
module (an Idefics2 perceiver, say) needs one small class registered with ``register_adapter``.

The cache is a folder of safetensors shards (``features`` of shape ``(n, layers, queries, hidden)``,
float16) and ``index.json``; shards are written as extraction goes, so a rerun resumes, and reading a
layer memory-maps only that slice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ADAPTERS: dict[str, type] = {}


def register_adapter(model_type: str):
    def wrap(cls):
        ADAPTERS[model_type] = cls
        return cls

    return wrap


class ResamplerAdapter:
    """The contract: ``encode(images, texts)`` -> ``(B, layers, queries, hidden)`` of query outputs;
    ``resampler_parameters()`` are what joint fine-tuning trains."""

    model_type: str = ""
    model_class: str = ""  # the transformers class that load_adapter builds the checkpoint with

    def __init__(self, model, processor):
        self.model, self.processor = model.eval(), processor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, images: Sequence, texts: Sequence[str] | None) -> torch.Tensor:
        raise NotImplementedError

    def resampler_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def _image_and_queries(self, images) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen vision-encoder output, its attention mask, and the learned queries expanded to the batch."""
        pixels = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.no_grad():  # the vision encoder stays frozen in every setting of the study
            image_embeds = self.model.vision_model(pixel_values=pixels.to(self.device, self.model.dtype))[0]
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        return image_embeds, image_mask, self.model.query_tokens.expand(image_embeds.shape[0], -1, -1)

    def _text(self, tokenizer, texts, queries) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of ``texts`` and the attention mask over queries followed by those tokens."""
        tok = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True)
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        ones = torch.ones(queries.shape[:-1], dtype=mask.dtype, device=self.device)
        return ids, torch.cat([ones, mask], 1)

    @staticmethod
    def _query_layers(out, n_queries: int) -> torch.Tensor:
        return torch.stack([h[:, :n_queries] for h in out.hidden_states[1:]], 1)


@register_adapter("blip-2")
class Blip2QFormer(ResamplerAdapter):
    """BLIP-2 stage 1: with text, queries and text tokens share self-attention (the ITM path)."""

    model_type = "blip-2"
    model_class = "Blip2ForImageTextRetrieval"

    def encode(self, images, texts=None) -> torch.Tensor:
        m = self.model
        image_embeds, image_mask, queries = self._image_and_queries(images)
        if texts is None:
            out = m.qformer(query_embeds=queries, encoder_hidden_states=image_embeds,
                            encoder_attention_mask=image_mask, output_hidden_states=True)  # fmt: skip
        else:
            ids, mask = self._text(self.processor.tokenizer, texts, queries)
            out = m.qformer(query_embeds=m.embeddings(input_ids=ids, query_embeds=queries),
                            query_length=queries.shape[1], attention_mask=mask, encoder_hidden_states=image_embeds,
                            encoder_attention_mask=image_mask, output_hidden_states=True)  # fmt: skip
        return self._query_layers(out, queries.shape[1])

    def resampler_parameters(self):
        return [self.model.query_tokens, *self.model.qformer.parameters(), *self.model.embeddings.parameters()]


@register_adapter("instructblip")
class InstructBlipQFormer(ResamplerAdapter):
    """InstructBLIP: the instruction (the task's text) is the Q-Former's text input."""

    model_type = "instructblip"
    model_class = "InstructBlipForConditionalGeneration"

    def encode(self, images, texts=None) -> torch.Tensor:
        image_embeds, image_mask, queries = self._image_and_queries(images)
        ids, mask = self._text(self.processor.qformer_tokenizer, texts or [""] * len(images), queries)
        out = self.model.qformer(input_ids=ids, attention_mask=mask, query_embeds=queries,
                                 encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask,
                                 output_hidden_states=True)  # fmt: skip
        return self._query_layers(out, queries.shape[1])

    def resampler_parameters(self):
        return [self.model.query_tokens, *self.model.qformer.parameters()]


def torch_dtype(name: str) -> torch.dtype:
    """``float32``, ``bfloat16``, ``float16`` ... as a torch dtype; refused in words otherwise."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return dtype


def adapter_type(path: str | Path) -> str:
    """The checkpoint's model type, from its config alone (no weights read); refused without an adapter."""
    from ..inputs import read_config

    model_type = read_config(path).model_type
    if model_type not in ADAPTERS:
        raise ValueError(
            f"{path}: model type {model_type!r} has no resampler adapter; built in: {', '.join(ADAPTERS)} "
            "(add one with agci.resampler_probes.features.register_adapter)"
        )
    return model_type


def load_adapter(path: str | Path, device: str = "cpu", dtype: str = "float32") -> ResamplerAdapter:
    """The registered adapter of a checkpoint's model type (BLIP-2 stage-1 retrieval and InstructBLIP are
    built in), with the checkpoint loaded through the adapter's ``model_class``."""
    import transformers

    model_type = adapter_type(path)
    adapter = ADAPTERS[model_type]
    cls = getattr(transformers, adapter.model_class, None)
    if cls is None:
        raise ValueError(
            f"the adapter {adapter.__name__} of {model_type!r} names model_class {adapter.model_class!r}, which "
            "transformers does not have; set it to the transformers class that loads the checkpoint"
        )
    model = cls.from_pretrained(path, dtype=torch_dtype(dtype)).to(device)
    return adapter(model, transformers.AutoProcessor.from_pretrained(path))


def extract(
    adapter: ResamplerAdapter, items: Sequence[dict], load_image: Callable[[dict], object], out: Path,
    batch_size: int = 32, shard_size: int = 1024, with_text: bool = True,
) -> dict:  # fmt: skip
    """Encode ``items`` (dicts with ``id`` and ``text``) into a feature cache under ``out``; resumes.

    ``index.json`` is replaced atomically after each shard, so a kill loses at most the shard in progress
    (a shard file that the index does not list is written again)."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from ..runs import write_text

    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: give at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    ids = [str(it["id"]) for it in items]
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    if index and index.get("ids") != ids:
        raise FileExistsError(f"{out} holds a cache of other items; use another folder")
    if index and (index.get("with_text", True), index.get("model_type")) != (with_text, adapter.model_type):
        raise FileExistsError(
            f"{out} holds a cache of a {index.get('model_type')} model "
            f"{'with' if index.get('with_text', True) else 'without'} text; use another folder"
        )
    index = index or {"ids": ids, "shards": [], "shard_size": shard_size, "with_text": with_text,
                      "model_type": adapter.model_type}  # fmt: skip
    done = {s["start"] for s in index["shards"]}
    bar = tqdm(total=len(items), desc="extracting", initial=sum(s["count"] for s in index["shards"]))
    for start in range(0, len(items), shard_size):
        if start in done:
            continue
        chunk = items[start : start + shard_size]
        parts = []
        for i in range(0, len(chunk), batch_size):
            batch = chunk[i : i + batch_size]
            with torch.no_grad():
                feats = adapter.encode(
                    [load_image(it) for it in batch], [it["text"] for it in batch] if with_text else None
                )
            parts.append(feats.to("cpu", torch.float16))
            bar.update(len(batch))
        name = f"features-{start:08d}.safetensors"
        save_file({"features": torch.cat(parts).contiguous()}, str(out / name))
        index["shards"].append({"file": name, "start": start, "count": len(chunk)})
        index["shape"] = list(parts[0].shape[1:])
        write_text(index_path, json.dumps(index) + "\n")  # after the shard: an interrupted run redoes one shard
    bar.close()
    return index


class FeatureCache:
    """Read access to a cache: one layer for all items, memory-mapped from the shards."""

    def __init__(self, folder: Path):
        from ..inputs import read_json, require_keys

        self.folder = Path(folder)
        index_path = self.folder / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(
                f"--cache {folder} is not a feature cache (no index.json); give the --out folder of "
                "`agci resampler-probe extract`, or run that first"
            )
        what = "the index.json that `agci resampler-probe extract` writes (rerun the extraction into a new folder)"
        self.index = read_json(index_path, what)
        require_keys(self.index, ("ids", "shards"), index_path, what)
        try:
            complete = sum(s["count"] for s in self.index["shards"]) == len(self.index["ids"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{index_path}: its shards are not listed as extraction writes them; give {what}") from exc
        if not complete:
            raise ValueError(f"{folder}: the cache is incomplete; rerun the extraction to finish it")
        require_keys(self.index, ("shape",), index_path, what)
        shape = self.index["shape"]
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(x, int) and x > 0 for x in shape)):
            raise ValueError(f"{index_path}: shape {shape!r} is not (layers, queries, hidden); give {what}")
        missing = [str(s.get("file")) for s in self.index["shards"] if not (self.folder / str(s.get("file"))).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder}: shard {missing[0]} of index.json is missing; rerun the extraction into a new folder"
            )
        self.ids = self.index["ids"]
        self.layers, self.queries, self.hidden = shape

    def layer(self, layer: int) -> torch.Tensor:
        """``(n, queries * hidden)`` float32 features of one layer (0-based), in item order."""
        from safetensors import safe_open

        if not 0 <= layer < self.layers:
            raise ValueError(f"layer {layer} out of range: the cache has layers 0..{self.layers - 1}")
        parts = []
        for shard in sorted(self.index["shards"], key=lambda s: s["start"]):
            with safe_open(str(self.folder / shard["file"]), framework="pt") as f:
                parts.append(f.get_slice("features")[:, layer])
        return torch.cat(parts).flatten(1).float()
