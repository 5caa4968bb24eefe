"""AGCI_AUTOPATCH=1: a new interpreter patches each supported family when transformers loads it."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PROBE = (
    "import sys; from transformers import LlavaForConditionalGeneration, Qwen2_5_VLModel\n"
    "from transformers.models.llava.modeling_llava import LlavaModel\n"
    "print(hasattr(LlavaModel.__dict__['get_image_features'], '__agci_original__'),"
    " hasattr(Qwen2_5_VLModel.__dict__['get_image_features'], '__agci_original__'),"
    " 'torch' in sys.modules)"
)


def _run(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "AGCI_AUTOPATCH"} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_the_startup_file_is_installed_in_site_packages():
    pth = Path(sysconfig.get_paths()["purelib"]) / "agci_autopatch.pth"
    if not pth.exists():
        pytest.fail(f"{pth} is missing: install agci with pip (pip install -e .) so that AGCI_AUTOPATCH works")
    assert "AGCI_AUTOPATCH" in pth.read_text()


def test_autopatch_patches_new_processes_only_when_asked():
    on = _run(PROBE, AGCI_AUTOPATCH="1")
    assert on.returncode == 0, on.stderr
    assert on.stdout.split() == ["True", "True", "True"], on.stdout + on.stderr
    off = _run(PROBE)
    assert off.returncode == 0, off.stderr
    assert off.stdout.split() == ["False", "False", "True"]


def test_autopatch_imports_nothing_heavy_at_startup():
    out = _run("import sys; print('torch' in sys.modules, 'transformers' in sys.modules)", AGCI_AUTOPATCH="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
