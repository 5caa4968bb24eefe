"""Probe sets of the AGCI paper, built from image-caption pairs.

- Position set: a ``canvas`` x ``canvas`` image split into a 3 x 3 grid; the target image in one cell,
  8 distractors in the others; the same 9 images are permuted so the target visits every cell
  (files ``images/<pair>_<cell>.jpg``). Each canvas is asked with the target's caption (answer Yes)
  and, for ``negatives_per_pair`` cells per pair chosen round-robin so every cell gets the same
  number, with the caption of an image that is not on the canvas (answer No).
- Similarity set: the target alone in one cell of a white canvas (``similarity/<pair>_<cell>.jpg``).

A set is written once, with ``manifest.json`` (source, seed, sizes, skipped pairs and why) from which
:func:`rebuild` makes the same files again. Records are JSONL, one per question.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

from ..runs import RunFolder, write_text
from .sources import Pair, check_unique_ids, describe, load_pairs

log = logging.getLogger(__name__)

POSITIONS = (
    "top_left", "top_center", "top_right",
    "left", "center", "right",
    "bottom_left", "bottom_center", "bottom_right",
)  # fmt: skip
PROMPT = (
    "Determine if there is a sub-image in the given image that matches the text following.\n"
    "Text: {caption}\n"
    "The answer should only contain 'Yes' or 'No', without reasoning process.\n"
)
MANIFEST = "manifest.json"
SET_VERSION = 1


@dataclass(frozen=True)
class SetOptions:
    source: str = "synthetic"
    seed: int = 0
    canvas: int = 840
    negatives_per_pair: int = 3
    similarity: bool = True
    max_pairs: int | None = None
    image_column: str = "image"
    caption_column: str = "caption"

    def __post_init__(self):
        if self.canvas < 3 or self.canvas % 3:
            raise ValueError(f"canvas must be a positive multiple of 3 (3 x 3 grid), got {self.canvas}")
        if not 0 <= self.negatives_per_pair <= 9:
            raise ValueError(f"negatives_per_pair must be within 0..9, got {self.negatives_per_pair}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1 (the first N pairs of the source), got {self.max_pairs}")


def cell_box(cell: int, canvas: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a 3 x 3 cell."""
    side = canvas // 3
    row, col = divmod(cell, 3)
    return col * side, row * side, (col + 1) * side, (row + 1) * side


def grid_canvas(by_cell, canvas: int):
    """A white ``canvas`` x ``canvas`` image with ``by_cell[c]`` pasted into cell ``c`` (``None``: left blank)."""
    from PIL import Image

    side = canvas // 3
    out = Image.new("RGB", (canvas, canvas), "white")
    for cell, image in enumerate(by_cell):
        if image is not None:
            out.paste(image.resize((side, side), Image.BICUBIC), cell_box(cell, canvas)[:2])
    return out


def compose(images, target_cell: int, canvas: int):
    """``images[0]`` (the target) at ``target_cell``, ``images[1:]`` in the other cells in order."""
    others = iter(images[1:])
    return grid_canvas([images[0] if c == target_cell else next(others, None) for c in range(9)], canvas)


def _same_content(a: Pair, b: Pair) -> bool:
    """A distractor (or a negative's caption) must not match the target's caption."""
    return a.caption.strip().lower() == b.caption.strip().lower()


def _valid_pairs(pairs: list[Pair]) -> tuple[list[tuple[Pair, object]], list[dict]]:
    good, skipped = [], []
    for pair in pairs:
        if not pair.caption:
            skipped.append({"id": pair.id, "reason": "empty caption"})
            continue
        try:
            good.append((pair, pair.load_image()))
        except Exception as exc:  # missing, truncated, not an image: skip and say why
            skipped.append({"id": pair.id, "reason": f"unreadable image: {exc}"})
    for s in skipped:
        log.warning("skipping pair %s: %s", s["id"], s["reason"])
    return good, skipped


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _usable_pairs(options: SetOptions) -> tuple[list[tuple[Pair, object]], list[dict]]:
    """The source's pairs with their images, and the pairs skipped with why; refused when too few remain."""
    pairs = load_pairs(options.source, options.seed, options.image_column, options.caption_column)
    if options.max_pairs:
        pairs = pairs[: options.max_pairs]
    good, skipped = _valid_pairs(pairs)
    check_unique_ids([pair for pair, _ in good], options.source)  # their files are named by id
    if len(good) < 9 + (1 if options.negatives_per_pair else 0):
        raise ValueError(
            f"{options.source}: {len(good)} usable pairs; a position set needs at least 9 (10 with negatives)"
            + (f" ({len(skipped)} skipped, first: {skipped[0]})" if skipped else "")
        )
    return good, skipped


