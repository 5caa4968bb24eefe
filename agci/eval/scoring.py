"""Scoring for agci's lmms-eval tasks: CRPE's circular evaluation and HallusionBench without an API.

Pure functions on plain records, so they are tested on known predictions; the task ``utils.py``
files only adapt lmms-eval's calling conventions to them.
"""

from __future__ import annotations

import re
from collections import defaultdict

CRPE_BLOCK = 4  # the official files hold every question 4 times, its options rotated, one after another


def crpe_options(text: str) -> dict[str, str]:
    """Option letter -> option text, from a CRPE question ("A. a man\\nB. a dog ...")."""
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"(?m)^\s*([A-Z])\.\s*(.+?)\s*$", text)}


def crpe_choice(prediction: str, question: str) -> str:
    """The option letter a prediction picks: the option whose text the prediction repeats exactly, else a
    leading letter ("B", "(B)", "B.", "B: ..."); "" when neither (scored wrong, as the official
    evaluation scores any answer that is not a single letter)."""
    options = crpe_options(question)
    letters = "".join(options) or "ABCD"
    text = prediction.strip()
    plain = text.rstrip(".").strip().lower()
    for letter, option in options.items():  # first, so that "A cat." is the option "a cat", not A
        if plain == option.rstrip(".").strip().lower():
            return letter
    found = re.match(rf"^\(?([{letters}])(?:[\s.):,]|$)", text)
    return found.group(1) if found else ""


def crpe_circular_accuracy(records: list[dict]) -> float:
    """Share of blocks whose 4 rotations are all answered right. ``records`` carry ``block`` and
    ``correct``; a block with fewer than 4 answers (``--limit``) counts with what it has."""
    blocks: dict[int, list[bool]] = defaultdict(list)
    for r in records:
        blocks[int(r["block"])].append(bool(r["correct"]))
    if not blocks:
        return 0.0
    return sum(all(v) for v in blocks.values()) / len(blocks)


def yes_no(prediction: str) -> str:
    """ "yes", "no" or "unknown": the first of the two words that the answer contains."""
    found = re.search(r"\b(yes|no)\b", prediction.lower())
    return found.group(1) if found else "unknown"


def hallusion_record(doc: dict, prediction: str) -> dict:
    """What the aggregations need from one answered HallusionBench question."""
    truth = "yes" if str(doc["gt_answer"]).strip() == "1" else "no"
    answer = yes_no(prediction)
    keys = ("category", "subcategory", "set_id", "figure_id", "question_id")
    return {**{k: str(doc[k]) for k in keys}, "answer": answer, "truth": truth, "correct": answer == truth}


def hallusion_scores(records: list[dict]) -> dict[str, float]:
    """HallusionBench's three accuracies in percent, with the answer parsed by rule instead of GPT-4:
    aAcc over questions; fAcc over figures (all questions on a figure right; VS questions without a
    figure left out); qAcc over questions (right on every figure it is asked about)."""
    if not records:
        return {"aAcc": 0.0, "fAcc": 0.0, "qAcc": 0.0}
    figures: dict[tuple, list[bool]] = defaultdict(list)
    questions: dict[tuple, list[bool]] = defaultdict(list)
    for r in records:
        if not (r["category"] == "VS" and r["figure_id"] == "0"):
            figures[(r["category"], r["subcategory"], r["set_id"], r["figure_id"])].append(r["correct"])
        questions[(r["category"], r["subcategory"], r["set_id"], r["question_id"])].append(r["correct"])

    def share(groups) -> float:
        return round(100 * sum(all(v) for v in groups.values()) / len(groups), 4) if groups else 0.0

    return {
        "aAcc": round(100 * sum(r["correct"] for r in records) / len(records), 4),
        "fAcc": share(figures),
        "qAcc": share(questions),
    }


def pope_answer(prediction: str) -> str:
    """POPE's answer as LLaVA's evaluation reads it: the first sentence is "no" when it contains the word
    "no" or "not", otherwise "yes"."""
    sentence = prediction.strip().split(".")[0]
    words = re.findall(r"[a-z']+", sentence.lower())
    return "no" if "no" in words or "not" in words else "yes"


def pope_scores(records: list[dict]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of "yes", and the share of "yes" answers, from records with
    ``answer`` and ``truth``."""
    n = len(records)
    if not n:
        return dict.fromkeys(("accuracy", "precision", "recall", "f1", "yes_ratio"), 0.0)
    tp = sum(r["answer"] == "yes" and r["truth"] == "yes" for r in records)
    fp = sum(r["answer"] == "yes" and r["truth"] == "no" for r in records)
    fn = sum(r["answer"] == "no" and r["truth"] == "yes" for r in records)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(r["answer"] == r["truth"] for r in records) / n,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(r["answer"] == "yes" for r in records) / n,
    }
