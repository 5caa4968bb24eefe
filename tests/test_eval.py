"""lmms-eval integration: scoring on known answers, the registered models, and the real ``lmms-eval``
and ``agci eval`` commands offline on tiny checkpoints and tiny local benchmark copies."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install 'agci[eval]')")

from family_cases import CASES  # noqa: E402
from tiny_checkpoints import processed_families_here  # noqa: E402

from agci.eval import TASKS_DIR, scoring, suite  # noqa: E402
from agci.eval.plugin import MODEL_NAMES  # noqa: E402

HERE = Path(__file__).parent
TINY_LLAVA = HERE.parent / "agci" / "bias" / "assets" / "tiny-probe-llava"
METRICS = {
    "agci_pope": {"accuracy", "precision", "recall", "f1", "yes_ratio"},
    "pope": {"pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio"},
    "agci_crpe_exist": {"circular_accuracy", "accuracy"},
    "agci_crpe_subject": {"circular_accuracy", "accuracy"},
    "agci_crpe_predicate": {"circular_accuracy", "accuracy"},
    "agci_crpe_object": {"circular_accuracy", "accuracy"},
    "agci_hallusion_bench_image_offline": {"aAcc", "fAcc", "qAcc"},
    "textvqa_val": {"exact_match"},
    "scienceqa_img": {"exact_match"},
    "mmmu_pro_standard": {"mmmu_acc"},
    "agci_mmmu_pro_standard_4": {"mmmu_acc"},
}


def _task_utils(folder: str):
    spec = importlib.util.spec_from_file_location(f"{folder}_utils", TASKS_DIR / folder / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- scoring on known predictions (the pure functions: tests/test_eval_scoring.py) ----------------------
CRPE_Q = "What is in the image?\nA. a dog\nB. a cat\nC. a horse\nD. a bird\nAnswer with the option's letter."


def test_crpe_docs_split_by_category_and_numbered_in_blocks_of_four():
    from datasets import Dataset

    cats = ["subject"] * 4 + ["object"] * 4 + ["subject"] * 4
    ds = Dataset.from_dict({"category": cats, "text": [CRPE_Q] * 12, "correct_option": ["A"] * 12})
    utils = _task_utils("agci_crpe")
    subject = utils.subject_docs(ds)
    assert len(subject) == 8 and subject["block"] == [0] * 4 + [1] * 4
    assert utils.object_docs(ds)["block"] == [0] * 4
    out = utils.crpe_process_results(subject[5], ["A"])
    assert out == {"circular_accuracy": {"block": 1, "correct": True}, "accuracy": 1.0}


def test_crpe_missing_image_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("AGCI_CRPE_IMAGES", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="AGCI_CRPE_IMAGES"):
        _task_utils("agci_crpe").crpe_doc_to_visual({"image": "coco/val2017/1.jpg"})


def test_builtin_pope_scoring_on_known_answers():
    from lmms_eval.tasks.pope import utils

    rows = [utils.pope_process_results({"answer": t, "question_id": i}, [p])["pope_accuracy"]
            for i, (p, t) in enumerate([("yes", "yes"), ("Yes", "no"), ("yes", "yes"), ("no", "no")])]  # fmt: skip
    assert utils.pope_aggregate_accuracy(rows) == 0.75
    assert utils.pope_aggregate_precision(rows) == pytest.approx(2 / 3)
    assert utils.pope_aggregate_recall(rows) == 1.0
    assert utils.pope_aggregate_yes_ratio(rows) == 0.5  # the ground truth's share, not the answers' (hence agci_pope)


def test_mmmu_pro_parsing_on_known_answers():
    from lmms_eval.tasks.mmmu_pro import utils

    doc = {"id": "validation_Art_1", "subject": "Art", "answer": "C", "question": "<image 1> Which?",
           "options": str(["red", "blue", "green", "black"])}  # fmt: skip
    # MMMU's parser matches option text only in answers longer than 5 words (a bare "green" is drawn at random)
    pairs = [("C", "C"), ("The answer is (B).", "B"), ("I am fairly sure it is green", "C"), ("A. red", "A")]
    for prediction, parsed in pairs:
        assert utils.mmmu_pro_process_results(doc, [prediction])["mmmu_acc"]["parsed_pred"] == parsed
    results = [
        utils.mmmu_pro_process_results(doc, [p])["mmmu_acc"] for p in ("C", "B", "it must be the green one", "D")
    ]
    assert utils.mmmu_pro_aggregate_results(results) == 0.5


# -- the registered models ----------------------------------------------------------------------------
def test_entry_point_names_every_family():
    from importlib.metadata import entry_points

    from lmms_eval.models import get_model

    assert [ep.value for ep in entry_points().select(group="lmms_eval.models") if ep.name == "agci"] == [
        "agci.eval.plugin:manifests"
    ]
    from agci.patches.core import SUPPORTED_MODEL_TYPES

    assert MODEL_NAMES["agci"] == SUPPORTED_MODEL_TYPES  # the generic name serves every family
    assert MODEL_NAMES["agci_llava"] == ("llava", "llava_next")  # as before the registry
    assert {n: ts for n, ts in MODEL_NAMES.items() if n not in ("agci", "agci_llava")} == {
        f"agci_{t}": (t,) for t in SUPPORTED_MODEL_TYPES if t != "llava"
    }
    for name in MODEL_NAMES:
        cls = get_model(name)
        assert cls.model_name == name and cls.is_simple


def test_entry_point_module_imports_nothing_heavy():
    code = (
        "import sys, agci.eval.plugin as p; p.manifests(); print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


FAMILIES = processed_families_here()  # the families whose tiny checkpoints have a real processor
_SAVED: dict[str, Path] = {}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """model type -> a tiny saved checkpoint with its processor (lambda 0.3 in config.json)."""
    sys.path.insert(0, str(HERE))
    from tiny_checkpoints import save_tiny

    def get(model_type: str) -> Path:
        if model_type not in _SAVED:
            _SAVED[model_type] = save_tiny(model_type, tmp_path_factory.mktemp(model_type) / "ckpt", lam=0.3)
        return _SAVED[model_type]

    return get


@pytest.fixture(scope="module")
def tiny_qwen(tiny):
    return tiny("qwen2_5_vl")


def _model_class(model_type: str):
    from agci.eval import lmms_model
    from agci.eval.plugin import class_name, model_name_for

    return getattr(lmms_model, class_name(model_name_for(model_type)))


def test_wrong_family_and_unknown_args_are_refused(tiny_qwen):
    from agci.eval.lmms_model import AGCI_llava, AGCI_qwen2_5_vl

    with pytest.raises(ValueError, match="use agci_qwen2_5_vl"):
        AGCI_llava(pretrained=str(tiny_qwen), device="cpu")
    with pytest.raises(ValueError, match="unknown model_args \\['lamda'\\]"):
        AGCI_qwen2_5_vl(pretrained=str(tiny_qwen), lamda=0.5)
    with pytest.raises(ValueError, match="batch_size must be a whole number"):
        AGCI_qwen2_5_vl(pretrained=str(tiny_qwen), batch_size="auto")
    with pytest.raises(ValueError, match="lambda"):
        AGCI_qwen2_5_vl(pretrained=str(tiny_qwen), global_context_broadcast_lambda=-1, device="cpu")


@pytest.mark.parametrize(("value", "problem"), [("", "'' is not a number"), ("1_0", "'1_0' is not a number"),
                                               ("1e308", "must be <= 1000")])  # fmt: skip
def test_the_lambda_model_arg_is_a_plain_number(value, problem):
    """Refused before the checkpoint is read; "" was taken as "the checkpoint's own", 1_0 as 10."""
    from agci.eval.lmms_model import check_model_args

    with pytest.raises(
        ValueError, match=f"^agci: global_context_broadcast_lambda={value} is not a number from 0 to 1000 .*{problem}"
    ):
        check_model_args("agci", "nowhere", {"global_context_broadcast_lambda": value})


def test_the_generic_name_serves_every_family_and_refuses_an_unsupported_type(tiny, tmp_path):
    from agci.eval.lmms_model import AGCI

    for model_type in ("llava", "qwen2_5_vl"):
        model = AGCI(pretrained=str(tiny(model_type)), device="cpu")
        assert model.model.config.model_type == model_type and model.model_name == "agci"
    config = json.loads((tiny("llava") / "config.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model type 'llama' is not supported; supported: llava, llava_next"):
        AGCI(pretrained=str(tmp_path / "other"), device="cpu")


def test_lambda_argument_overrides_the_checkpoint(tiny_qwen):
    from agci.eval.lmms_model import AGCI_qwen2_5_vl

    assert AGCI_qwen2_5_vl(pretrained=str(tiny_qwen), device="cpu").global_context_broadcast_lambda == 0.3
    override = AGCI_qwen2_5_vl(pretrained=str(tiny_qwen), global_context_broadcast_lambda="0", device="cpu")
    assert override.global_context_broadcast_lambda == 0.0


def test_max_and_min_pixels_reach_the_qwen_processor(tiny_qwen):
    """The image tokens the model gets: a merged token covers 28x28 pixels, so their count times 784 is the
    resized image's area, which max_pixels / min_pixels bound (given as strings, as lmms-eval passes them)."""
    from PIL import Image

    from agci.eval.lmms_model import AGCI_qwen2_5_vl

    def image_tokens(size, **pixels) -> int:
        model = AGCI_qwen2_5_vl(pretrained=str(tiny_qwen), device="cpu", **pixels)
        inputs = model._inputs([[Image.new("RGB", size, (200, 30, 30))]], ["What is in the image?"])
        return int((inputs["input_ids"] == model.model.config.image_token_id).sum())

    # the checkpoint's processor keeps 3136 to 7056 pixels: 112x84 shrinks to 6 tokens, 28x28 grows to 4
    assert image_tokens((112, 84)) * 784 > 3136 and image_tokens((28, 28)) * 784 < 12544
    assert image_tokens((112, 84), max_pixels="3136") * 784 <= 3136
    assert image_tokens((28, 28), min_pixels="12544", max_pixels="50176") * 784 >= 12544


