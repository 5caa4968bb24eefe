"""Nothing wrong in silence (issue 28): a resume that notices what changed (weights, images, an adapter's
base), data that means something else (answers, positions, an adapter's lambda), and errors that are one
line, exit code 2, and leave no claim on the output folder behind. Real files, the embedded tiny LLaVA,
real PEFT."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agci.bias.probe_sets import POSITIONS, SetOptions, build, normalise_record, read_records
from agci.bias.runner import ProbeConfig, run_probe
from agci.bias.shipped import ASSET_DIR
from agci.cli import main
from agci.fingerprints import content_digests, model_fingerprint
from agci.runs import RECORD, RunFolder, RunRefused


@pytest.fixture(scope="module")
def probe_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("silent") / "set"
    build(
        folder,
        SetOptions(source="synthetic:10", seed=1, canvas=126, negatives_per_pair=1, similarity=False),
        progress=False,
    )
    return folder


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AGCI_CACHE_DIR", str(tmp_path / "cache"))


def _probe(out: Path, data: Path, **kw) -> dict:
    cfg = dict(data=str(data), out=str(out), lambdas=[0.0], tasks=("position",), adapters=(), limit=2,
               progress=False)  # fmt: skip
    return run_probe(ProbeConfig(**{**cfg, **kw}))


def _one_line_refusal(argv: list[str], capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("agci"), err
    return lines[0]


# -- 1. a resume that trusts what changed --------------------------------------------------------------------


def _rewrite_weights_same_size(ckpt: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = ckpt / "model.safetensors"
    size = path.stat().st_size
    tensors = load_file(path)
    for name in tensors:
        if tensors[name].is_floating_point():
            tensors[name] = tensors[name].flip(0)  # the same shapes and dtypes, other values
    save_file(tensors, path, metadata={"format": "pt"})
    assert path.stat().st_size == size


def test_weights_rewritten_at_the_same_size_are_noticed_and_the_digest_is_cached(tmp_path, probe_set, monkeypatch):
    """Before: a checkpoint re-saved with other weights of the same names and sizes resumed the old rows."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ASSET_DIR, ckpt)
    _probe(tmp_path / "out", probe_set, model=str(ckpt))
    _rewrite_weights_same_size(ckpt)
    with pytest.raises(RunRefused, match=r"model_weights: .* then, .* now"):
        _probe(tmp_path / "out", probe_set, model=str(ckpt))
    # the digest is read from the cache while the file's size and times are unchanged
    import agci.fingerprints

    reads = []
    real = agci.fingerprints._content_digest
    monkeypatch.setattr(agci.fingerprints, "_content_digest", lambda p: reads.append(p) or real(p))
    first = model_fingerprint(ckpt)
    assert model_fingerprint(ckpt) == first and reads == []
    (ckpt / "model.safetensors").touch()  # a new mtime: read again, same bytes, same fingerprint
    assert model_fingerprint(ckpt) == first and len(reads) == 1


def test_content_digests_tell_files_of_the_same_size_apart_and_survive_a_broken_cache(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 1000)
    b.write_bytes(b"y" * 1000)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "file-digests.json").write_text("{not json")
    found = content_digests([a, b, tmp_path / "absent.bin"])
    assert found[str(a)] != found[str(b)] and found[str(tmp_path / "absent.bin")] is None
    b.write_bytes(b"x" * 1000)
    assert content_digests([b])[str(b)] == found[str(a)]


def test_an_image_overwritten_after_a_run_is_noticed(tmp_path, probe_set):
    """Before: `agci probe --data` kept the rows of an image that was overwritten after the first run."""
    data = tmp_path / "set"
    shutil.copytree(probe_set, data)
    _probe(tmp_path / "out", data)
    first = read_records(data / "position.jsonl")[0]
    from PIL import Image

    Image.new("RGB", (126, 126), "black").save(data / first["image"])
    with pytest.raises(RunRefused, match=r"images: .* then, .* now"):
        _probe(tmp_path / "out", data)


def _text_only_adapter(tmp_path: Path) -> Path:
    """A LoRA adapter trained on a tiny text-only Llama (real classes), saved as PEFT saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    base = tmp_path / "text-llama"
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(base)
    model = LlamaForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_an_adapter_trained_on_another_base_is_refused_naming_both(tmp_path, probe_set, capsys):
    """Before: PEFT's missing-keys warning scrolled by and rows of a half-loaded adapter were written."""
    adapter = _text_only_adapter(tmp_path)
    out = tmp_path / "out"
    line = _one_line_refusal(["probe", "--data", str(probe_set), "--adapter", str(adapter), "--limit", "2",
                              "--tasks", "position", "--out", str(out)], capsys)  # fmt: skip
    assert "(llama)" in line and "(llava)" in line and "text-llama" in line, line
    assert not out.exists()
    # the base named by a hub id cannot be read offline: the weights that do not land are caught on loading,
    # and the claim on the folder is undone, so the corrected command just runs
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "someone/llm"}))
    line = _one_line_refusal(["probe", "--data", str(probe_set), "--adapter", str(adapter), "--limit", "2",
                              "--tasks", "position", "--lambda", "0", "--out", str(out)], capsys)  # fmt: skip
    assert "does not fit the model" in line and "missing" in line, line
    assert not out.exists()
    assert _probe(out, probe_set) is not None


