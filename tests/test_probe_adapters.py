"""``agci probe --adapter``: PEFT adapters probed next to their base, the shipped LoRA adapters of the demo
(with and without AGCI), and the statistics that compare two seeded settings."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agci.bias.adapters import AdapterSwitch, probed_models
from agci.bias.metrics import compare_settings, paired_t_test, sign_test
from agci.bias.probe_sets import SetOptions, build
from agci.bias.runner import ProbeConfig, model_lambdas, run_probe, shipped_adapters
from agci.bias.shipped import ADAPTER_DIR, ADAPTER_RECORD
from agci.bias.training.lora import adapter_name
from agci.runs import RunRefused

sys.path.insert(0, str(Path(__file__).parent))


def _agci(*args, cwd):
    env = dict(os.environ, TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-m", "agci", *args], cwd=cwd, capture_output=True, text=True, env=env)


def _save_adapter(model, out: Path, seed: int, lam: float | None = None, targets=("q_proj", "v_proj")) -> Path:
    """A random LoRA adapter (B not zero, so it changes the model) saved as PEFT saves one."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=list(targets), init_lora_weights=False))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    peft.save_pretrained(out)
    if lam is not None:
        (out / ADAPTER_RECORD).write_text(json.dumps({"global_context_broadcast_lambda": lam}))
    return out


@pytest.fixture(scope="module")
def probe_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe") / "set"
    build(folder, SetOptions(source="synthetic:10", seed=3), progress=False)
    return folder


def _rows(path: Path) -> dict:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_adapters_are_probed_next_to_the_base_on_a_family_checkpoint(tmp_path, probe_set):
    """--adapter on a supported checkpoint (Qwen2.5-VL, its real processor): the base rows equal a run without
    adapters, each adapter's rows differ from the base's, every model sits at the lambda it was trained with,
    and a rerun resumes (nothing rescored) while other adapters are refused."""
    from tiny_checkpoints import save_tiny
    from transformers import AutoModelForImageTextToText

    ckpt = save_tiny("qwen2_5_vl", tmp_path / "ckpt", lam=0.0)
    stock = AutoModelForImageTextToText.from_pretrained(ckpt)
    a = _save_adapter(stock, tmp_path / "ft-seed0", 0, lam=0.5)
    b = _save_adapter(stock, tmp_path / "ft-seed1", 1)  # no record: probed at the checkpoint's lambda
    common = dict(model=str(ckpt), data=str(probe_set), limit=9, batch_size=4, tasks=("position", "occlusion"),
                  occlusion_samples=1, mask=420, max_new_tokens=2, progress=False)  # fmt: skip
    alone = run_probe(ProbeConfig(**common, out=str(tmp_path / "alone"), lambdas=[0.0]))
    out = tmp_path / "with"
    summary = run_probe(ProbeConfig(**common, out=str(out), adapters=(str(a), str(b))))
    assert set(summary["models"]) == {"base", "ft-seed0", "ft-seed1"}
    assert {k: list(v["lambdas"]) for k, v in summary["models"].items()} == {
        "base": ["0"], "ft-seed0": ["0.5"], "ft-seed1": ["0"]}  # fmt: skip
    assert summary["models"]["ft-seed0"]["trained_lambda"] == 0.5
    base = _rows(out / "base" / "lambda_0" / "position.jsonl")
    assert base == _rows(tmp_path / "alone" / "lambda_0" / "position.jsonl")  # adapters off: the base model
    assert _rows(out / "base" / "lambda_0" / "occlusion.jsonl") == _rows(
        tmp_path / "alone" / "lambda_0" / "occlusion.jsonl"
    )
    for label, lam in (("ft-seed0", "0.5"), ("ft-seed1", "0")):
        rows = _rows(out / label / f"lambda_{lam}" / "position.jsonl")
        assert rows.keys() == base.keys()
        assert any(abs(rows[i]["p_yes"] - base[i]["p_yes"]) > 1e-3 for i in rows), label  # the adapter is on
    assert alone["lambdas"]["0"]["position"]["scored"] == 9
    for name in ("position_accuracy", "yes_rate", "occlusion_maps"):
        assert Path(summary["figures"][name]).is_file()
    before = (out / "ft-seed0" / "lambda_0.5" / "position.jsonl").read_text()
    again = run_probe(ProbeConfig(**common, out=str(out), adapters=(str(a), str(b))))
    assert (out / "ft-seed0" / "lambda_0.5" / "position.jsonl").read_text() == before  # resumed, nothing rescored
    assert again["models"]["ft-seed1"] == summary["models"]["ft-seed1"]
    c = _save_adapter(stock, tmp_path / "other" / "ft-seed1", 2)
    with pytest.raises(RunRefused, match="adapters.ft-seed1"):  # another adapter under the same name: other rows
        run_probe(ProbeConfig(**common, out=str(out), adapters=(str(a), str(c))))


