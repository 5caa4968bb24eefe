"""The REFER files of RefCOCO, RefCOCO+ and RefCOCOg (``refs(<split_by>).p`` beside COCO's
``instances.json``), read once for both companions: one entry per referring sentence.

Files that are not what REFER ships (not a pickle, not JSON, entries without their fields, refs naming
images or annotations that ``instances.json`` lacks) are refused with a ``ValueError`` or
``FileNotFoundError`` that names the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .inputs import read_json, read_pickle, require_keys

REFS = "a REFER refs pickle (refs(<split_by>).p of RefCOCO, RefCOCO+ or RefCOCOg: a list of refs)"
INSTANCES = "the COCO instances.json of the REFER dataset (with images, annotations and categories)"


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


def _by_id(entries, where: Path, key: str, fields: tuple[str, ...]) -> dict:
    """``id -> entry`` of the list ``instances[key]``, each entry checked for ``fields``."""
    if not isinstance(entries, list):
        raise ValueError(f"{where}: {key!r} holds a {type(entries).__name__}, not a list; give {INSTANCES}")
    out = {}
    for k, entry in enumerate(entries):
        require_keys(entry, ("id", *fields), f"{where}: {key}[{k}]", INSTANCES)
        out[entry["id"]] = entry
    return out


def read_refer(refs_path: Path, instances_path: Path, splits,
               annotation_keys: tuple[str, ...] = ()) -> list[ReferSentence]:  # fmt: skip
    """The sentences of the refs whose split is in ``splits``, with their image, annotation and category.

    ``annotation_keys`` are the annotation fields the caller uses (``bbox``, ``segmentation``): checked
    here, so that a file without them is refused in words."""
    refs = read_pickle(refs_path, REFS)
    if not isinstance(refs, list):
        raise ValueError(f"{refs_path} holds a {type(refs).__name__}, not a list of refs; give {REFS}")
    coco = read_json(instances_path, INSTANCES)
    require_keys(coco, ("images", "annotations"), instances_path, INSTANCES)
    images = _by_id(coco["images"], instances_path, "images", ("file_name", "width", "height"))
    anns = _by_id(coco["annotations"], instances_path, "annotations", annotation_keys)
    cats = _by_id(coco.get("categories", []), instances_path, "categories", ())
    out = []
    for k, ref in enumerate(refs):
        require_keys(ref, ("ref_id", "ann_id", "image_id", "split", "sentences"), f"{refs_path}: ref {k}", REFS)
        if ref["split"] not in splits:
            continue
        for name, table, key in (("image", images, "image_id"), ("annotation", anns, "ann_id")):
            if ref[key] not in table:
                raise ValueError(
                    f"{refs_path}: ref {ref['ref_id']} names {name} {ref[key]!r}, which {instances_path} lacks; "
                    "give the refs and the instances.json of the same dataset"
                )
        ann = anns[ref["ann_id"]]
        if not isinstance(ref["sentences"], list):
            raise ValueError(f"{refs_path}: ref {ref['ref_id']}: 'sentences' is not a list; give {REFS}")
        for sent in ref["sentences"]:
            where = f"{refs_path}: a sentence of ref {ref['ref_id']}"
            require_keys(sent, ("sent_id",), where, REFS)
            if not (sent.get("sent") or sent.get("raw")):
                raise ValueError(f"{where} has neither 'sent' nor 'raw' text; give {REFS}")
            out.append(ReferSentence(ref, sent, images[ref["image_id"]], ann, cats.get(ann.get("category_id"), {})))
    return out