SET_OUTPUTS = ("images", "similarity", "position.jsonl", "similarity.jsonl", MANIFEST)


def build(out_dir: str | Path, options: SetOptions = SetOptions(), progress: bool = True, force: bool = False) -> dict:
    """Write the position (and similarity) set to ``out_dir``; returns the manifest.

    The source is read and checked before anything is written; the folder is locked while the set is
    written (:class:`agci.runs.RunFolder`). A finished set with the same options is reused as it is; one
    with other options is refused unless ``force`` (which deletes it and builds again)."""
    out_dir = Path(out_dir)
    wanted = _options_dict(options)
    manifest_path = out_dir / MANIFEST
    found = None  # a set written before run records: its manifest says what it was built with
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            found = {"options": manifest["options"], "set_version": manifest["set_version"]}
        except (ValueError, KeyError, TypeError):
            found = None
    usable = None if manifest_path.is_file() else _usable_pairs(options)
    with RunFolder(out_dir, "probe-set", {"options": wanted, "set_version": SET_VERSION}, outputs=SET_OUTPUTS,
                   force=force, option="OUT", found_fingerprint=found) as folder:  # fmt: skip
        if (out_dir / MANIFEST).is_file():  # built with these options (RunFolder refuses others)
            return json.loads((out_dir / MANIFEST).read_text())
        manifest = _write_set(out_dir, options, *(usable or _usable_pairs(options)), progress)
        folder.finished()
    return manifest