def test_system_prompt_reaches_the_model(tiny_qwen, tmp_path, monkeypatch):
    """The token ids that generate gets hold the system prompt, given as text or as a file (lmms-eval's
    convention), and only when one is given."""
    from PIL import Image

    from agci.eval.lmms_model import AGCI_qwen2_5_vl

    system = "answer the question with only one word"  # words of the tiny tokenizer's vocabulary
    (tmp_path / "system.txt").write_text(system + "\n")

    def prompt_seen(**kwargs) -> str:
        model = AGCI_qwen2_5_vl(pretrained=str(tiny_qwen), device="cpu", **kwargs)
        seen = []
        generate = model.model.generate

        def spy(**inputs):
            seen.append(inputs["input_ids"])
            return generate(**inputs)

        monkeypatch.setattr(model.model, "generate", spy)
        model._generate(["What colour is it?"], [[Image.new("RGB", (48, 40), (200, 30, 30))]], {"max_new_tokens": 2})
        assert len(seen) == 1
        return model.tokenizer.decode(seen[0][0], skip_special_tokens=False)

    assert system not in prompt_seen()
    for given in (system, str(tmp_path / "system.txt")):
        prompt = prompt_seen(system_prompt=given)
        assert system in prompt and prompt.index(system) < prompt.index("<|vision_start|>"), prompt


