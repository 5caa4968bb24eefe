"""LLaMA-Factory with AGCI: the instruction data, checked recipes, and training in every process.

LLaMA-Factory has no hook before it loads a model, and with more than one device (or
``FORCE_TORCHRUN=1``) it starts training again under torchrun in fresh processes. AGCI therefore
comes from ``AGCI_AUTOPATCH=1``, which agci's start-up file honours in every new interpreter, and the
value from the checkpoint's config.json (``agci set-lambda``), which LoRA merge/export keeps.
``agci llamafactory train RECIPE`` checks the recipe, sets the variable and runs ``llamafactory-cli``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

from .configs import LAMBDA_KEY, format_lambda, read_lambda
from .registry import FAMILIES

# LLaMA-Factory 0.9.5's template names per model type (from the registry); the first is what recipes use.
TEMPLATES: dict[str, tuple[str, ...]] = {
    t: f.llamafactory_templates for t, f in FAMILIES.items() if f.llamafactory_templates
}
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def convert_llava(
    source: Path, out: Path, n: int | None = None, seed: int = 0, name: str = "llava_v1_5_agci",
    with_text_only: bool = False,
) -> dict:  # fmt: skip
    """LLaVA-v1.5 instruction JSON (``llava_v1_5_mix665k.json``) -> LLaMA-Factory's multimodal sharegpt
    format in ``out/<name>.json``, with a seeded sample of ``n`` conversations and the entry merged
    into ``out/dataset_info.json``. Image paths stay relative to LLaVA's image folder: point
    LLaMA-Factory's ``media_dir`` at it. Returns the summary (also in ``out/<name>.manifest.json``)."""
    records = json.loads(Path(source).read_text())
    if not isinstance(records, list):
        raise ValueError(f"{source}: expected LLaVA's list of {{id, image, conversations}} records")
    converted, skipped = [], {}
    for record in records:
        reason = _skip_reason(record, with_text_only)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        messages = [{"role": ROLES[t["from"]], "content": t["value"].replace("<image>\n", "<image>")}
                    for t in record["conversations"]]  # fmt: skip
        entry = {"id": str(record.get("id", len(converted))), "messages": messages}
        if "image" in record:
            entry["images"] = [record["image"]]
        converted.append(entry)
    if n is not None:
        if n > len(converted):
            raise ValueError(f"asked for {n} samples but {source} has {len(converted)} usable ones")
        converted = random.Random(seed).sample(converted, n)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(converted, ensure_ascii=False) + "\n")
    info_path = out / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[name] = {
        "file_name": f"{name}.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"},
    }  # fmt: skip
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    summary = {"source": str(source), "records": len(records), "written": len(converted), "seed": seed, "n": n,
               "skipped": skipped, "dataset": name}  # fmt: skip
    (out / f"{name}.manifest.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _skip_reason(record: dict, with_text_only: bool) -> str | None:
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        return "no conversation"
    if any(t.get("from") not in ROLES or not isinstance(t.get("value"), str) for t in turns):
        return "unknown speaker or empty turn"
    if "image" not in record and not with_text_only:
        return "text only"
    images = sum(t["value"].count("<image>") for t in turns)
    if images != (1 if "image" in record else 0):
        return "image placeholders do not match the image"
    return None


def read_recipe(path: Path) -> dict:
    import yaml

    recipe = yaml.safe_load(Path(path).read_text())
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: not a LLaMA-Factory recipe (a YAML mapping)")
    return recipe


def check_recipe(path: Path) -> dict:
    """The recipe's model must be a supported family with ``global_context_broadcast_lambda`` > 0 in its
    config.json, and its template one that LLaMA-Factory uses for that family. Returns what was found."""
    from transformers import AutoConfig

    from .patches.discovery import check_model_type

    recipe = read_recipe(path)
    model = recipe.get("model_name_or_path")
    if not model:
        raise ValueError(f"{path}: model_name_or_path is missing")
    config = AutoConfig.from_pretrained(model, trust_remote_code=bool(recipe.get("trust_remote_code", False)))
    check_model_type(config.model_type, where=f"{path}: {model}: ")
    lam = read_lambda(config)
    if lam <= 0:  # training would run without AGCI, and an export would not carry it
        raise ValueError(
            f"{path}: {model} has no {LAMBDA_KEY} > 0 in config.json, so AGCI would be off; "
            f"write it first: agci set-lambda {model} 0.5"
        )
    template = recipe.get("template")
    allowed = TEMPLATES.get(config.model_type)
    if not allowed:
        raise ValueError(
            f"{path}: LLaMA-Factory 0.9.5 has no template for {config.model_type} models; agci's recipes cover "
            f"{', '.join(TEMPLATES)}"
        )
    if template not in allowed:
        raise ValueError(
            f"{path}: template {template!r} does not fit a {config.model_type} model; use {' or '.join(allowed)}"
        )
    return {"model": model, "model_type": config.model_type, "lambda": lam, "template": template}


def run(action: str, recipe: Path, extra: list[str] | None = None, env: dict | None = None) -> int:
    """``llamafactory-cli ACTION RECIPE`` with ``AGCI_AUTOPATCH=1``, after checking the recipe."""
    found = check_recipe(recipe)
    cli = shutil.which("llamafactory-cli")
    if cli is None:
        raise FileNotFoundError("llamafactory-cli is not installed: pip install 'agci[train]'")
    env = dict(os.environ if env is None else env, AGCI_AUTOPATCH="1")
    print(f"agci: {action} {found['model']} ({found['model_type']}, {LAMBDA_KEY}={format_lambda(found['lambda'])}) "
          "with AGCI_AUTOPATCH=1", flush=True)  # fmt: skip
    return subprocess.run([cli, action, str(recipe), *(extra or [])], env=env).returncode
