"""AGCI_AUTOPATCH=1: a new interpreter patches each supported family when transformers loads it."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

# Every supported family, in one child: its modeling module imported the ordinary way, then the method its hook
# wraps (the inner class's get_image_features, or Llama 4's projector's forward) checked for agci's wrapper (which
# keeps the original's signature). The families are passed from here, so the child imports nothing of agci itself.
EVERY_FAMILY = (
    "import importlib, inspect, json, sys\n"
    "out = {}\n"
    "for model_type, module, cls, method in json.loads(sys.argv[1]):\n"
    "    f = getattr(importlib.import_module(module), cls).__dict__[method]\n"
    "    original = getattr(f, '__agci_original__', None)\n"
    "    out[model_type] = [original is not None,\n"
    "                       original is not None and inspect.signature(f) == inspect.signature(original)]\n"
    "print(json.dumps(out))\n"
)


def _run(code, *args, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "AGCI_AUTOPATCH"} | env
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env,
                          timeout=300)  # fmt: skip


def test_the_startup_file_is_installed_in_site_packages():
    pth = Path(sysconfig.get_paths()["purelib"]) / "agci_autopatch.pth"
    if not pth.exists():
        pytest.fail(f"{pth} is missing: install agci with pip (pip install -e .) so that AGCI_AUTOPATCH works")
    assert "AGCI_AUTOPATCH" in pth.read_text()


def test_autopatch_imports_nothing_heavy_at_startup():
    out = _run("import sys; print('torch' in sys.modules, 'transformers' in sys.modules)", AGCI_AUTOPATCH="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_autopatch_patches_new_processes_only_when_asked():
    """Every supported family (the method its hook wraps), not just two, and none without the variable."""
    from agci.patches.core import hooked_method, installed_families
    from agci.patches.families import FAMILIES

    here = installed_families()
    assert len(here) >= 6
    hooks = {t: hooked_method(t) for t in here}
    families = json.dumps([[t, FAMILIES[t].module, hooks[t][0].__name__, hooks[t][1]] for t in here])
    on = _run(EVERY_FAMILY, families, AGCI_AUTOPATCH="1")
    assert on.returncode == 0, on.stderr
    assert "patching" not in on.stderr, on.stderr  # a family whose patch failed at import says so on stderr
    assert json.loads(on.stdout) == {t: [True, True] for t in here}, on.stdout
    off = _run(EVERY_FAMILY, families)
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout) == {t: [False, False] for t in here}, off.stdout


def test_autopatch_warns_when_a_model_agci_does_not_support_carries_the_key():
    """A LLaVA variant agci does not support (VipLLaVA), built in a new process with the variable set: one warning
    naming the model type, where before AGCI was silently off."""
    from vlm_cases import CONFIGS

    parts = {k: CONFIGS["llava"][k] for k in ("vision_config", "text_config", "image_token_index")}
    config = dict(parts, vision_feature_layers=[-2, -1], image_seq_length=4, global_context_broadcast_lambda=0.5)
    build = (
        "import json, sys, warnings, transformers\n"
        "with warnings.catch_warnings(record=True) as record:\n"
        "    warnings.simplefilter('always')\n"
        "    config = transformers.VipLlavaConfig(**json.loads(sys.argv[1]))\n"
        "    transformers.VipLlavaForConditionalGeneration(config)\n"
        "print(json.dumps([str(w.message) for w in record if 'agci' in str(w.message)]))\n"
    )
    out = _run(build, json.dumps(config), AGCI_AUTOPATCH="1")
    assert out.returncode == 0, out.stderr
    (message,) = json.loads(out.stdout.splitlines()[-1])
    assert "(model type 'vipllava') has global_context_broadcast_lambda=0.5" in message
    assert "agci does not support 'vipllava', so AGCI is off for it" in message
