"""RefCOCOg examples from the REFER files, and the Region Cell Matching (RCM) set built from them.

REFER layout: ``refs(umd).p`` (a pickled list of refs with ``image_id``, ``ann_id``, ``split`` and
``sentences``) beside COCO's ``instances.json``; images are COCO train2014 files.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from ..runs import write_json, write_text
from .boxes import xywh_to_cxcywh

CELL_NAMES = (
    "top left", "top middle", "top right",
    "middle left", "middle", "middle right",
    "bottom left", "bottom middle", "bottom right",
)  # fmt: skip
RCM_TEMPLATE = "The phrase '{expression}' refers to the {cell} part of the image."


@dataclass
class RefExample:
    id: str
    image: str  # file name under the COCO image folder
    text: str
    box: list[float]  # normalised cx, cy, w, h
    category: str
    supercategory: str
    split: str

    @property
    def cell(self) -> int:
        """The 3x3 cell whose centre is nearest the box centre."""
        cx, cy = self.box[0], self.box[1]
        return min(int(cy * 3), 2) * 3 + min(int(cx * 3), 2)


def load_refcocog(refs_path: Path, instances_path: Path, splits=("train", "val", "test")) -> list[RefExample]:
    """One example per referring sentence of the requested splits."""
    from ..refer import read_refer

    out = []
    for r in read_refer(refs_path, instances_path, splits, annotation_keys=("bbox", "category_id")):
        if "name" not in r.category:
            raise ValueError(
                f"{instances_path}: annotation {r.annotation['id']} has category_id {r.annotation['category_id']!r}, "
                "which its categories lack (each with an id and a name); give COCO's instances.json"
            )
        box = xywh_to_cxcywh(r.annotation["bbox"], r.image["width"], r.image["height"])
        text = (r.sentence.get("raw") or r.sentence["sent"]).strip()
        out.append(RefExample(r.id, r.image["file_name"], text, box, r.category["name"],
                              r.category.get("supercategory", ""), r.ref["split"]))  # fmt: skip
    if not out:
        raise ValueError(f"{refs_path}: no referring expressions in splits {splits}")
    return out


@dataclass
class RCMExample:
    id: str
    image: str
    text: str  # the caption built from RCM_TEMPLATE
    label: int  # 1: the expression's box is in the named cell
    cell: int  # the named cell
    true_cell: int
    split: str


def build_rcm(examples: list[RefExample], seed: int = 0) -> list[RCMExample]:
    """RCM as the seed's appendix describes it, per split: positives downsampled to the same count in
    every cell; then, for each cell i with N_i positives, N_i/8 negatives drawn from each other cell j
    (expressions located in j, captioned with i), so negatives are balanced over the named cells too."""
    rng = random.Random(seed)
    out: list[RCMExample] = []
    for split in sorted({e.split for e in examples}):
        by_cell: list[list[RefExample]] = [[] for _ in range(9)]
        for e in examples:
            if e.split == split:
                by_cell[e.cell].append(e)
        per_cell = min(len(c) for c in by_cell)
        if per_cell < 8:
            raise ValueError(f"split {split}: a cell has only {per_cell} expressions; RCM needs at least 8 per cell")
        positives, spare = [], []
        for cell_examples in by_cell:
            shuffled = rng.sample(cell_examples, len(cell_examples))
            positives.append(shuffled[:per_cell])
            spare.append(shuffled[per_cell:] or shuffled)  # negatives come from unused expressions when any
        for i in range(9):
            for e in positives[i]:
                out.append(RCMExample(f"{e.id}_pos", e.image, _caption(e, i), 1, i, i, split))
            for j in range(9):
                if j == i:
                    continue
                for e in rng.sample(spare[j], min(per_cell // 8, len(spare[j]))):
                    out.append(RCMExample(f"{e.id}_neg{i}", e.image, _caption(e, i), 0, i, j, split))
    return out


def _caption(e: RefExample, cell: int) -> str:
    return RCM_TEMPLATE.format(expression=e.text.rstrip("."), cell=CELL_NAMES[cell])


def write_rcm(rcm: list[RCMExample], out: Path, source: dict) -> dict:
    """``out/<split>.jsonl`` and ``out/manifest.json`` (seed, source, counts per split, cell and label)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict = {}
    for split in sorted({r.split for r in rcm}):
        rows = [r for r in rcm if r.split == split]
        write_text(out / f"{split}.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in rows))
        counts[split] = {
            "examples": len(rows),
            "positives_per_cell": [sum(r.label and r.cell == c for r in rows) for c in range(9)],
            "negatives_per_cell": [sum((not r.label) and r.cell == c for r in rows) for c in range(9)],
        }
    manifest = {"task": "rcm", "template": RCM_TEMPLATE, "cells": CELL_NAMES, "source": source, "counts": counts}
    write_json(out / "manifest.json", manifest)
    return manifest
