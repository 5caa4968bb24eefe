"""The steps behind ``agci resampler-probe``: items of a task, extraction, training per layer, search.

A cache folder holds the features (``features.py``) and ``items.jsonl``: each item's id, text, image,
split, target and metadata, so training needs nothing but the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data import RefExample, build_rcm, load_refcocog, read_jsonl, write_rcm
from .features import FeatureCache, extract, load_adapter
from .probes import TASKS, TrainConfig, train_probe

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}


def refcocog_items(refs: Path, instances: Path) -> list[dict]:
    return [
        {"id": e.id, "text": e.text, "image": e.image, "split": e.split, "target": e.box,
         "category": e.category, "supercategory": e.supercategory}
        for e in load_refcocog(refs, instances)
    ]  # fmt: skip


def rcm_items(folder: Path) -> list[dict]:
    items = []
    for split in ("train", "val", "test"):
        path = Path(folder) / f"{split}.jsonl"
        if path.exists():
            items += [{**r, "target": r["label"]} for r in read_jsonl(path)]
    if not items:
        raise FileNotFoundError(
            f"{folder}: no train/val/test.jsonl; build the set with `agci resampler-probe build-rcm`"
        )
    return items


def vsr_items(folder: Path) -> list[dict]:
    """VSR (random split): ``train/dev/test.jsonl`` rows with image, caption, label, relation."""
    items = []
    for name in ("train", "dev", "val", "test"):
        path = Path(folder) / f"{name}.jsonl"
        if not path.exists():
            continue
        for k, r in enumerate(read_jsonl(path)):
            items.append({"id": f"{name}_{k}", "text": r["caption"], "image": r["image"], "split": SPLIT_NAMES[name],
                          "target": int(r["label"]), "relation": r.get("relation", "")})  # fmt: skip
    if not items:
        raise FileNotFoundError(f"{folder}: no VSR train/dev/test.jsonl")
    return items


def build_rcm_set(refs: Path, instances: Path, out: Path, seed: int = 0) -> dict:
    examples: list[RefExample] = load_refcocog(refs, instances)
    return write_rcm(build_rcm(examples, seed), out, {"refs": str(refs), "instances": str(instances), "seed": seed})


def run_extract(model: str, items: list[dict], images: Path, out: Path, batch_size: int = 32,
                device: str = "cpu", dtype: str = "float32", with_text: bool = True) -> dict:  # fmt: skip
    from PIL import Image

    adapter = load_adapter(model, device, dtype)

    def load_image(item):
        path = Path(images) / item["image"]
        if not path.is_file():
            raise FileNotFoundError(f"image {path} of item {item['id']} not found (--images is the COCO folder)")
        return Image.open(path).convert("RGB")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    index = extract(adapter, items, load_image, out, batch_size=batch_size, with_text=with_text)
    index_path = out / "index.json"
    index.update(model=str(model))
    index_path.write_text(json.dumps(index) + "\n")
    return index


def load_targets(cache: Path, task: str) -> tuple[list[dict], torch.Tensor, dict]:
    items = read_jsonl(Path(cache) / "items.jsonl")
    dtype = torch.float32 if TASKS[task] == "box" else torch.long
    targets = torch.tensor([it["target"] for it in items], dtype=dtype)
    splits = {s: torch.tensor([i for i, it in enumerate(items) if it["split"] == s], dtype=torch.long)
              for s in ("train", "val", "test")}  # fmt: skip
    for s in ("train", "val"):
        if len(splits[s]) == 0:
            raise ValueError(f"{cache}: no {s} items; a probe needs train and val (test is optional)")
    return items, targets, splits


def _joint_features(cache: Path, images: Path, layer: int, device: str):
    """Features computed live by a fresh copy of the cache's model, with the resampler trainable."""
    from PIL import Image

    index = json.loads((Path(cache) / "index.json").read_text())
    adapter = load_adapter(index["model"], device)
    items = read_jsonl(Path(cache) / "items.jsonl")
    with_text = index.get("with_text", True)

    def features(idx, training):
        batch = [items[i] for i in idx.tolist()]
        pictures = [Image.open(Path(images) / it["image"]).convert("RGB") for it in batch]
        with torch.set_grad_enabled(training):
            feats = adapter.encode(pictures, [it["text"] for it in batch] if with_text else None)
        return feats[:, layer].flatten(1).float()

    unique = list({id(p): p for p in adapter.resampler_parameters()}.values())
    return features, unique


