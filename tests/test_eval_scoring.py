"""agci's lmms-eval scoring (CRPE, HallusionBench, POPE) on answers whose scores are counted by hand.

Pure functions, no lmms-eval needed; ``mutation/run.py`` checks ``agci/eval/scoring.py`` against this file."""

from __future__ import annotations

import pytest

from agci.eval import scoring

CRPE_Q = "What is in the image?\nA. a dog\nB. a cat\nC. a horse\nD. a bird\nAnswer with the option's letter."


# -- CRPE ---------------------------------------------------------------------------------------------------


def test_crpe_options_reads_lettered_lines_only():
    question = "Which?\n  A.  a red car  \nB.a bus\nc. not an option\nAB. nor this\nD. the end."
    assert scoring.crpe_options(question) == {"A": "a red car", "B": "a bus", "D": "the end."}
    assert scoring.crpe_options("no options here") == {}


@pytest.mark.parametrize(
    "prediction, expected",
    [("B", "B"), ("(C)", "C"), ("D. a bird", "D"), ("A: a dog", "A"), ("a cat", "B"), ("A cat.", "B"),
     ("I think B", ""), ("", ""), ("E", "")],
)  # fmt: skip
def test_crpe_choice(prediction, expected):
    assert scoring.crpe_choice(prediction, CRPE_Q) == expected


@pytest.mark.parametrize(
    "prediction, expected",
    [("  C  ", "C"), ("C,", "C"), ("C)", "C"), ("C\nbecause", "C"), ("(C", "C"), ("Cat", ""), ("c", ""),
     ("((C)", ""), ("a horse", "C"), ("A HORSE", "C"), (" a horse . ", "C"), ("a horse..", "C"),
     ("the horse", ""), ("a  horse", ""), ("X", "")],
)  # fmt: skip
def test_crpe_choice_letters_and_option_texts(prediction, expected):
    assert scoring.crpe_choice(prediction, CRPE_Q) == expected


def test_crpe_choice_matches_option_text_ending_in_a_period_and_only_the_question_letters():
    question = "Pick one.\nA. a dog.\nB. a cat.\nC. a cow."
    assert scoring.crpe_choice("a cat", question) == "B" and scoring.crpe_choice("a cat.", question) == "B"
    assert scoring.crpe_choice("D", question) == ""  # the question has no option D
    assert scoring.crpe_choice("C", question) == "C"
    # a question without lettered options: any of A-D is taken, E is not
    assert scoring.crpe_choice("D", "Which one?") == "D" and scoring.crpe_choice("E", "Which one?") == ""
    assert scoring.crpe_choice("X", "Which one?") == ""


def test_crpe_choice_strips_only_periods_from_the_texts():
    question = "Who?\nA. Malcolm\nB. Malcolm X"
    assert scoring.crpe_choice("Malcolm X", question) == "B" and scoring.crpe_choice("Malcolm.", question) == "A"


def test_crpe_choice_prefers_the_option_text_over_a_leading_letter():
    question = "Who?\nA. B\nB. A"  # option A's text is "B"
    assert scoring.crpe_choice("B", question) == "A" and scoring.crpe_choice("A.", question) == "B"


def test_crpe_circular_accuracy_needs_all_four_rotations():
    records = [{"block": 0, "correct": True}] * 4 + [{"block": 1, "correct": c} for c in (True, True, False, True)]
    assert scoring.crpe_circular_accuracy(records) == 0.5
    assert scoring.crpe_circular_accuracy([]) == 0.0


def test_crpe_circular_accuracy_joins_blocks_given_as_text_and_counts_short_blocks():
    # block 0 as "0" and 0 is one block (one wrong: 0/1); block 7 has two right answers only (1/1); 1 of 3
    records = [{"block": "0", "correct": 1}, {"block": 0, "correct": 0}, {"block": 7, "correct": True},
               {"block": "7", "correct": True}, {"block": 2, "correct": False}]  # fmt: skip
    assert scoring.crpe_circular_accuracy(records) == pytest.approx(1 / 3)
    assert scoring.crpe_circular_accuracy([{"block": 3, "correct": True}]) == 1.0


# -- HallusionBench -----------------------------------------------------------------------------------------

KEYS = ("category", "subcategory", "set_id", "figure_id", "question_id", "gt_answer")


def _records(docs):
    return [scoring.hallusion_record(dict(zip(KEYS, d, strict=True)), a) for d, a in docs]


@pytest.mark.parametrize(
    "prediction, expected",
    [("Yes", "yes"), ("NO.", "no"), ("No, yes", "no"), ("well, yes and no", "yes"), ("Nope", "unknown"),
     ("I know", "unknown"), ("yesterday", "unknown"), ("Not sure", "unknown"), ("", "unknown")],
)  # fmt: skip
def test_yes_no_takes_the_first_whole_word(prediction, expected):
    assert scoring.yes_no(prediction) == expected


def test_hallusion_record_keeps_the_keys_as_text_and_reads_the_truth():
    doc = {"category": "VD", "subcategory": "math", "set_id": 3, "figure_id": 0, "question_id": 12,
           "gt_answer": " 1 ", "extra": "dropped"}  # fmt: skip
    assert scoring.hallusion_record(doc, "Yes, it is.") == {
        "category": "VD", "subcategory": "math", "set_id": "3", "figure_id": "0", "question_id": "12",
        "answer": "yes", "truth": "yes", "correct": True,
    }  # fmt: skip
    assert scoring.hallusion_record({**doc, "gt_answer": 1}, "no")["truth"] == "yes"
    record = scoring.hallusion_record({**doc, "gt_answer": "0"}, "maybe")
    assert record["truth"] == "no" and record["answer"] == "unknown" and record["correct"] is False
    assert scoring.hallusion_record({**doc, "gt_answer": "2"}, "no")["correct"] is True  # anything but 1 is "no"


