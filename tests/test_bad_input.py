"""Bad input on the command line, as a new user types it: one line on stderr naming the problem and the fix,
exit code 2, and nothing created. (The cases were found by trying every command; ris and the resampler
probes have theirs in their own test files.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agci.bias.shipped import ASSET_DIR
from agci.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A probe set and broken inputs next to it."""
    root = tmp_path_factory.mktemp("bad-input")
    assert main(["probe-set", str(root / "set"), "--source", "synthetic:12", "--canvas", "300"]) == 0
    (root / "notjson.jsonl").write_text("this is not JSON\n{also not\n")
    (root / "nofields.jsonl").write_text('{"x": 1}\n{"y": 2}\n')
    (root / "notjson.json").write_text("{'single': 'quotes'}")
    (root / "nofields-manifest.json").write_text('{"created": "today"}')
    (root / "afile").write_text("a file, not a folder")
    broken = root / "broken-ckpt"
    shutil.copytree(ASSET_DIR, broken)
    (broken / "config.json").write_text('{"model_type": "llava", ')
    shutil.copytree(ASSET_DIR, root / "ckpt")
    empty = shutil.copytree(ASSET_DIR, root / "empty-lambda-ckpt")  # "" was read as lambda 0
    config = json.loads((empty / "config.json").read_text())
    (empty / "config.json").write_text(json.dumps({**config, "global_context_broadcast_lambda": ""}))
    return root


def _argv(case: list[str], root: Path) -> list[str]:
    return [a.replace("ROOT", str(root)) for a in case]


CASES = [  # argv (ROOT = the fixtures' folder; OUT must stay absent), what stderr says
    (["probe", "--data", "ROOT/set", "--mask", "0", "--out", "ROOT/OUT"], "mask must be >= 1"),
    (["probe", "--data", "ROOT/set", "--limit", "-3", "--out", "ROOT/OUT"], "limit must be >= 1"),
    (["probe", "--data", "ROOT/notjson.jsonl", "--out", "ROOT/OUT"], "holds no usable probe records (2 read, 2 not"),
    (["probe", "--data", "ROOT/nofields.jsonl", "--out", "ROOT/OUT"], "each needs image and caption"),
    (["probe", "--lambda", "abc", "--out", "ROOT/OUT"], "('abc' is not a number); see `agci probe --help`"),
    (["probe", "--model", "ROOT/broken-ckpt", "--out", "ROOT/OUT"], "config.json is not valid JSON"),
    (["probe-set", "ROOT/OUT", "--source", "synthetic:12", "--max-pairs", "-1"], "max_pairs must be >= 1"),
    (["probe-set", "ROOT/OUT", "--source", "ROOT/missing-pairs"], "no such file or folder"),
    (["probe-set", "ROOT/OUT", "--from-manifest", "ROOT/missing.json"], "missing.json does not exist; give the"),
    (["probe-set", "ROOT/OUT", "--from-manifest", "ROOT/notjson.json"], "notjson.json is not valid JSON"),
    (["probe-set", "ROOT/OUT", "--from-manifest", "ROOT/nofields-manifest.json"], "lacks 'set_version', 'options'"),
    (["eval", str(ASSET_DIR), "--tasks", "agci_pope", "--limit", "-3", "--out", "ROOT/OUT"], "--limit must be >= 1"),
    (["eval", str(ASSET_DIR), "--tasks", "agci_pope", "--data", "ROOT/nowhere", "--out", "ROOT/OUT"],
     "1 local benchmark file(s) missing"),
    (["eval", "ROOT/broken-ckpt", "--tasks", "agci_pope", "--out", "ROOT/OUT"], "config.json is not valid JSON"),
    (["eval", str(ASSET_DIR), "--batch-size", "0", "--out", "ROOT/OUT"], "batch_size must be a whole number >= 1"),
    (["demo", "--out", "ROOT/afile"], "is an existing file, not a folder"),
    (["demo", "--out", "ROOT/afile/sub"], "a part of its path is a file"),
    (["set-lambda", "ROOT/broken-ckpt", "0.5"], "is not valid JSON"),
    (["probe", "--lambda", "", "--out", "ROOT/OUT"], "(no lambda in ''); see `agci probe --help`"),
    (["eval", str(ASSET_DIR), "--lambda", ",", "--out", "ROOT/OUT"], "(no lambda in ',')"),
    (["demo", "--lambda", "1_0", "--out", "ROOT/OUT"], "('1_0' is not a number)"),
    (["set-lambda", "ROOT/ckpt", "1_0"], "lambda '1_0' is not a number; give a number >= 0"),
    (["set-lambda", "ROOT/ckpt", "1e308"], "must be <= 1000, got 1e+308"),
    (["probe", "--model", "ROOT/empty-lambda-ckpt", "--out", "ROOT/OUT"],
     "global_context_broadcast_lambda must be a real number >= 0 (e.g. 0.5), got ''"),
    (["eval", "ROOT/empty-lambda-ckpt", "--tasks", "agci_pope", "--out", "ROOT/OUT"],
     "empty-lambda-ckpt/config.json: global_context_broadcast_lambda must be a real number"),
    (["nope"], "invalid choice: 'nope'"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "message"), CASES, ids=[" ".join(c[:3]) for c, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(case, message, files, capsys):
    argv = _argv(case, files)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # tqdm bars aside
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("agci"), err
    assert message in lines[0], lines[0]
    assert not (files / "OUT").exists()
    assert (files / "ckpt" / "config.json").read_text() == (ASSET_DIR / "config.json").read_text()
    assert (files / "afile").read_text() == "a file, not a folder"
    assert json.loads((files / "set" / "manifest.json").read_text())["options"]["canvas"] == 300