@pytest.mark.parametrize("model_type", FAMILIES)
def test_batched_answers_equal_single_answers(model_type, tiny):
    """Left-padded batches of different image sizes, one sample without an image: same answers as alone."""
    from PIL import Image

    model = _model_class(model_type)(pretrained=str(tiny(model_type)), global_context_broadcast_lambda=2.0,
                                     device="cpu", batch_size=4)  # fmt: skip
    images = [[Image.new("RGB", (48, 40), (200, 30, 30))], [Image.new("RGB", (70, 30), (30, 30, 200))], [],
              [Image.new("RGB", (40, 40), (30, 200, 30))]]  # fmt: skip
    prompts = ["Is there a dog in the image?", "What is in the image?", "Which colour?", "What colour is it?"]
    if CASES[model_type].prompt_needs_image:  # PaliGemma's processor refuses a prompt without an image
        del images[2], prompts[2]
    kwargs = {"max_new_tokens": 5, "until": ["\n"]}
    batched = model._generate(prompts, images, dict(kwargs))
    single = [model._generate([p], [i], dict(kwargs))[0] for p, i in zip(prompts, images, strict=True)]
    assert batched == single and all(isinstance(t, str) for t in batched)


def test_embedded_llava_batches_too():
    from PIL import Image

    from agci.eval.lmms_model import AGCI_llava

    model = AGCI_llava(pretrained=str(TINY_LLAVA), global_context_broadcast_lambda=0.5, device="cpu", batch_size=3)
    images = [[Image.new("RGB", (42 + 10 * k, 42), c)] for k, c in enumerate([(255, 0, 0), (0, 0, 255), (0, 160, 0)])]
    prompts = ["What is in the image?"] * 3
    batched = model._generate(prompts, images, {"max_new_tokens": 4})
    assert batched == [
        model._generate([p], [i], {"max_new_tokens": 4})[0] for p, i in zip(prompts, images, strict=True)
    ]