def test_hallusion_offline_scores():
    docs = [  # (category, subcategory, set, figure, question, truth) and the answer given
        (("VD", "illusion", "0", "0", "0", "1"), "Yes"),
        (("VD", "illusion", "0", "1", "0", "0"), "yes, it is"),
        (("VS", "chart", "1", "0", "0", "1"), "No."),
        (("VS", "chart", "1", "1", "0", "0"), "No, it is not."),
        (("VD", "illusion", "2", "0", "1", "1"), "I would say yes"),
    ]
    records = _records(docs)
    assert [r["correct"] for r in records] == [True, False, False, True, True]
    # aAcc 3/5; fAcc over 4 figures (VS figure 0 left out), 3 all right; qAcc over 3 questions, 1 all right
    assert scoring.hallusion_scores(records) == {"aAcc": 60.0, "fAcc": 75.0, "qAcc": 33.3333}


def test_hallusion_groups_need_every_key_to_match():
    docs = [  # all right except the last; groups differ in one key at a time
        (("VD", "a", "0", "1", "0", "1"), "yes"),
        (("VS", "a", "0", "1", "0", "1"), "yes"),  # other category
        (("VD", "b", "0", "1", "0", "1"), "yes"),  # other subcategory
        (("VD", "a", "5", "1", "0", "1"), "yes"),  # other set
        (("VD", "a", "0", "2", "0", "1"), "yes"),  # other figure, same question as the first
        (("VD", "a", "0", "1", "9", "1"), "no"),  # same figure as the first, other question: wrong
    ]
    # aAcc 5/6 = 83.3333; figures: (VD,a,0,1) holds the wrong answer, 4 others right -> 4/5 = 80;
    # questions: (VD,a,0,0) holds the first and fifth (both right), (VD,a,0,9) wrong, 3 others right -> 4/5
    assert scoring.hallusion_scores(_records(docs)) == {"aAcc": 83.3333, "fAcc": 80.0, "qAcc": 80.0}


def test_hallusion_leaves_out_only_vs_questions_without_a_figure():
    docs = [
        (("VS", "t", "0", "0", "0", "1"), "no"),  # VS without a figure: wrong, not a figure
        (("VD", "t", "0", "0", "1", "1"), "no"),  # VD figure 0 is a real figure: wrong
        (("VS", "t", "1", "1", "2", "1"), "yes"),  # VS with a figure: right
    ]
    # aAcc 1/3; figures (VD,t,0,0) wrong and (VS,t,1,1) right -> 50; questions 1 of 3 right
    assert scoring.hallusion_scores(_records(docs)) == {"aAcc": 33.3333, "fAcc": 50.0, "qAcc": 33.3333}
    only_vs = _records([(("VS", "t", "0", "0", "0", "1"), "yes")])
    assert scoring.hallusion_scores(only_vs) == {"aAcc": 100.0, "fAcc": 0.0, "qAcc": 100.0}


def test_hallusion_scores_of_nothing_are_zero():
    assert scoring.hallusion_scores([]) == {"aAcc": 0.0, "fAcc": 0.0, "qAcc": 0.0}


# -- POPE ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, expected",
    [("Yes", "yes"), ("NO", "no"), ("Not really.", "no"), ("There is a dog. No other.", "yes"),
     ("  No, there isn't.", "no"), ("Nothing suggests otherwise", "yes"), ("It isn't", "yes"),
     ("There is no-thing", "no"), ("", "yes"), ("Yes it is not", "no"), ("Knot", "yes")],
)  # fmt: skip
def test_pope_answer_reads_no_or_not_in_the_first_sentence(prediction, expected):
    assert scoring.pope_answer(prediction) == expected


def test_pope_scores_llava_rule():
    answers = ["Yes", "Yes, there is a dog.", "There is no dog.", "No", "It is not there. Yes."]
    truths = ["yes", "no", "yes", "no", "no"]
    parsed = [scoring.pope_answer(a) for a in answers]
    assert parsed == ["yes", "yes", "no", "no", "no"]
    s = scoring.pope_scores([{"answer": a, "truth": t} for a, t in zip(parsed, truths, strict=True)])
    # tp 1, fp 1, fn 1, tn 2
    assert s == {"accuracy": 0.6, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.4}


def _pope(pairs):
    return scoring.pope_scores([{"answer": a, "truth": t} for a, t in pairs])


def test_pope_scores_on_six_answers_counted_by_hand():
    # tp 2, fp 2, fn 1, tn 1: accuracy 3/6, precision 2/4, recall 2/3, F1 2 * 1/2 * 2/3 / (7/6) = 4/7, yes 4/6
    pairs = [("yes", "yes"), ("yes", "no"), ("no", "yes"), ("yes", "yes"), ("no", "no"), ("yes", "no")]
    assert _pope(pairs) == pytest.approx(
        {"accuracy": 0.5, "precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "yes_ratio": 4 / 6}
    )


def test_pope_scores_without_yes_answers_or_yes_truths():
    # no "yes" answer: precision, recall and F1 are 0, not a division by zero
    assert _pope([("no", "yes"), ("no", "no")]) == {
        "accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0,
    }  # fmt: skip
    # no "yes" truth: recall 0 (tp + fn = 0)
    assert _pope([("yes", "no"), ("no", "no"), ("no", "no")]) == pytest.approx(
        {"accuracy": 2 / 3, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 1 / 3}
    )
    # every answer right
    assert _pope([("yes", "yes"), ("no", "no")]) == {
        "accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5,
    }  # fmt: skip


def test_pope_scores_of_nothing_are_zero():
    assert _pope([]) == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}