# -- 4. data that means something else ------------------------------------------------------------------------


def _records_file(tmp_path: Path, probe_set: Path, edit) -> Path:
    rows = [json.loads(line) for line in (probe_set / "position.jsonl").read_text().splitlines()][:4]
    for row in rows:
        row["image"] = str(probe_set / row["image"])
        row.pop("cell", None)
        row.pop("id", None)
    edit(rows)
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_answers_are_read_in_any_case_and_spacing(tmp_path, probe_set):
    """Before: an answer "yes" never counted as a positive and was always wrong."""

    def lower(rows):
        for row in rows:
            row["answer"] = {"Yes": " yes", "No": "NO "}[row["answer"]]

    path = _records_file(tmp_path, probe_set, lower)
    records = read_records(path)
    assert {r["answer"] for r in records} <= {"Yes", "No"} and any(r["answer"] == "Yes" for r in records)
    summary = _probe(tmp_path / "out", path, limit=4)
    rows = [json.loads(x) for x in (tmp_path / "out" / "lambda_0" / "position.jsonl").read_text().splitlines()]
    assert summary["lambdas"]["0"]["position"]["accuracy"] == sum(r["prediction"] == r["answer"] for r in rows) / 4
    position = summary["lambdas"]["0"]["position"]
    positives = sum(r["answer"] == "Yes" for r in rows)
    assert sum(position["positive_count_per_cell"]) == positives > 0  # they count as positives
    assert sum(position["positive_count_per_cell"]) + sum(position["negative_count_per_cell"]) == 4


@settings(max_examples=200, deadline=None)
@given(answer=st.one_of(st.text(max_size=8), st.sampled_from(["yes", "no", "Yes", " YES ", "nO\t", "y", "true"])),
       position=st.one_of(st.text(max_size=12), st.sampled_from([*POSITIONS, "Top Left", "bottom-right", "centre",
                                                                  " CENTER ", "middle", "top__left"])))  # fmt: skip
def test_a_record_is_read_as_it_says_or_refused(answer, position):
    """Any answer and position: read as yes/no and one of the nine cells when that is what they say (case,
    spacing, hyphens aside), otherwise refused naming the place."""
    said = answer.strip().lower()
    name = "_".join(position.strip().lower().replace("-", " ").split())
    name = {"centre": "center"}.get(name, name)
    row = {"image": "a.png", "caption": "c", "answer": answer, "position": position}
    if said in ("yes", "no") and name in POSITIONS:
        got = normalise_record(row, "f.jsonl:7")
        assert got["answer"] == said.capitalize() and got["cell"] == POSITIONS.index(name)
    else:
        with pytest.raises(ValueError, match=r"^f\.jsonl:7: (answer|position) "):
            normalise_record(row, "f.jsonl:7")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("answer", "maybe", 'answer "maybe" is neither yes nor no'), ("answer", True, "answer true is neither"),
     ("position", "middle", 'position "middle" is not one of top_left'), ("cell", 9, "cell 9 is not a whole number")],
)  # fmt: skip
def test_a_record_that_says_something_else_is_refused_by_file_and_line_before_scoring(
    tmp_path, probe_set, capsys, field, value, message
):
    """Before: a position "middle" was found only after every record was scored (KeyError: 'cell')."""

    def spoil(rows):
        rows[2][field] = value

    path = _records_file(tmp_path, probe_set, spoil)
    out = tmp_path / "out"
    line = _one_line_refusal(["probe", "--data", str(path), "--out", str(out)], capsys)
    assert f"{path}:3: {message}" in line, line
    assert not out.exists()


@pytest.mark.parametrize("record", ['{"global_context_broadcast_lambda": "0.5"}', "[0.5]", '{"global_c'])
def test_an_adapter_lambda_that_is_not_a_number_names_the_file(tmp_path, probe_set, capsys, record):
    """Before: a lambda written as a string ended in a TypeError that did not name the file."""
    adapter = tmp_path / "ft"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "agci-adapter.json").write_text(record)
    line = _one_line_refusal(["probe", "--data", str(probe_set), "--adapter", str(adapter), "--out",
                              str(tmp_path / "out")], capsys)  # fmt: skip
    assert str(adapter / "agci-adapter.json") in line and "fix or delete the file" in line, line