def test_adapter_errors_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _agci("probe", "--adapter", str(tmp_path / "empty"), "--out", "o", cwd=tmp_path)
    assert result.returncode == 2 and "no adapter_config.json" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()
    for name in ("x", "y"):
        (tmp_path / name / "ft").mkdir(parents=True)
        (tmp_path / name / "ft" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="two adapters are named 'ft'"):
        probed_models([tmp_path / "x" / "ft", tmp_path / "y" / "ft"])
    (tmp_path / "x" / "ft" / ADAPTER_RECORD).write_text('{"global_context_broadcast_lambda": -1}')
    with pytest.raises(ValueError, match="fix or delete the file"):
        probed_models([tmp_path / "x" / "ft"])


def test_the_lambdas_of_each_model():
    models = probed_models([])
    assert model_lambdas(None, models, 0.0) == {"base": [0.0, 0.5]}  # the base alone: 0 and its value or 0.5
    assert model_lambdas(None, models, 0.25) == {"base": [0.0, 0.25]}
    assert model_lambdas([0.0, 1.0], models, 0.25) == {"base": [0.0, 1.0]}


def test_seeds_of_a_setting_share_its_name():
    from agci.bias.adapters import ProbedModel

    m = ProbedModel("lora-lambda0.5-seed12", Path("x"), 0.5)
    assert (m.setting, m.seed) == ("lora-lambda0.5", 12)
    assert (ProbedModel("plain", None, None).setting, ProbedModel("plain", None, None).seed) == ("plain", None)
    assert adapter_name(0.5, 2) == "lora-lambda0.5-seed2" and adapter_name(0.0, 0) == "lora-lambda0-seed0"


def test_paired_t_test_matches_the_closed_forms():
    # two-sided p of Student's t: df 1, 1 - 2 atan(|t|) / pi; df 2, 1 - |t| / sqrt(t^2 + 2)
    r = paired_t_test([1.0, 2.0, 3.0])  # mean 2, sd 1, t = 2 sqrt(3)
    assert r["t"] == pytest.approx(2 * math.sqrt(3)) and r["mean_difference"] == 2.0
    assert r["p_value"] == pytest.approx(1 - r["t"] / math.sqrt(r["t"] ** 2 + 2), rel=1e-9)
    r = paired_t_test([0.1, 0.7])
    assert r["p_value"] == pytest.approx(1 - 2 * math.atan(abs(r["t"])) / math.pi, rel=1e-9)
    r = paired_t_test([-0.3, 0.1, 0.4, 0.2, -0.1, 0.3])  # df 5: against the t density integrated numerically
    df, t = 5, r["t"]
    density = math.gamma(3) / (math.sqrt(5 * math.pi) * math.gamma(2.5))
    steps = 20000
    inside = sum((1 + ((i + 0.5) * t / steps) ** 2 / df) ** -3 for i in range(steps)) * t / steps * density
    assert r["p_value"] == pytest.approx(1 - 2 * inside, abs=1e-7), r
    assert paired_t_test([0.2])["p_value"] is None and paired_t_test([0.0, 0.0])["p_value"] == 1.0


