"""LLaMA-Factory with AGCI, end to end with the real ``llamafactory-cli`` on CPU.

LLaMA-Factory pins transformers <= 5.6.0, so these tests run in their own environment:
``make test-llamafactory`` (part of ``make test``) builds ``.venv-lf`` and runs this file there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "llamafactory",
    reason="LLaMA-Factory is not installed in this environment; `make test-llamafactory` runs these tests in .venv-lf",
)

import torch  # noqa: E402

from agci import llamafactory as lf  # noqa: E402

HERE = Path(__file__).parent
RECIPES = HERE.parent / "integrations" / "llamafactory" / "recipes"
RECIPE_FAMILY = {
    "qwen2_5_vl-7b": "qwen2_5_vl", "qwen3_vl-8b": "qwen3_vl", "gemma3n-e4b": "gemma3n", "internvl3-8b": "internvl",
    "llava_v1_6-mistral-7b": "llava_next", "llava_v1_5-7b": "llava", "qwen2_vl-7b": "qwen2_vl",
    "qwen3_5-9b": "qwen3_5", "glm4_1v-9b": "glm4v", "glm4_6v": "glm46v", "gemma3-12b": "gemma3",
    "paligemma2-3b-mix-224": "paligemma", "mistral_small_3_1-24b": "mistral3",
    "qwen3_vl_moe-30b-a3b": "qwen3_vl_moe", "qwen3_5_moe-35b-a3b": "qwen3_5_moe", "gemma4-31b": "gemma4",
    "llava_next_video-7b": "llava_next_video", "llama4-scout-17b-16e": "llama4",
}  # fmt: skip
sys.path.insert(0, str(HERE))


def _llava_records(n: int, image_dir: Path) -> list[dict]:
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        _noise_image(i).save(image_dir / f"{i}.jpg")
        records.append({"id": f"s{i}", "image": f"images/{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the image?"}, {"from": "gpt", "value": "It is blue ."},
            {"from": "human", "value": "Is it red?"}, {"from": "gpt", "value": "no"},
        ]})  # fmt: skip
    return records


def test_convert_llava_samples_with_a_seed(tmp_path):
    records = _llava_records(10, tmp_path / "llava" / "images")
    records += [
        {"id": "text", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "bad", "image": "x.jpg", "conversations": [{"from": "human", "value": "no placeholder"},
                                                          {"from": "gpt", "value": "a"}]},
        {"id": "short", "image": "x.jpg", "conversations": []},
    ]  # fmt: skip
    source = tmp_path / "llava.json"
    source.write_text(json.dumps(records))
    summary = lf.convert_llava(source, tmp_path / "data", n=4, seed=1, name="mini")
    assert summary["written"] == 4 and summary["records"] == 13
    assert summary["skipped"] == {"text only": 1, "image placeholders do not match the image": 1, "no conversation": 1}
    data = json.loads((tmp_path / "data" / "mini.json").read_text())
    assert data[0]["messages"][0] == {"role": "user", "content": "<image>What colour is the image?"}
    assert data[0]["messages"][1]["role"] == "assistant" and data[0]["images"][0].startswith("images/")
    again = lf.convert_llava(source, tmp_path / "again", n=4, seed=1, name="mini")
    assert again["written"] == 4 and json.loads((tmp_path / "again" / "mini.json").read_text()) == data
    lf.convert_llava(source, tmp_path / "other", n=4, seed=2, name="mini")
    assert [d["id"] for d in json.loads((tmp_path / "other" / "mini.json").read_text())] != [d["id"] for d in data]
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    assert info["mini"]["formatting"] == "sharegpt" and info["mini"]["columns"]["images"] == "images"
    with pytest.raises(ValueError, match="asked for 99 samples"):
        lf.convert_llava(source, tmp_path / "x", n=99)
    with_text = lf.convert_llava(source, tmp_path / "t", n=None, with_text_only=True, name="all")
    assert with_text["written"] == 11


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_are_valid_llamafactory_arguments(recipe):
    from llamafactory.hparams.parser import _parse_infer_args, _parse_train_args

    config = lf.read_recipe(recipe)
    from llamafactory.data.template import TEMPLATES as LLAMAFACTORY_TEMPLATES

    family = RECIPE_FAMILY[recipe.stem.removesuffix("_lora_sft").removesuffix("_merge")]
    assert config["template"] in lf.TEMPLATES[family] and config["template"] in LLAMAFACTORY_TEMPLATES
    if "export_dir" in config:
        _parse_infer_args(dict(config))  # unknown keys raise
        assert config["adapter_name_or_path"].startswith("saves/")
    else:
        _parse_train_args({**config, "use_cpu": True})  # the recipes are for GPUs (bf16); parsing only
        assert config["finetuning_type"] == "lora" and config["freeze_vision_tower"]
        assert config["freeze_multi_modal_projector"] and config["dataset"] == "llava_v1_5_agci_10k"


def test_every_registered_template_exists_in_llamafactory_and_every_family_with_one_has_a_recipe():
    from llamafactory.data.template import TEMPLATES as LLAMAFACTORY_TEMPLATES

    for model_type, templates in lf.TEMPLATES.items():
        assert set(templates) <= set(LLAMAFACTORY_TEMPLATES), model_type
        assert model_type in RECIPE_FAMILY.values(), f"{model_type} has a template but no recipe"


def _write_recipe(path: Path, **fields) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(fields))
    return path


def test_check_recipe_refuses_bad_setups(tmp_path):
    from tiny_checkpoints import save_tiny

    off = save_tiny("qwen2_5_vl", tmp_path / "off")
    with pytest.raises(ValueError, match="agci set-lambda"):
        lf.check_recipe(_write_recipe(tmp_path / "a.yaml", model_name_or_path=str(off), template="qwen2_vl"))
    on = save_tiny("qwen2_5_vl", tmp_path / "on", lam=0.5)
    with pytest.raises(ValueError, match="use qwen2_vl"):
        lf.check_recipe(_write_recipe(tmp_path / "b.yaml", model_name_or_path=str(on), template="llava"))
    with pytest.raises(ValueError, match="model_name_or_path is missing"):
        lf.check_recipe(_write_recipe(tmp_path / "c.yaml", template="llava"))
    found = lf.check_recipe(_write_recipe(tmp_path / "d.yaml", model_name_or_path=str(on), template="qwen2_vl"))
    assert found == {"model": str(on), "model_type": "qwen2_5_vl", "lambda": 0.5, "template": "qwen2_vl"}


def _env(trace: Path, **extra) -> dict:
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", AGCI_TRACE_LAMBDA=str(trace), **extra)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])  # torchrun, when LLaMA-Factory re-launches
    env["PYTHONPATH"] = os.pathsep.join([str(HERE / "lambda_trace"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("AGCI_AUTOPATCH", None)  # agci llamafactory sets it
    return env


def _injections(trace: Path) -> list[tuple[int, float]]:
    if not trace.exists():
        return []
    return [(int(p), float(v)) for p, v, _ in (line.split() for line in trace.read_text().splitlines())]


TEMPLATE = {"qwen2_5_vl": "qwen2_vl", "llava": "llava"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("lfdata")
    source = root / "llava.json"
    source.write_text(json.dumps(_llava_records(8, root / "media" / "images")))
    lf.convert_llava(source, root / "data", n=6, seed=0, name="tiny_llava")
    return root


def _train_recipe(path: Path, model: Path, template: str, data: Path, out: Path) -> Path:
    return _write_recipe(
        path, model_name_or_path=str(model), image_max_pixels=12544, stage="sft", do_train=True,
        finetuning_type="lora", lora_rank=4, lora_target="all", freeze_vision_tower=True,
        freeze_multi_modal_projector=True, dataset="tiny_llava", dataset_dir=str(data / "data"),
        media_dir=str(data / "media"), template=template, cutoff_len=256, overwrite_cache=True,
        preprocessing_num_workers=1, dataloader_num_workers=0, output_dir=str(out), logging_steps=1,
        save_steps=1000, overwrite_output_dir=True, report_to="none", per_device_train_batch_size=2,
        learning_rate=5.0e-3, max_steps=2, use_cpu=True, seed=0,
    )  # fmt: skip


def _agci(*args, env) -> subprocess.CompletedProcess:
    cli = str(Path(sys.executable).parent / "agci")
    return subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=900)


def _noise_image(seed: int, size=(56, 56)):
    """Random pixels: a uniform image gives identical visual tokens, which AGCI leaves unchanged."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def _logits(model, processor) -> torch.Tensor:
    image = _noise_image(7)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "llava"])
