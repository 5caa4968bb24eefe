"""The `agci` command: the demo on a small LLaVA (real transformers classes, offline) and `agci info`."""

import json
import subprocess
import sys

import pytest


def _agci(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "agci", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_demo_writes_json_and_png_with_the_expected_behaviour(tmp_path):
    out = _agci("demo", "--out", str(tmp_path / "demo"), "--lambda", "0,0.5,1")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    assert summary["tokens_per_image"] == [256, 256]
    assert [s["lambda"] for s in summary["sweep"]] == [0.0, 0.5, 1.0]
    for image in range(2):
        rows = [s["images"][image] for s in summary["sweep"]]
        assert rows[0]["relative_change"] == 0 and rows[0]["kl_next_token_vs_lambda0"] == 0
        # ||lam * w * g|| grows linearly with lambda, and the tokens move towards their image's mean
        assert rows[2]["relative_change"] == pytest.approx(2 * rows[1]["relative_change"], rel=1e-4)
        assert rows[2]["mean_cos_to_context_after"] > rows[1]["mean_cos_to_context_after"] > rows[0][
            "mean_cos_to_context_after"]  # fmt: skip
        assert rows[2]["kl_next_token_vs_lambda0"] > 0
        assert all(r["max_diff_alone_vs_batched"] < 1e-6 for r in rows)
    assert "lambda | image" in out.stdout


def test_demo_refuses_a_negative_lambda_with_a_clear_message(tmp_path):
    out = _agci("demo", "--out", str(tmp_path), "--lambda", "0,-1")
    assert out.returncode == 2
    assert ">= 0" in out.stderr and not (tmp_path / "demo.json").exists()


def test_info_reports_versions_and_the_chosen_implementation():
    out = _agci("info")
    assert out.returncode == 0, out.stderr
    assert "torch " in out.stdout and "impl='auto'" in out.stdout


def test_set_lambda_writes_the_key_after_checking_the_model_type(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "text_config": {"hidden_size": 8}}))
    out = _agci("set-lambda", str(ckpt), "0.5")
    assert out.returncode == 0, out.stderr
    config = json.loads((ckpt / "config.json").read_text())
    assert config["global_context_broadcast_lambda"] == 0.5 and config["text_config"] == {"hidden_size": 8}
    bad = _agci("set-lambda", str(ckpt), "-1")
    assert bad.returncode == 2 and ">= 0" in bad.stderr
    assert json.loads((ckpt / "config.json").read_text())["global_context_broadcast_lambda"] == 0.5
    (ckpt / "config.json").write_text(json.dumps({"model_type": "blip-2"}))
    unsupported = _agci("set-lambda", str(ckpt), "0.5")
    assert unsupported.returncode == 2 and "supported: llava" in unsupported.stderr
    missing = _agci("set-lambda", str(tmp_path / "nowhere"), "0.5")
    assert missing.returncode == 2 and "no config.json" in missing.stderr


@pytest.mark.parametrize(
    "command",
    ["demo", "set-lambda", "probe", "probe-set", "eval", "llamafactory", "resampler-probe", "ris", "info",
     "llamafactory train", "resampler-probe report", "ris evaluate"],
)  # fmt: skip
def test_every_command_is_registered_with_its_help(command, capsys):
    from agci.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    assert exit_.value.code == 0
    assert f"usage: agci {command}" in capsys.readouterr().out


def test_the_command_line_imports_no_torch_until_a_command_runs():
    code = (
        "import sys, agci.cli as c; c.build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'lmms_eval'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _refused_cleanly(out, config, before):
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("agci set-lambda: ")
    assert config.read_text() == before  # nothing written
    assert not config.with_suffix(".json.tmp").exists()


def test_set_lambda_refuses_a_malformed_config_json_naming_the_file_and_the_fix(tmp_path):
    config = tmp_path / "config.json"
    before = '{"model_type": "llava",\n  "vision_config": {\n'
    config.write_text(before)
    out = _agci("set-lambda", str(tmp_path), "0.5")
    _refused_cleanly(out, config, before)
    assert str(config) in out.stderr and "not valid JSON" in out.stderr and "line 3" in out.stderr
    assert "restore" in out.stderr


def test_set_lambda_refuses_a_config_json_that_is_not_an_object(tmp_path):
    config = tmp_path / "config.json"
    before = json.dumps([{"model_type": "llava"}])
    config.write_text(before)
    out = _agci("set-lambda", str(config), "0.5")
    _refused_cleanly(out, config, before)
    assert str(config) in out.stderr and "JSON object" in out.stderr and "list" in out.stderr


def test_set_lambda_refuses_a_value_that_is_not_a_number_naming_it_and_the_fix(tmp_path):
    config = tmp_path / "config.json"
    before = json.dumps({"model_type": "llava"})
    config.write_text(before)
    out = _agci("set-lambda", str(tmp_path), "abc")
    _refused_cleanly(out, config, before)
    assert "'abc'" in out.stderr and ">= 0" in out.stderr and "0.5" in out.stderr and "0 turns AGCI off" in out.stderr
