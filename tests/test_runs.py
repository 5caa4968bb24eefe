"""Output folders that one run owns (agci.runs), and `agci probe` under two runs at once, kills and changed
inputs: the real command in subprocesses on the embedded tiny VLM."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agci.bias.probe_sets import SetOptions, build
from agci.bias.runner import ProbeConfig, run_probe
from agci.bias.shipped import ASSET_DIR
from agci.runs import LOCK, RECORD, RunFolder, RunRefused, save_figure, write_json

# a small probe: position questions and three occlusion maps of 16 squares each, at two lambdas
PROBE_ARGS = ["--tasks", "position,occlusion", "--lambda", "0,0.5", "--limit", "48", "--batch-size", "4",
              "--occlusion-samples", "3", "--mask", "210", "--adapter", "none"]  # fmt: skip


@pytest.fixture(scope="module")
def probe_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "set"
    build(folder, SetOptions(source="synthetic:12", seed=7), progress=False)
    return folder


@pytest.fixture(scope="module")
def reference(probe_set, tmp_path_factory):
    """The rows and summary of one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    cfg = ProbeConfig(data=str(probe_set), out=str(out), tasks=("position", "occlusion"), lambdas=[0.0, 0.5],
                      adapters=(), limit=48, batch_size=4, occlusion_samples=3, mask=210, progress=False)  # fmt: skip
    summary = run_probe(cfg)
    return _rows(out), summary


