"""HallusionBench (image questions) scored offline: Yes/No parsed by rule, no paid API."""

from agci.eval.scoring import hallusion_record, hallusion_scores
from agci.images import to_rgb


def hb_doc_to_visual(doc):
    image = doc.get("image")
    return [to_rgb(image)] if image is not None else []


def hb_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def hb_process_results(doc, results):
    record = hallusion_record(doc, results[0])
    return {"aAcc": record, "fAcc": record, "qAcc": record}


def hb_aggregate_aAcc(records):
    return hallusion_scores(records)["aAcc"]


def hb_aggregate_fAcc(records):
    return hallusion_scores(records)["fAcc"]


def hb_aggregate_qAcc(records):
    return hallusion_scores(records)["qAcc"]
