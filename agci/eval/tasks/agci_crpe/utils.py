"""CRPE (OpenGVLab) for lmms-eval: existence and the relation subsets, scored circularly."""

import os
from pathlib import Path

from agci.eval.scoring import CRPE_BLOCK, crpe_choice, crpe_circular_accuracy
from agci.images import read_image, to_rgb

IMAGES_ENV = "AGCI_CRPE_IMAGES"


def _category(name):
    def process_docs(dataset):
        kept = dataset.filter(lambda doc: doc["category"] == name)
        return kept.map(lambda _, i: {"block": i // CRPE_BLOCK}, with_indices=True)

    return process_docs


exist_docs = _category("exist")
subject_docs = _category("subject")
predicate_docs = _category("predicate")
object_docs = _category("object")


def crpe_doc_to_visual(doc):
    image = doc["image"]
    if hasattr(image, "convert"):
        return [to_rgb(image)]
    roots = [Path(p) for p in os.environ.get(IMAGES_ENV, "").split(os.pathsep) if p]
    tried = [Path(image)] if Path(image).is_absolute() else [root / image for root in roots]
    for path in tried:
        if path.is_file():
            return [read_image(path)]
    raise FileNotFoundError(
        f"CRPE image {image!r} not found (tried {[str(p) for p in tried] or 'nothing'}); set {IMAGES_ENV} to the "
        "folder that holds coco/val2017/ and abnormal_images/"
    )


def crpe_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['text'].strip()}{kwargs.get('post_prompt', '')}"


def crpe_process_results(doc, results):
    choice = crpe_choice(results[0], doc["text"])
    correct = choice == str(doc["correct_option"]).strip()
    return {
        "circular_accuracy": {"block": doc["block"], "correct": correct},
        "accuracy": float(correct),
    }


def crpe_aggregate_circular(records):
    return crpe_circular_accuracy(records)
