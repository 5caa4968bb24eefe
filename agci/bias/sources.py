"""Where image-caption pairs come from: the synthetic generator, a folder, a JSONL/CSV file, or a
``datasets`` dataset. Every source yields :class:`Pair` objects that load their image lazily, and is
described by a small dict that goes into the probe set's manifest so the set can be rebuilt.

Source strings (``--source``):

- ``synthetic`` or ``synthetic:N``: N generated pairs (default 60), seeded by the build seed;
  ``synthetic-textured:N`` names the texture in the caption as well;
- ``path/to/pairs.jsonl`` or ``.csv``: rows with ``image`` (path, relative to the file) and ``caption``;
- ``path/to/folder``: a ``captions.jsonl`` / ``captions.csv`` inside, else ``name.jpg`` + ``name.txt``;
- ``hf:NAME_OR_PATH[:SPLIT]``: ``datasets.load_dataset`` (or ``load_from_disk`` for a saved folder)
  with an image column (PIL, path or bytes) and a caption column.

A pair's id names its files in a probe set (``images/<id>_<cell>.jpg``), so ids must be unique and
file-name safe. A row's id is its ``id`` column when that is given (not empty); else the image path
relative to the source root without its suffix, sub-folders joined by ``__`` (``sub1/dup.jpg`` ->
``sub1__dup``; a top-level ``dup.jpg`` keeps ``dup``). Path separators in any id become ``__`` and
control characters ``_``. Usable pairs that still share an id are refused (:func:`check_unique_ids`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..images import to_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
ID_SEPARATOR = "__"  # what a path separator becomes in a pair id
MAX_ID_BYTES = 200  # a pair's files are named <id>_<cell>.jpg; file names stop at 255 bytes
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Pair:
    id: str
    caption: str
    loader: Callable[[], Any] = field(repr=False)

    def load_image(self):
        """The image as RGB PIL, as a viewer shows it (:func:`agci.images.to_rgb`); raises OSError/ValueError
        when it is missing or corrupt."""
        image = self.loader()
        image.load()
        return to_rgb(image)


def _open(path: Path):
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    return Image.open(path)


def _rows_from_file(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n} is not valid JSON ({exc})") from exc
        return rows
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of rows with image and caption")
        return data
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .csv")


def _pairs_from_rows(rows, root: Path, image_key: str, caption_key: str, where: str) -> list[Pair]:
    if rows and (image_key not in rows[0] or caption_key not in rows[0]):
        raise ValueError(
            f"{where}: rows need columns {image_key!r} and {caption_key!r}, found {sorted(rows[0])}; "
            "pass --image-column / --caption-column to name them"
        )
    pairs = []
    for i, row in enumerate(rows):
        image = str(row.get(image_key) or "")
        image_path = root / image
        explicit = row.get("id")
        if explicit is not None and str(explicit).strip():
            pid = safe_id(str(explicit))
        else:
            pid = _id_from_path(image, root) or f"row{i}"
        pairs.append(Pair(pid, str(row.get(caption_key) or "").strip(), lambda p=image_path: _open(p)))
    return pairs


def safe_id(text: str) -> str:
    """``text`` as a pair id usable in a file name: ``/`` and ``\\`` become ``__``, control characters
    ``_``; one longer than :data:`MAX_ID_BYTES` is cut and ends with a hash of the whole, so it stays
    unique and the same on every build."""
    out = _UNSAFE.sub("_", ID_SEPARATOR.join(text.replace("\\", "/").split("/")))
    if len(out.encode()) > MAX_ID_BYTES:
        digest = hashlib.sha1(out.encode()).hexdigest()[:12]
        out = out.encode()[: MAX_ID_BYTES - 13].decode(errors="ignore") + "-" + digest
    return out


def _id_from_path(image: str, root: Path) -> str:
    """The image path relative to ``root`` without its suffix, separators made safe (``""`` for none)."""
    if not image:
        return ""
    path = Path(image)
    if path.is_absolute():
        try:
            path = path.relative_to(root.resolve())
        except ValueError:
            path = Path(*path.parts[1:])
    parts = [*path.parts[:-1], Path(path.parts[-1]).stem] if path.parts else []
    return safe_id("/".join(p for p in parts if p))


def check_unique_ids(pairs: list[Pair], source: str) -> None:
    """Refuse pairs that share an id: their probe-set files would overwrite each other."""
    counts: dict[str, int] = {}
    for pair in pairs:
        counts[pair.id] = counts.get(pair.id, 0) + 1
    shared = [(pid, n) for pid, n in counts.items() if n > 1]
    if shared:
        named = ", ".join(f"{pid!r} x{n}" for pid, n in shared[:5]) + (
            f" and {len(shared) - 5} more" if len(shared) > 5 else ""
        )
        raise ValueError(
            f"{source}: {len(shared)} id(s) shared by more than one pair ({named}); a pair's files are named by its "
            "id, so they would overwrite each other; give each row a distinct `id` column (or the images names that "
            "differ by more than their suffix)"
        )


def _pairs_from_folder(folder: Path, image_key: str, caption_key: str) -> list[Pair]:
    for name in ("captions.jsonl", "captions.csv", "captions.json"):
        if (folder / name).is_file():
            return _pairs_from_rows(_rows_from_file(folder / name), folder, image_key, caption_key, str(folder / name))
    pairs = []
    for image_path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        text = image_path.with_suffix(".txt")
        caption = text.read_text().strip() if text.is_file() else ""
        pairs.append(Pair(image_path.stem, caption, lambda p=image_path: _open(p)))
    if not pairs:
        raise ValueError(
            f"{folder} holds no captions.jsonl/.csv and no images ({', '.join(IMAGE_SUFFIXES)}) with .txt captions"
        )
    return pairs


def _hf_image(value):
    from PIL import Image

    if hasattr(value, "convert"):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return _open(Path(value["path"]))
    if isinstance(value, (str, Path)):
        return _open(Path(value))
    raise ValueError(f"cannot read an image from a value of type {type(value).__name__}")


def _pairs_from_datasets(spec: str, image_key: str, caption_key: str) -> list[Pair]:
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("hf: sources need the `datasets` package: pip install datasets") from exc
    name, _, split = spec.partition(":")
    local = Path(name)
    if local.is_dir() and any((local / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        ds = datasets.load_from_disk(name)
    else:
        ds = datasets.load_dataset(name)
    if isinstance(ds, datasets.DatasetDict):
        split = split or ("test" if "test" in ds else next(iter(ds)))
        ds = ds[split]
    missing = [k for k in (image_key, caption_key) if k not in ds.column_names]
    if missing:
        raise ValueError(
            f"dataset {name!r} has columns {ds.column_names}, not {missing}; "
            "pass --image-column / --caption-column to name them"
        )
    captions = ds[caption_key]
    ids = ds["id"] if "id" in ds.column_names else [f"hf{i:06d}" for i in range(len(ds))]
    return [
        Pair(safe_id(str(ids[i])), str(captions[i] or "").strip(), lambda i=i: _hf_image(ds[i][image_key]))
        for i in range(len(ds))
    ]


def describe(source: str, image_key: str = "image", caption_key: str = "caption") -> dict:
    """The manifest entry that :func:`load_pairs` turns back into the same pairs."""
    d: dict = {"source": source}
    if (image_key, caption_key) != ("image", "caption"):
        d.update(image_column=image_key, caption_column=caption_key)
    return d


def load_pairs(source: str, seed: int = 0, image_key: str = "image", caption_key: str = "caption") -> list[Pair]:
    """The pairs of a source string (see the module docstring)."""
    kind, _, n = source.partition(":")
    if kind in ("synthetic", "synthetic-textured"):
        from .synthetic import synthetic_pairs

        try:
            count = int(n) if n else 60
        except ValueError as exc:
            raise ValueError(f"synthetic source takes a pair count, e.g. synthetic:60, not {source!r}") from exc
        pairs = synthetic_pairs(count, seed, name_textures=kind == "synthetic-textured")
        return [Pair(p.id, p.caption, p.load_image) for p in pairs]
    if source.startswith("hf:"):
        return _pairs_from_datasets(source[3:], image_key, caption_key)
    path = Path(source)
    if path.is_dir():
        return _pairs_from_folder(path, image_key, caption_key)
    if path.is_file():
        return _pairs_from_rows(_rows_from_file(path), path.parent, image_key, caption_key, str(path))
    raise FileNotFoundError(
        f"source {source!r}: no such file or folder; give a folder, a .jsonl/.csv file, 'synthetic[:N]' or "
        "'hf:NAME' (see `agci probe-set --help`)"
    )