def run_train(cache: Path, task: str, layers: list[int] | None, probe: str, out: Path, joint_images: Path | None = None,
              **train_kwargs) -> list[dict]:  # fmt: skip
    """A probe per layer on cached features; ``out/results.jsonl`` is written as layers finish and a
    rerun skips those done with the same settings. With ``joint_images`` (the images folder) the
    resampler is fine-tuned with the probe instead, from a fresh copy of the model for every layer."""
    features = FeatureCache(cache)
    _, targets, splits = load_targets(cache, task)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = read_jsonl(results_path) if results_path.exists() else []
    rows = []
    for layer in layers if layers is not None else range(features.layers):
        cfg = TrainConfig(task=task, probe=probe, **train_kwargs)
        key = {"task": task, "probe": probe, "layer": layer, "joint": joint_images is not None,
               **{k: getattr(cfg, k) for k in train_kwargs}}  # fmt: skip
        previous = next((r for r in done if all(r.get(k) == v for k, v in key.items())), None)
        if previous is not None:
            rows.append(previous)
            continue
        if joint_images is not None:
            live, resampler = _joint_features(cache, joint_images, layer, cfg.device)
            probe_model, result = train_probe(live, targets, splits, cfg, resampler)
            with torch.no_grad():
                feats = torch.cat([live(splits["test"][i : i + 64], False) for i in range(0, len(splits["test"]), 64)])
            feats_index = torch.full((len(targets),), -1, dtype=torch.long)
            feats_index[splits["test"]] = torch.arange(len(splits["test"]))
            feats = _Rows(feats, feats_index)
        else:
            feats = features.layer(layer)
            probe_model, result = train_probe(feats, targets, splits, cfg)
        _write_predictions(probe_model, feats, targets, splits["test"], task, cfg.device,
                           out / "predictions" / f"{task}-{probe}-layer{layer + 1}.jsonl", features.ids)  # fmt: skip
        row = {**key, "val": result.best_val, "test": result.test, "best_epoch": result.best_epoch,
               "epochs_run": result.epochs_run}  # fmt: skip
        with results_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


class _Rows:
    """Test-set features addressed by item index (joint runs compute only those)."""

    def __init__(self, rows: torch.Tensor, position: torch.Tensor):
        self.rows, self.position = rows, position

    def __getitem__(self, idx):
        return self.rows[self.position[idx]]


def _write_predictions(probe, feats, targets, idx, task, device, path: Path, ids) -> None:
    """Per test item: correct or not (and the IoU for boxes), for the breakdowns of ``report``."""
    from .boxes import cxcywh_to_xyxy, iou

    if len(idx) == 0:
        return
    probe.eval()
    with torch.no_grad():
        out = torch.cat([probe(feats[idx[i : i + 512]].to(device)) for i in range(0, len(idx), 512)]).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for k, i in enumerate(idx.tolist()):
            if TASKS[task] == "box":
                score = iou(cxcywh_to_xyxy(out[k].sigmoid()), cxcywh_to_xyxy(targets[i])).item()
                row = {"id": ids[i], "iou": round(score, 5), "correct": score >= 0.5}
            else:
                row = {"id": ids[i], "correct": bool((out[k, 0] > 0).long().item() == int(targets[i]))}
            f.write(json.dumps(row) + "\n")


def run_search(cache: Path, task: str, layer: int, probe: str, out: Path, trials: int = 10, seed: int = 0,
               epochs=(5, 30), **fixed) -> dict:  # fmt: skip
    """Bayesian search (optuna's TPE) over the study's ranges: learning rate in [1e-5, 5e-4], epochs, and
    for RefCOCOg the GIoU and L1 weights. Every trial goes to ``out/trials.jsonl``; the study resumes
    from ``out/study.db``."""
    import optuna

    if trials < 1:
        raise ValueError("--trials must be at least 1 (the study uses at least 10)")
    features = FeatureCache(cache).layer(layer)
    _, targets, splits = load_targets(cache, task)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
        storage=f"sqlite:///{out / 'study.db'}", study_name=f"{task}-{probe}-layer{layer}", load_if_exists=True,
    )  # fmt: skip

    def objective(trial):
        params = {"lr": trial.suggest_float("lr", 1e-5, 5e-4, log=True),
                  "epochs": trial.suggest_int("epochs", *epochs)}  # fmt: skip
        if TASKS[task] == "box":
            params["giou_weight"] = trial.suggest_float("giou_weight", 0.5, 5.0)
            params["l1_weight"] = trial.suggest_float("l1_weight", 0.5, 5.0)
        cfg = TrainConfig(task=task, probe=probe, **params, **fixed)
        _, result = train_probe(features, targets, splits, cfg, progress=False)
        trial.set_user_attr("test", result.test)
        with (out / "trials.jsonl").open("a") as f:
            f.write(json.dumps({"trial": trial.number, **params, "val": result.best_val, "test": result.test}) + "\n")
        return result.best_val

    remaining = trials - len([t for t in study.trials if t.state.is_finished()])
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    best = study.best_trial
    summary = {"task": task, "probe": probe, "layer": layer, "trials": len(study.trials), "best_params": best.params,
               "best_val": best.value, "test_of_best": best.user_attrs.get("test")}  # fmt: skip
    (out / "search.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
