"""POPE scored as LLaVA's evaluation does (the paper's numbers), with the yes ratio of the answers."""

from agci.eval.scoring import pope_answer, pope_scores


def pope_process_results(doc, results):
    record = {"answer": pope_answer(results[0]), "truth": doc["answer"].strip().lower()}
    return {name: record for name in ("accuracy", "precision", "recall", "f1", "yes_ratio")}


def _aggregate(name):
    return lambda records: pope_scores(records)[name]


pope_accuracy = _aggregate("accuracy")
pope_precision = _aggregate("precision")
pope_recall = _aggregate("recall")
pope_f1 = _aggregate("f1")
pope_yes_ratio = _aggregate("yes_ratio")