def test_sign_test_is_the_exact_binomial():
    r = sign_test([0.1, 0.2, 0.3, 0.4, 0.5, -0.1, 0.0])
    assert (r["higher"], r["lower"], r["ties"]) == (5, 1, 1)
    assert r["p_value"] == pytest.approx(2 * (1 + 6) / 64)
    assert sign_test([0.1] * 10)["p_value"] == pytest.approx(2 / 1024) and sign_test([])["p_value"] == 1.0


def test_compare_settings_pairs_seeds_and_cells():
    def position(cells, accuracy):
        known = [c for c in cells if c is not None]
        return {"accuracy": accuracy, "positive_accuracy_per_cell": cells,
                "bias": {"spread": max(known) - min(known), "std": 0.0, "centre_minus_border": cells[4] - 0.5},
                "position_test": {"p_value": 0.01}}  # fmt: skip

    first = {0: position([0.5] * 4 + [1.0] + [0.5] * 4, 0.6), 1: position([0.4] * 4 + [0.9] + [0.4] * 4, 0.5)}
    second = {0: position([0.6] * 9, 0.6), 1: position([0.5] * 4 + [0.7] + [0.5] * 4, 0.55), 2: position([0.1] * 9, 0)}
    c = compare_settings(first, second)
    assert c["seeds"] == [0, 1]  # seed 2 has no partner
    assert c["paired_over_seeds"]["spread"]["mean_difference"] == pytest.approx((-0.5 - 0.3) / 2)
    assert c["cells"]["sign"]["higher"] == 16 and c["cells"]["sign"]["lower"] == 2
    assert c["per_seed"][1]["second"]["cochran_p"] == 0.01


@pytest.mark.skipif(not shipped_adapters(), reason="no LoRA adapters shipped in agci/bias/assets")
def test_the_shipped_adapters_load_change_the_model_and_reproduce_their_recorded_accuracies(tmp_path):
    """The demo's adapters (python -m agci.bias.training.lora): each loads onto the embedded model and changes its
    answers, and `agci probe` on the demo set gives the per-cell accuracies recorded when they were trained."""
    from PIL import Image

    from agci.bias.model_runs import encode, load_probe_vlm, yes_no_from_inputs

    record = json.loads((ADAPTER_DIR / "results.json").read_text())
    adapters = shipped_adapters()
    assert {p.name for p in adapters} == set(record["models"]) - {"base"}
    assert len({m.seed for m in probed_models(adapters)[1:]}) >= 3  # at least 3 seeds of each setting
    summary = run_probe(ProbeConfig(out=str(tmp_path / "out"), tasks=("position",), progress=False))
    assert set(summary["models"]) == set(record["models"])
    for label, entry in summary["models"].items():
        want = record["models"][label]
        ((lam, tasks),) = entry["lambdas"].items()
        assert lam == want["lambda"], label
        got = tasks["position"]["positive_accuracy_per_cell"]
        # the same samples on another CPU: at most one of a cell's 60 answers may flip on a float rounding
        assert got == pytest.approx(want["positive_accuracy_per_cell"], abs=1 / 60 + 1e-9), label
    assert summary["comparisons"], summary.keys()
    # loaded through PEFT, each adapter changes the embedded model's next-token scores
    vlm = load_probe_vlm(summary["model"])
    models = probed_models(adapters)
    switch = AdapterSwitch(vlm.model, models)
    image = Image.new("RGB", (840, 840), "white")
    inputs = encode(vlm, [image], ["Text: a red circle"])
    with switch.active("base"):
        base = yes_no_from_inputs(vlm, inputs)[0]["p_yes"]
    for m in models[1:]:
        with switch.active(m.label):
            assert abs(yes_no_from_inputs(vlm, inputs)[0]["p_yes"] - base) > 1e-4, m.label