def test_train_and_export_keep_agci(model_type, tmp_path, dataset):
    from peft import PeftModel
    from tiny_checkpoints import save_tiny
    from transformers import AutoProcessor

    from agci import AutoAGCIModelForImageTextToText

    base = save_tiny(model_type, tmp_path / "base", lam=0.5)
    trace = tmp_path / "trace.txt"
    recipe = _train_recipe(tmp_path / "train.yaml", base, TEMPLATE[model_type], dataset, tmp_path / "adapter")
    run = _agci("llamafactory", "train", str(recipe), env=_env(trace))
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "AGCI_AUTOPATCH=1" in run.stdout
    assert {v for _, v in _injections(trace)} == {0.5}  # the patched path ran in training, with the config's lambda

    merge = _write_recipe(tmp_path / "merge.yaml", model_name_or_path=str(base), adapter_name_or_path=str(
        tmp_path / "adapter"), template=TEMPLATE[model_type], export_dir=str(tmp_path / "merged"),
        export_device="cpu", export_legacy_format=False)  # fmt: skip
    run = _agci("llamafactory", "export", str(merge), env=_env(trace))
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["global_context_broadcast_lambda"] == 0.5

    processor = AutoProcessor.from_pretrained(tmp_path / "merged")
    merged = AutoAGCIModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
    assert merged.global_context_broadcast_lambda == 0.5
    with_agci = _logits(merged, processor)
    merged.global_context_broadcast_lambda = 0.0
    without = _logits(merged, processor)
    assert (with_agci - without).abs().max() > 1e-4  # AGCI changes the merged model's outputs

    on_the_fly = PeftModel.from_pretrained(AutoAGCIModelForImageTextToText.from_pretrained(base), tmp_path / "adapter")
    fly = _logits(on_the_fly.eval(), processor)
    torch.testing.assert_close(with_agci, fly, rtol=1e-4, atol=1e-4)
    plain = _logits(AutoAGCIModelForImageTextToText.from_pretrained(base).eval(), processor)
    assert (plain - fly).abs().max() > 1e-4  # the two training steps changed the model


def test_relaunch_under_torchrun_keeps_agci(tmp_path, dataset):
    """With FORCE_TORCHRUN=1 LLaMA-Factory starts training again in new processes: both inject."""
    from tiny_checkpoints import save_tiny

    base = save_tiny("qwen2_5_vl", tmp_path / "base", lam=0.5)
    trace = tmp_path / "trace.txt"
    recipe = _train_recipe(tmp_path / "train.yaml", base, "qwen2_vl", dataset, tmp_path / "adapter")
    run = _agci("llamafactory", "train", str(recipe), env=_env(trace, FORCE_TORCHRUN="1", NPROC_PER_NODE="2"))
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "world size: 2" in log
    injections = _injections(trace)
    assert {v for _, v in injections} == {0.5} and len({pid for pid, _ in injections}) == 2