def _rows(out: Path) -> dict:
    rows = {}
    for path in sorted(out.glob("lambda_*/*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            key = (path.parent.name, path.stem, row["id"])
            assert key not in rows, f"{key} written twice"
            rows[key] = row
    return rows


def _same_rows(rows: dict, expected: dict) -> None:
    assert rows.keys() == expected.keys()
    for key, row in rows.items():
        want = expected[key]
        assert row.get("prediction") == want.get("prediction"), key
        for field in ("p_yes", "base_logprob"):
            if field in want:
                assert row[field] == pytest.approx(want[field], abs=1e-4), key
        if "drops" in want:
            flat = [v for line in row["drops"] for v in line]
            assert flat == pytest.approx([v for line in want["drops"] for v in line], abs=1e-4), key


def _agci(*args: str, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "agci", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _wait_for_lock(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``proc`` holds the folder (its pid in the lock and its record written)."""
    start = time.time()
    while time.time() - start < timeout:
        lock = out / LOCK
        if lock.is_file() and (out / RECORD).is_file() and f'"pid": {proc.pid}' in lock.read_text():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run never took its folder")


# RunFolder itself


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with RunFolder(tmp_path / "o", "k", {"a": 1}, outputs=["*.jsonl"], command="agci first"):
        with pytest.raises(RunRefused, match=f"in use by another agci run \\(pid {os.getpid()} .*`agci first`"):
            with RunFolder(tmp_path / "o", "k", {"a": 1}, outputs=["*.jsonl"]):
                pass
    with RunFolder(tmp_path / "o", "k", {"a": 1}, outputs=["*.jsonl"]):  # released when the block ends
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    code = (
        "import sys, time; from agci.runs import RunFolder\n"
        f"with RunFolder({str(tmp_path / 'o')!r}, 'k', {{}}, outputs=[]):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunRefused, match=f"pid {holder.pid}"):
        RunFolder(tmp_path / "o", "k", {}, outputs=[]).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert f'"pid": {holder.pid}' in (tmp_path / "o" / LOCK).read_text()  # the stale lock file is still there
    with RunFolder(tmp_path / "o", "k", {}, outputs=[]):
        assert f'"pid": {os.getpid()}' in (tmp_path / "o" / LOCK).read_text()


def test_other_inputs_are_refused_naming_what_differs_and_force_starts_over(tmp_path):
    out = tmp_path / "o"
    with RunFolder(out, "k", {"model": "a", "options": {"x": 1, "y": 2}}, outputs=["rows*.jsonl", "sub"]):
        (out / "rows.jsonl").write_text("{}\n")
        (out / "sub").mkdir()
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(RunRefused, match=r"options\.y: 2 then, 3 now.*--force") as refused:
        RunFolder(out, "k", {"model": "a", "options": {"x": 1, "y": 3}}, outputs=["rows*.jsonl", "sub"]).__enter__()
    assert "model" not in str(refused.value) and (out / "rows.jsonl").is_file()
    with RunFolder(out, "k", {"model": "a", "options": {"x": 1, "y": 2}}, outputs=["rows*.jsonl", "sub"]) as same:
        assert same.resumed
    with RunFolder(out, "k", {"model": "b"}, outputs=["rows*.jsonl", "sub"], force=True) as forced:
        assert not forced.resumed
    assert not (out / "rows.jsonl").exists() and not (out / "sub").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"  # only the run's own outputs are deleted
    assert json.loads((out / RECORD).read_text())["runs"]["k"]["fingerprint"] == {"model": "b"}


def test_results_without_a_record_are_not_resumed_and_keys_are_separate(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "val.jsonl").write_text("{}\n")
    with pytest.raises(RunRefused, match="no record of the run that wrote them"):
        RunFolder(out, "val", {}, outputs=["val.*"]).__enter__()
    with RunFolder(out, "test", {"split": "test"}, outputs=["test.*"]):  # another result in the same folder
        pass
    with pytest.raises(RunRefused, match="is an existing file"):
        RunFolder(out / "val.jsonl", "k", {}, outputs=[]).__enter__()


def test_summaries_are_replaced_whole_or_not_at_all(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = write_json(tmp_path / "summary.json", {"n": 1})
    write_json(path, {"n": 2})
    assert json.loads(path.read_text()) == {"n": 2} and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    fig = plt.figure()
    png = save_figure(fig, tmp_path / "a.png")
    before = png.read_bytes()
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "a.png", format="no-such-format")
    plt.close(fig)
    assert png.read_bytes() == before  # a failed write leaves the last whole file


# agci probe through the command line


def test_two_probe_runs_on_one_folder_the_second_is_refused_the_first_is_exact(tmp_path, probe_set, reference):
    out = tmp_path / "out"
    first = _agci("probe", "--data", str(probe_set), "--out", str(out), *PROBE_ARGS, cwd=tmp_path)
    _wait_for_lock(out, first)
    first.send_signal(signal.SIGSTOP)  # paused, it still holds the folder: the second run meets it for sure
    try:
        second = _agci("probe", "--data", str(probe_set), "--out", str(out), *PROBE_ARGS, cwd=tmp_path)
        _, err = second.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and err.count("\n") == 1, err
    assert f"in use by another agci run (pid {first.pid}" in err
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    rows, summary = reference
    _same_rows(_rows(out), rows)
    got = json.loads((out / "summary.json").read_text())
    assert got["lambdas"]["0.5"]["position"]["scored"] == 48 and got["lambdas"]["0"]["occlusion"]["scored"] == 3
    for lam in ("0", "0.5"):
        assert got["lambdas"][lam]["position"]["accuracy"] == summary["lambdas"][lam]["position"]["accuracy"]


def test_probe_killed_at_random_points_then_rerun_gives_the_same_results(tmp_path, probe_set, reference):
    out = tmp_path / "out"
    args = ["probe", "--data", str(probe_set), "--out", str(out), *PROBE_ARGS]
    rng = random.Random(17)
    rows_path = out / "lambda_0.5" / "position.jsonl"
    occlusion_path = out / "lambda_0" / "occlusion.jsonl"
    for stage in ("anywhere", "scoring", "occlusion"):
        run = _agci(*args, cwd=tmp_path)
        if stage == "anywhere":  # while starting, loading or scoring
            time.sleep(rng.uniform(0.5, 6.0))
        else:  # after a random number of rows of the stage
            path, total = (rows_path, 48) if stage == "scoring" else (occlusion_path, 3)
            target = rng.randint(1, total - 1)
            deadline = time.time() + 300
            while run.poll() is None and time.time() < deadline:
                if path.is_file() and path.read_text().count("\n") >= target:
                    break
                time.sleep(0.02)
        run.send_signal(signal.SIGKILL)
        run.communicate()
    done = _agci(*args, cwd=tmp_path)
    _, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-3000:]
    rows, summary = reference
    _same_rows(_rows(out), rows)
    got = json.loads((out / "summary.json").read_text())
    for lam in ("0", "0.5"):
        for task in ("position", "occlusion"):
            assert got["lambdas"][lam][task]["scored"] == summary["lambdas"][lam][task]["scored"]
        assert got["lambdas"][lam]["position"]["accuracy"] == summary["lambdas"][lam]["position"]["accuracy"]
    assert not list(out.glob("**/.*.tmp*"))  # no half-written summary or figure left behind


def test_a_rerun_with_another_checkpoint_or_option_is_refused_and_force_starts_over(tmp_path, probe_set, reference):
    out = tmp_path / "out"
    base = ["probe", "--data", str(probe_set), "--out", str(out), *PROBE_ARGS]
    shutil.copytree(ASSET_DIR, tmp_path / "model")
    small = _agci("probe", "--data", str(probe_set), "--out", str(out), "--tasks", "position", "--lambda", "0.5",
                  "--limit", "8", "--mask", "210", "--adapter", "none", cwd=tmp_path)  # fmt: skip
    assert small.communicate(timeout=300) and small.returncode == 0
    before = (out / "lambda_0.5" / "position.jsonl").read_text()
    # the same checkpoint retrained or edited under another folder: another model and config hash
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["global_context_broadcast_lambda"] = 0.25
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    for extra, named in ((["--model", str(tmp_path / "model")], "model_config"), (["--pooling", "mean"], "pooling"),
                         (["--dtype", "bfloat16"], "options.dtype")):  # fmt: skip
        run = _agci(*base, *extra, cwd=tmp_path)
        _, err = run.communicate(timeout=300)
        assert run.returncode == 2 and err.count("\n") == 1 and named in err and "--force" in err, err
        assert "Traceback" not in err
    assert (out / "lambda_0.5" / "position.jsonl").read_text() == before  # untouched
    # growing the sweep is the same run: the old rows are kept, only the new ones computed
    run = _agci(*base, cwd=tmp_path)
    assert run.communicate(timeout=600) and run.returncode == 0
    assert (out / "lambda_0.5" / "position.jsonl").read_text().startswith(before)
    _same_rows(_rows(out), reference[0])
    run = _agci(*base, "--pooling", "mean", "--force", cwd=tmp_path)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    record = json.loads((out / RECORD).read_text())["runs"]["probe"]
    assert record["fingerprint"]["options"]["pooling"] == "mean" and record["finished"]
    _same_rows(_rows(out), reference[0])  # pooling changes similarity only: started over, same position rows


def test_two_probe_set_builds_into_one_folder_the_second_is_refused(tmp_path):
    out = tmp_path / "set"
    first = _agci("probe-set", str(out), "--source", "synthetic:40", "--canvas", "300", cwd=tmp_path)
    _wait_for_lock(out, first)
    first.send_signal(signal.SIGSTOP)
    try:
        second = _agci("probe-set", str(out), "--source", "synthetic:40", "--canvas", "300", cwd=tmp_path)
        _, err = second.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and f"in use by another agci run (pid {first.pid}" in err, err
    out_text, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len((out / "position.jsonl").read_text().splitlines()) == manifest["questions"] == 40 * 12