def _write_set(out_dir: Path, options: SetOptions, good: list, skipped: list[dict], progress: bool) -> dict:
    from tqdm.auto import tqdm

    wanted = _options_dict(options)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    if options.similarity:
        (out_dir / "similarity").mkdir(exist_ok=True)
    rng = random.Random(options.seed)
    position_rows, similarity_rows = [], []
    for n, (pair, image) in enumerate(tqdm(good, desc="building probe set", disable=not progress)):
        candidates = [i for i, (p, _) in enumerate(good) if p is not pair and not _same_content(p, pair)]
        if len(candidates) < 8 + (1 if options.negatives_per_pair else 0):
            skipped.append({"id": pair.id, "reason": "too few different pairs for distractors"})
            continue
        distractors = rng.sample(candidates, 8)
        on_canvas = [pair] + [good[i][0] for i in distractors]
        absent = [
            i for i in candidates if i not in distractors and not any(_same_content(good[i][0], p) for p in on_canvas)
        ]
        negative = good[rng.choice(absent)][0] if absent else None
        negative_cells = {(n * options.negatives_per_pair + j) % 9 for j in range(options.negatives_per_pair)}
        images = [image] + [good[i][1] for i in distractors]
        for cell, position in enumerate(POSITIONS):
            name = f"{pair.id}_{cell}"
            compose(images, cell, options.canvas).save(out_dir / "images" / f"{name}.jpg", quality=95)
            base = {"image": f"images/{name}.jpg", "position": position, "cell": cell, "pair": pair.id}
            position_rows.append({"id": f"{name}_pos", **base, "caption": pair.caption, "answer": "Yes"})
            if negative is not None and cell in negative_cells:
                position_rows.append({"id": f"{name}_neg", **base, "caption": negative.caption, "answer": "No",
                                      "caption_from": negative.id})  # fmt: skip
            if options.similarity:
                compose([image], cell, options.canvas).save(out_dir / "similarity" / f"{name}.jpg", quality=95)
                similarity_rows.append({"id": f"{name}_sim", "image": f"similarity/{name}.jpg", "position": position,
                                        "cell": cell, "pair": pair.id, "caption": pair.caption})  # fmt: skip
    _write_jsonl(out_dir / "position.jsonl", position_rows)
    if options.similarity:
        _write_jsonl(out_dir / "similarity.jsonl", similarity_rows)
    manifest = {
        "set_version": SET_VERSION,
        "options": wanted,
        "source": describe(options.source, options.image_column, options.caption_column),
        "pairs_used": len(good) - sum(1 for s in skipped if s["reason"].startswith("too few")),
        "questions": len(position_rows),
        "positives": sum(r["answer"] == "Yes" for r in position_rows),
        "negatives": sum(r["answer"] == "No" for r in position_rows),
        "similarity_samples": len(similarity_rows),
        "skipped": skipped,
        "prompt": PROMPT,
        "positions": list(POSITIONS),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _options_dict(options: SetOptions) -> dict:
    from dataclasses import asdict

    return asdict(options)


def rebuild(manifest_path: str | Path, out_dir: str | Path, progress: bool = True, force: bool = False) -> dict:
    """Build again, into ``out_dir``, the set that ``manifest_path`` describes."""
    from ..inputs import read_json, require_keys

    what = "the manifest.json of a probe set (agci probe-set writes one)"
    manifest = read_json(manifest_path, what)
    require_keys(manifest, ("set_version", "options"), manifest_path, what)
    if manifest.get("set_version") != SET_VERSION:
        raise ValueError(f"{manifest_path}: set version {manifest.get('set_version')} is not {SET_VERSION}")
    return build(out_dir, SetOptions(**manifest["options"]), progress, force)


def _position_name(value) -> str:
    """``"Top Left"``, ``"top-left"`` -> ``"top_left"``; ``"centre"`` -> ``"center"``."""
    name = "_".join(str(value).strip().lower().replace("-", " ").split())
    return {"centre": "center", "top_centre": "top_center", "bottom_centre": "bottom_center"}.get(name, name)


def normalise_record(row: dict, where: str, answer: bool = True) -> dict:
    """The record with ``cell`` (0..8) and, when ``answer``, ``answer`` as ``"Yes"``/``"No"``.

    ``position`` is one of :data:`POSITIONS` in any case, with spaces or hyphens; ``cell`` when given wins.
    An answer is yes or no in any case, surrounding spaces ignored. Anything else is refused (ValueError
    naming ``where``: the file and line), so that a record is never scored as something it does not say."""
    row = dict(row)
    fix = "fix or remove that record; see `agci probe --help`"
    if "cell" in row:
        cell = row["cell"]
        if isinstance(cell, bool) or not isinstance(cell, int) or not 0 <= cell <= 8:
            raise ValueError(
                f"{where}: cell {json.dumps(cell)} is not a whole number 0..8 (the 3 x 3 grid, row by row); {fix}"
            )
    elif "position" in row:
        name = _position_name(row["position"])
        if name not in POSITIONS:
            raise ValueError(
                f"{where}: position {json.dumps(row['position'])} is not one of {', '.join(POSITIONS)}; {fix}"
            )
        row["position"], row["cell"] = name, POSITIONS.index(name)
    else:
        raise ValueError(f"{where}: the record has no position ({', '.join(POSITIONS)}) or cell (0..8); {fix}")
    if answer:
        given = row.get("answer")
        said = given.strip().lower() if isinstance(given, str) else None
        if said not in ("yes", "no"):
            raise ValueError(f"{where}: answer {json.dumps(given)} is neither yes nor no (any case); {fix}")
        row["answer"] = said.capitalize()
    return row


def read_records(path: str | Path, warn: bool = True, task: str | None = None) -> list[dict]:
    """Probe records from a JSONL/JSON file: ours, or the reference's (image, caption, position, answer).

    A JSONL line that is not valid JSON is logged (unless ``warn`` is False) with its file and line and kept
    as a record marked ``malformed``, which the probe skips and counts like any other bad record. A record
    with an image and a caption must say where its target is and, for the position task, the answer: see
    :func:`normalise_record` (ValueError naming the file and line otherwise). ``task`` ("position" or
    "similarity") defaults to the file's name: ``similarity.jsonl`` holds similarity records."""
    path = Path(path)
    task = task or ("similarity" if path.stem == "similarity" else "position")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); fix it or give the records as JSONL") from exc
        if not isinstance(rows, list):
            raise ValueError(f"{path} must hold a JSON list of records (image, caption, position, answer)")
        numbered = [(i, f"{path} record {i + 1}", row) for i, row in enumerate(rows)]
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((n - 1, f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                if warn:
                    log.warning("%s:%d is not valid JSON (%s); skipping that record", path, n, exc)
                numbered.append(
                    (n - 1, f"{path}:{n}", {"id": f"{path.name}:{n}", "malformed": f"{path}:{n} is not valid JSON"})
                )
    out = []
    for i, where, row in numbered:
        if not isinstance(row, dict):
            row = {"id": f"{path.name}:{i + 1}", "malformed": f"{where} is not a JSON object"}
        row = dict(row)
        if "malformed" not in row and row.get("image") and str(row.get("caption", "")).strip():
            row = normalise_record(row, where, answer=task != "similarity")
        row.setdefault("id", f"{Path(str(row.get('image', i))).stem}_{row.get('answer', '')}_{i}")
        out.append(row)
    seen: dict[str, int] = {}
    for row in out:
        seen[str(row["id"])] = seen.get(str(row["id"]), 0) + 1
    repeated = [k for k, n in seen.items() if n > 1]
    if repeated:
        raise ValueError(
            f"{path}: record ids must be unique, {len(repeated)} repeat (first: {repeated[0]!r}); give each record "
            "its own id, or drop the id field to number them"
        )
    return out
