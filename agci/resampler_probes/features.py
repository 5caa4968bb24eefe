"""Query outputs of every resampler layer, in one pass, cached once to disk.

An encoder wrapper (:mod:`agci.resampler_probes.encoders`) turns (images, texts) into a
``(batch, layers, queries, hidden)`` tensor; ``extract`` writes them for a list of items.

The cache is a folder of safetensors shards (``features`` of shape ``(n, layers, queries, hidden)``,
float16) and ``index.json``; shards are written as extraction goes, so a rerun resumes, and reading a
layer memory-maps only that slice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .encoders import ResamplerEncoder, register_encoder

# the names before the encoder wrappers moved to agci.resampler_probes.encoders; the README showed
# register_adapter as the way to add one
register_adapter, ResamplerAdapter = register_encoder, ResamplerEncoder


def extract(
    encoder: ResamplerEncoder, items: Sequence[dict], load_image: Callable[[dict], object], out: Path,
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
    if index and (index.get("with_text", True), index.get("model_type")) != (with_text, encoder.model_type):
        raise FileExistsError(
            f"{out} holds a cache of a {index.get('model_type')} model "
            f"{'with' if index.get('with_text', True) else 'without'} text; use another folder"
        )
    index = index or {"ids": ids, "shards": [], "shard_size": shard_size, "with_text": with_text,
                      "model_type": encoder.model_type}  # fmt: skip
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
                feats = encoder.encode(
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