# -- 5. errors that end in a traceback, or leave a claim behind -----------------------------------------------


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--device", "cuda"], "--device: cuda: this machine has no cuda device; use --device cpu"),
     (["--device", "gpu0"], "--device: 'gpu0' is not a device"),
     (["--dtype", "float8"], "--dtype: 'float8' is not one of auto, float32")],
)  # fmt: skip
def test_a_device_or_dtype_this_machine_cannot_use_is_refused_before_the_folder_is_claimed(
    tmp_path, probe_set, capsys, option, message
):
    """Before: a 36-line traceback, and agci-run.json left behind (blocking the corrected command)."""
    if option[1] == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    line = _one_line_refusal(["probe", "--data", str(probe_set), *option, "--out", str(out)], capsys)
    assert message in line, line
    assert not out.exists()
    with pytest.raises(ValueError, match=option[0].lstrip("-")):
        ProbeConfig(data=str(probe_set), out=str(out), **{option[0].lstrip("-"): option[1]})


def test_a_failure_after_the_claim_leaves_the_folder_as_it_was(tmp_path):
    """A run that fails before writing a result removes its record (and the folder it created); a folder
    that holds results keeps them and their record."""
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), RunFolder(out, "k", {"model": "a"}, outputs=["rows*"]):
        raise RuntimeError("the model did not load")
    assert not out.exists()
    with RunFolder(out, "k", {"model": "a"}, outputs=["rows*"]):
        (out / "rows.jsonl").write_text("{}\n")
    with pytest.raises(RuntimeError), RunFolder(out, "k", {"model": "a"}, outputs=["rows*"]):
        raise RuntimeError("interrupted later")
    assert json.loads((out / RECORD).read_text())["runs"]["k"]["fingerprint"] == {"model": "a"}
    # a record whose run wrote nothing does not block a run with other inputs
    (out / "rows.jsonl").unlink()
    with RunFolder(out, "k", {"model": "b"}, outputs=["rows*"]):
        pass


@pytest.fixture
def immutable(tmp_path):
    folder = tmp_path / "immutable"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_an_out_that_cannot_be_written_is_one_line(tmp_path, probe_set, capsys, immutable):
    """Before: a traceback (a path under a file, a folder that cannot be written even by root)."""
    (tmp_path / "afile").write_text("a file")
    under_file = str(tmp_path / "afile" / "out")
    cases = [
        (["probe", "--data", str(probe_set), "--out", under_file], "a part of its path is a file"),
        (["probe", "--data", str(probe_set), "--out", str(immutable)], "cannot be written (Operation not permitted)"),
        (["probe", "--data", str(probe_set), "--out", str(immutable / "sub")], "cannot be written"),
        (["probe-set", str(immutable / "set"), "--source", "synthetic:10"], "cannot be written"),
        (["eval", str(ASSET_DIR), "--tasks", "agci_pope", "--out", under_file], "a part of its path is a file"),
        (["eval", str(ASSET_DIR), "--tasks", "agci_pope", "--out", str(immutable)], "cannot be written"),
        (["demo", "--out", str(immutable)], "cannot be written"),
    ]
    for argv, message in cases:
        assert message in _one_line_refusal(argv, capsys), argv
    assert (tmp_path / "afile").read_text() == "a file" and not any(immutable.iterdir())


def test_eval_without_lmms_eval_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # what `import lmms_eval` meets when it is not installed
    line = _one_line_refusal(["eval", str(ASSET_DIR), "--out", str(tmp_path / "out")], capsys)
    assert "lmms-eval is not installed" in line and "pip install 'agci[eval]'" in line, line
    assert not (tmp_path / "out").exists()


def test_info_under_a_bad_agci_impl_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("AGCI_IMPL", "fastest")
    line = _one_line_refusal(["info"], capsys)
    assert "AGCI_IMPL must be one of" in line and "unset it" in line, line


def test_ctrl_c_says_it_was_interrupted_and_the_rerun_resumes(tmp_path, probe_set):
    """Before: a KeyboardInterrupt traceback."""
    argv = [sys.executable, "-m", "agci", "probe", "--data", str(probe_set), "--tasks", "position", "--lambda", "0",
            "--batch-size", "1", "--prefetch", "0", "--limit", "100", "--adapter", "none", "--out", "out"]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1", "AGCI_CACHE_DIR": str(tmp_path / "cache")}
    rows = tmp_path / "out" / "lambda_0" / "position.jsonl"
    # Ctrl-C as a terminal sends it: to a process that has SIGINT's default action (a child inherits "ignored" from
    # this process, where some library of an earlier test may have set it; Python then never raises
    # KeyboardInterrupt, and the probe runs to its end)
    run = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 120
    while not (rows.is_file() and rows.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "agci probe: interrupted; what was written is kept, and rerunning the same command resumes"
    kept = rows.read_text().count("\n")
    again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert rows.read_text().count("\n") == 100 > kept
