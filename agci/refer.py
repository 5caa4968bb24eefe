"""The REFER files of RefCOCO, RefCOCO+ and RefCOCOg (``refs(<split_by>).p`` beside COCO's
``instances.json``), read once for both companions: one entry per referring sentence."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ReferSentence:
    ref: dict  # ref_id, ann_id, image_id, split, sentences
    sentence: dict  # sent_id, sent, raw
    image: dict  # COCO image: file_name, width, height
    annotation: dict  # COCO annotation: bbox, segmentation, category_id
    category: dict  # COCO category: name, supercategory

    @property
    def id(self) -> str:
        return f"{self.ref['ref_id']}_{self.sentence['sent_id']}"


def read_refer(refs_path: Path, instances_path: Path, splits) -> list[ReferSentence]:
    """The sentences of the refs whose split is in ``splits``, with their image, annotation and category."""
    with open(refs_path, "rb") as f:
        refs = pickle.load(f)
    coco = json.loads(Path(instances_path).read_text())
    images = {im["id"]: im for im in coco["images"]}
    anns = {a["id"]: a for a in coco["annotations"]}
    cats = {c["id"]: c for c in coco.get("categories", [])}
    out = []
    for ref in refs:
        if ref["split"] not in splits:
            continue
        ann = anns[ref["ann_id"]]
        for sent in ref["sentences"]:
            out.append(ReferSentence(ref, sent, images[ref["image_id"]], ann, cats.get(ann["category_id"], {})))
    return out