# -- the real commands, offline -------------------------------------------------------------------------
def _env(tmp_path: Path, trace: Path) -> dict:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE / "lambda_trace"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["AGCI_TRACE_LAMBDA"] = str(trace)
    env["AGCI_CRPE_IMAGES"] = str(tmp_path / "data" / "crpe")
    env["HF_HOME"] = str(tmp_path / "hf")  # datasets' cache of the local parquet files stays in the test
    return env


def _lmms_eval() -> list[str]:
    return [str(Path(sys.executable).parent / "lmms-eval")]


def injected(trace: Path) -> list[float]:
    """The lambdas that AGCI injections used, from the tracer's file (none: the file is absent)."""
    return [float(line.split()[1]) for line in trace.read_text().splitlines()] if trace.exists() else []


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _yes_no_counts(pairs) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of "yes" over (answer, truth) pairs."""
    pairs = list(pairs)
    tp = sum(a == "yes" and t == "yes" for a, t in pairs)
    fp = sum(a == "yes" and t == "no" for a, t in pairs)
    fn = sum(a == "no" and t == "yes" for a, t in pairs)
    return tp, fp, fn


def _all_right_share(groups: dict) -> float:
    return _ratio(sum(all(v) for v in groups.values()), len(groups))


def _recompute(task: str, samples: list[dict]) -> dict[str, float]:
    """Each metric of ``task`` computed here from its per-sample log (``--log_samples``), after checking that
    each sample's entries follow from the answer the model gave (``filtered_resps``) and the ``target``."""
    if task == "agci_pope":  # LLaVA's rule; yes_ratio over the answers
        for s in samples:
            assert all(s[m] == s["accuracy"] for m in METRICS[task]), s
            assert s["accuracy"] == {"answer": scoring.pope_answer(s["filtered_resps"]), "truth": s["target"]}, s
        pairs = [(s["accuracy"]["answer"], s["accuracy"]["truth"]) for s in samples]
        tp, fp, fn = _yes_no_counts(pairs)
        p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        return {"accuracy": _mean(a == t for a, t in pairs), "precision": p, "recall": r,
                "f1": _ratio(2 * p * r, p + r), "yes_ratio": _mean(a == "yes" for a, _ in pairs)}  # fmt: skip
    if task == "pope":  # lmms-eval's: the exact word; yes_ratio over the ground truth
        records = [s["pope_accuracy"] for s in samples]
        for s, rec in zip(samples, records, strict=True):
            assert all(s[m] == rec for m in METRICS[task]), s
            assert rec["prediction"] == s["filtered_resps"].lower().strip() and rec["ground_truth"] == s["target"]
            assert rec["score"] == float(rec["prediction"] == rec["ground_truth"]), rec
        tp, fp, fn = _yes_no_counts((rec["prediction"], rec["ground_truth"]) for rec in records)
        p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        return {"pope_accuracy": _mean(rec["score"] for rec in records), "pope_precision": p, "pope_recall": r,
                "pope_f1_score": _ratio(2 * p * r, p + r),
                "pope_yes_ratio": _mean(rec["ground_truth"] == "yes" for rec in records)}  # fmt: skip
    if task.startswith("agci_crpe_"):  # circular: a question counts when all 4 rotations are right
        blocks: dict[int, list[bool]] = {}
        for s in samples:
            rec = s["circular_accuracy"]
            correct = scoring.crpe_choice(s["filtered_resps"], s["input"]) == s["target"]
            assert rec == {"block": s["doc_id"] // 4, "correct": correct} and s["accuracy"] == float(correct), s
            blocks.setdefault(rec["block"], []).append(correct)
        assert all(len(v) == 4 for v in blocks.values()), blocks
        return {"circular_accuracy": _all_right_share(blocks), "accuracy": _mean(s["accuracy"] for s in samples)}
    if task == "agci_hallusion_bench_image_offline":
        figures: dict[tuple, list[bool]] = {}
        questions: dict[tuple, list[bool]] = {}
        for s in samples:
            rec = s["aAcc"]
            assert s["fAcc"] == s["qAcc"] == rec, s
            answer, truth = scoring.yes_no(s["filtered_resps"]), "yes" if s["target"] == "1" else "no"
            assert (rec["answer"], rec["truth"], rec["correct"]) == (answer, truth, answer == truth), s
            where = (rec["category"], rec["subcategory"], rec["set_id"])
            if not (rec["category"] == "VS" and rec["figure_id"] == "0"):  # VS questions without a figure
                figures.setdefault((*where, rec["figure_id"]), []).append(rec["correct"])
            questions.setdefault((*where, rec["question_id"]), []).append(rec["correct"])
        return {"aAcc": 100 * _mean(s["aAcc"]["correct"] for s in samples), "fAcc": 100 * _all_right_share(figures),
                "qAcc": 100 * _all_right_share(questions)}  # fmt: skip
    if task in ("mmmu_pro_standard", "agci_mmmu_pro_standard_4"):
        assert all(s["mmmu_acc"]["answer"] == s["target"] for s in samples)
        return {"mmmu_acc": _mean(s["mmmu_acc"]["parsed_pred"] == s["mmmu_acc"]["answer"] for s in samples)}
    if task in ("textvqa_val", "scienceqa_img"):
        return {"exact_match": _mean(s["exact_match"] for s in samples)}
    raise AssertionError(f"no recomputation for {task}")


def _assert_metrics_follow_from_samples(out: Path, tasks: list[str]) -> None:
    """Every metric of every task (names and values) in the results file equals its recomputation from the
    per-sample log, which holds one entry per document."""
    files = sorted(out.glob("*/*_results.json"))
    assert files, f"no results under {out}"
    report = json.loads(files[-1].read_text())
    for task in tasks:
        name = task + suite.LOCAL_SUFFIX
        logged = list(out.glob(f"*/*_samples_{name}.jsonl"))
        assert len(logged) == 1, (name, logged)
        samples = sorted((json.loads(line) for line in logged[0].read_text().splitlines()), key=lambda s: s["doc_id"])
        assert [s["doc_id"] for s in samples] == list(range(report["n-samples"][name]["effective"])), name
        reported = {k.split(",")[0]: v for k, v in report["results"][name].items()  # textvqa submission: None
                    if k.endswith(",none") and "_stderr" not in k and v is not None}  # fmt: skip
        expected = _recompute(task, samples)
        assert set(reported) == set(expected) == METRICS[task], (task, reported)
        for metric, value in expected.items():
            assert reported[metric] == pytest.approx(value, abs=1e-4), (task, metric, reported[metric], value)


def test_lmms_eval_command_runs_every_task_with_the_lambda(tmp_path, tiny_qwen):
    sys.path.insert(0, str(HERE))
    from eval_fixtures import write_benchmarks

    data = write_benchmarks(tmp_path / "data")
    tasks = list(METRICS)
    names = suite.write_local_tasks(data, tmp_path / "tasks", tasks)
    trace = tmp_path / "trace.txt"
    command = _lmms_eval() + [
        "--model", "agci_qwen2_5_vl",
        "--model_args", f"pretrained={tiny_qwen},global_context_broadcast_lambda=0.75,max_new_tokens=4",
        "--tasks", ",".join(names), "--include_path", str(tmp_path / "tasks"), "--batch_size", "3",
        "--output_path", str(tmp_path / "out"), "--log_samples",
    ]  # fmt: skip
    run = subprocess.run(command, env=_env(tmp_path, trace), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_metrics_follow_from_samples(tmp_path / "out", tasks)
    sample_files = list((tmp_path / "out").glob("*/*_samples_*.jsonl"))
    assert len(sample_files) == len(tasks) and set(injected(trace)) == {0.75}


# The real lmms-eval command costs about half a minute per family on the 2-core CI machine, so it runs for the
# first six families and one of each later kind (crops per sample, patch positions, MoE text model): the rows
# with lmms_eval_command; every family runs the same model class in process
# (test_batched_answers_equal_single_answers above).
@pytest.mark.parametrize("model_type", [f for f in FAMILIES if CASES[f].lmms_eval_command])
def test_lmms_eval_command_for_each_family(model_type, tmp_path, tiny):
    sys.path.insert(0, str(HERE))
    from eval_fixtures import write_benchmarks

    names = suite.write_local_tasks(write_benchmarks(tmp_path / "data"), tmp_path / "tasks", ["agci_pope", "pope"])
    trace = tmp_path / "trace.txt"
    name = _model_class(model_type).model_name
    command = _lmms_eval() + [
        "--model", name, "--model_args", f"pretrained={tiny(model_type)},max_new_tokens=3",
        "--tasks", ",".join(names), "--include_path", str(tmp_path / "tasks"), "--batch_size", "4",
        "--output_path", str(tmp_path / "out"), "--log_samples",
    ]  # fmt: skip
    run = subprocess.run(command, env=_env(tmp_path, trace), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_metrics_follow_from_samples(tmp_path / "out", ["agci_pope", "pope"])
    assert set(injected(trace)) == {0.3}  # the checkpoint's value, no override


def test_agci_eval_compares_lambdas_and_resumes(tmp_path):
    sys.path.insert(0, str(HERE))
    from eval_fixtures import write_benchmarks

    write_benchmarks(tmp_path / "data")
    trace = tmp_path / "trace.txt"
    out = tmp_path / "eval"
    command = [str(Path(sys.executable).parent / "agci"), "eval", str(TINY_LLAVA), "--data", str(tmp_path / "data"),
               "--out", str(out), "--lambda", "0.1234567", "--tasks", "agci_pope,agci_crpe", "--batch-size", "2",
               "--model-args", "max_new_tokens=4"]  # fmt: skip
    run = subprocess.run(command, env=_env(tmp_path, trace), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["model"] == "agci_llava" and summary["lambdas"] == [0.0, 0.1234567]
    tasks = {r["task"] for r in summary["rows"]}
    assert tasks == {"agci_pope", "agci_crpe_exist", "agci_crpe_subject", "agci_crpe_predicate", "agci_crpe_object"}
    for row in summary["rows"]:
        assert set(row["values"]) == {"lambda_0", "lambda_0.1234567"}
        delta = row["values"]["lambda_0.1234567"] - row["values"]["lambda_0"]
        assert row["deltas"]["lambda_0.1234567"] == pytest.approx(delta)
    assert (out / "comparison.png").stat().st_size > 0 and "| agci_pope | accuracy |" in (
        out / "comparison.md"
    ).read_text()
    # lambda 0 never injects; the other reaches lmms-eval's process exactly (not rounded to 0.123457)
    assert set(injected(trace)) == {0.1234567}
    again = subprocess.run(command, env=_env(tmp_path, trace), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("skipped") == 2
    # results of this run are never reused for other tasks, another checkpoint or other model arguments
    other = tmp_path / "other-checkpoint"
    shutil.copytree(TINY_LLAVA, other)
    config = json.loads((other / "config.json").read_text())
    config["global_context_broadcast_lambda"] = 0.75
    (other / "config.json").write_text(json.dumps(config))
    before = (out / "comparison.json").read_text()
    for changed, named in (
        (["--tasks", "agci_pope"], "tasks"),
        ([str(other)], "model_config"),
        (["--model-args", "max_new_tokens=8"], "model_args.max_new_tokens"),
    ):
        argv = list(command)
        if changed[0].startswith("--"):
            argv[argv.index(changed[0]) + 1] = changed[1]
        else:
            argv[2] = changed[0]
        refused = subprocess.run(argv, env=_env(tmp_path, trace), capture_output=True, text=True, timeout=600)
        assert refused.returncode == 2 and named in refused.stderr and "--force" in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1 and "lmms_eval" not in refused.stdout
    assert (out / "comparison.json").read_text() == before


def test_agci_eval_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'popee'"):
        suite.expand_tasks(["popee"])
    assert suite.expand_tasks(["agci_paper"]) == suite.PAPER_SUITE
    with pytest.raises(FileNotFoundError, match="lmms-lab-encoder/POPE"):
        suite.write_local_tasks(tmp_path, tmp_path / "tasks", ["agci_pope"])
    from agci.cli import main

    assert main(["eval", str(TINY_LLAVA), "--lambda", "0.5", "--tasks", "nope", "--out", str(tmp_path / "o")]) == 2


def test_agci_eval_engine_vllm_is_refused_in_one_line_where_it_cannot_run(tmp_path, capsys):
    """--engine vllm without vLLM installed, or with --lmms-model (an agci transformers model): exit 2, one line,
    nothing written. tests/test_vllm_entrypoints.py runs the engine itself, in .venv-vllm."""
    from agci.cli import main

    out = tmp_path / "o"
    assert main(["eval", str(TINY_LLAVA), "--engine", "vllm", "--lmms-model", "agci_llava", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "leave --lmms-model out" in err and err.count("\n") == 1
    if importlib.util.find_spec("vllm") is None:
        assert main(["eval", str(TINY_LLAVA), "--engine", "vllm", "--tasks", "agci_pope", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--engine vllm needs vLLM beside agci: pip install vllm" in err and err.count("\n") == 1
    assert not out.exists()


def test_agci_eval_checks_the_model_and_its_arguments_before_lmms_eval_starts(tmp_path):
    """lmms-eval exits 0 after refusing a model, so agci eval checks first: one line, exit 2, nothing written."""
    from agci.runs import RunFolder

    agci = str(Path(sys.executable).parent / "agci")
    cases = [
        (["--model-args", "lamda=0.5"], "unknown model_args ['lamda']"),
        (["--model-args", "dtype=float8"], "dtype must be one of"),
        (["--model-args", "max_new_tokens"], "key=value pairs"),
        (["--model-args", "global_context_broadcast_lambda=abc"], "give lambdas with --lambda"),
        (["--lmms-model", "agci_qwen2_5_vl"], "use agci_llava"),
        (["--lmms-model", "agci_nope"], "not an agci model"),
    ]
    for extra, message in cases:
        run = subprocess.run([agci, "eval", str(TINY_LLAVA), "--out", str(tmp_path / "o"), "--tasks", "agci_pope",
                              *extra], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 2 and message in run.stderr and run.stderr.count("\n") == 1, (extra, run.stderr)
        assert "Traceback" not in run.stderr and not (tmp_path / "o").exists()
    run = subprocess.run([agci, "eval", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "does not exist" in run.stderr and not (tmp_path / "o").exists()
    with RunFolder(tmp_path / "held", "eval", {}, outputs=[]):
        run = subprocess.run([agci, "eval", str(TINY_LLAVA), "--out", str(tmp_path / "held"), "--tasks", "agci_pope"],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2 and f"in use by another agci run (pid {os.getpid()}" in run.stderr, run.stderr


def test_task_yamls_index_in_lmms_eval():
    """The hub-backed tasks and groups load in lmms-eval's task index (their data is not fetched here)."""
    from lmms_eval.tasks import TaskManager

    manager = TaskManager("ERROR", include_path=str(TASKS_DIR))
    assert {"agci_paper", "agci_crpe"} <= set(manager.all_groups)
    ours = {b.task for b in suite.BENCHMARKS if b.task.startswith("agci_")}
    assert ours <= set(manager.all_subtasks)
    for name in ours:  # each YAML parses with its functions resolved
        config = manager._get_config(name)
        assert callable(config["process_results"]) and callable(config["doc_to_visual"]), name


def test_two_processes_share_the_documents(tmp_path, tiny_qwen):
    """torchrun with 2 CPU processes: each answers half of the documents, the results hold all of them."""
    sys.path.insert(0, str(HERE))
    from eval_fixtures import write_benchmarks

    names = suite.write_local_tasks(write_benchmarks(tmp_path / "data"), tmp_path / "tasks", ["agci_pope"])
    torchrun = str(Path(sys.executable).parent / "torchrun")
    command = [torchrun, "--nproc_per_node", "2", "-m", "lmms_eval", "--model", "agci_qwen2_5_vl",
               "--model_args", f"pretrained={tiny_qwen},max_new_tokens=3", "--tasks", names[0],
               "--include_path", str(tmp_path / "tasks"), "--output_path", str(tmp_path / "out"),
               "--log_samples"]  # fmt: skip
    run = subprocess.run(
        command, env=_env(tmp_path, tmp_path / "trace.txt"), capture_output=True, text=True, timeout=600
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0 and "Running on rank 1" in log, log[-3000:]
    assert "answering: 100%|██████████| 2/2" in log  # rank 0's bar: 2 of the 4 documents
    samples = [json.loads(line) for f in (tmp_path / "out").glob("*/*_samples_*.jsonl") for line in open(f)]
    assert sorted(s["doc_id"] for s in samples) == [0, 1, 2, 3]


def test_loglikelihood_scores_the_greedy_answer_highest(tiny_qwen):
    from lmms_eval.api.instance import Instance
    from PIL import Image

    from agci.eval.lmms_model import AGCI_qwen2_5_vl

    model = AGCI_qwen2_5_vl(pretrained=str(tiny_qwen), global_context_broadcast_lambda=1.0, device="cpu")
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    model.task_dict = {"t": {"test": [{"image": image}]}}
    context = "Is there a dog in the image?"
    greedy = model._generate([context], [[image]], {"max_new_tokens": 3})[0]
    other = " ".join("cat" if w != "cat" else "dog" for w in greedy.split())

    def request(continuation):
        args = (context, continuation, lambda doc: [doc["image"]], 0, "t", "test")
        meta = {"task": "t", "doc_id": 0, "repeats": 1}
        return Instance(request_type="loglikelihood", arguments=args, idx=0, metadata=meta)

    (lp_greedy, is_greedy), (lp_other, other_greedy) = model.loglikelihood([request(greedy), request(other)])
    assert is_greedy and not other_greedy
    assert lp_other < lp_greedy < 0
