"""The steps behind ``agci resampler-probe``: items of a task, extraction, training per layer, search.

A cache folder holds the features (``features.py``) and ``items.jsonl``: each item's id, text, image,
split, target and metadata, so training needs nothing but the folder.

Extraction, training and search each own their output folder for the run (see :mod:`agci.runs`): it is
locked, and ``agci-run.json`` records the fingerprint of the inputs; a rerun resumes only with the same
inputs, otherwise it is refused (``force`` deletes the folder's results and starts over).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..fingerprints import data_digest, file_digest, model_fingerprint, versions
from ..images import read_image
from ..inputs import read_jsonl
from ..runs import RECORD, RunFolder, drop_partial_line, write_json, write_text
from .data import RefExample, build_rcm, load_refcocog, write_rcm
from .encoders import encoder_type, load_encoder, torch_dtype
from .features import FeatureCache, extract
from .probes import TASKS, TrainConfig, train_probe

EXTRACT_OUTPUTS = ("features-*.safetensors", "index.json", "items.jsonl")
TRAIN_OUTPUTS = ("results.jsonl", "predictions", "per_layer.*", "*_breakdown.*")  # report's breakdowns too
SEARCH_OUTPUTS = ("study.db*", "trials.jsonl", "search.json")

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}


def refcocog_items(refs: Path, instances: Path) -> list[dict]:
    return [
        {"id": e.id, "text": e.text, "image": e.image, "split": e.split, "target": e.box,
         "category": e.category, "supercategory": e.supercategory}
        for e in load_refcocog(refs, instances)
    ]  # fmt: skip


RCM_ROWS = "an RCM split as `agci resampler-probe build-rcm` writes it (id, image, text, label, cell, split a row)"
VSR_ROWS = "a VSR split (one JSON object a line with image, caption and label 0 or 1)"


def _data_folder(folder: Path, what: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--data {folder} is not a folder; give {what}")
    return folder


def rcm_items(folder: Path) -> list[dict]:
    folder = _data_folder(folder, "the folder of `agci resampler-probe build-rcm`")
    items = []
    for split in ("train", "val", "test"):
        path = folder / f"{split}.jsonl"
        if path.exists():
            rows = read_jsonl(path, RCM_ROWS, keys=("id", "image", "text", "label", "split"))
            items += [{**r, "target": _label(r["label"], path, k)} for k, r in enumerate(rows)]
    if not items:
        raise FileNotFoundError(
            f"{folder}: no train/val/test.jsonl; build the set with `agci resampler-probe build-rcm`"
        )
    return items


def _label(value, path: Path, k: int) -> int:
    """A binary label (0 or 1, as a number, a bool or a string) of row ``k`` of ``path``."""
    if str(value).strip().lower() in ("0", "1", "false", "true"):
        return int(str(value).strip().lower() in ("1", "true"))
    raise ValueError(f"{path}: row {k + 1} has label {value!r}, not 0 or 1")


def vsr_items(folder: Path) -> list[dict]:
    """VSR (random split): ``train/dev/test.jsonl`` rows with image, caption, label, relation."""
    folder = _data_folder(folder, "a VSR split folder (train/dev/test.jsonl)")
    items = []
    for name in ("train", "dev", "val", "test"):
        path = folder / f"{name}.jsonl"
        if not path.exists():
            continue
        for k, r in enumerate(read_jsonl(path, VSR_ROWS, keys=("image", "caption", "label"))):
            items.append({"id": f"{name}_{k}", "text": r["caption"], "image": r["image"], "split": SPLIT_NAMES[name],
                          "target": _label(r["label"], path, k), "relation": r.get("relation", "")})  # fmt: skip
    if not items:
        raise FileNotFoundError(f"{folder}: no VSR train/dev/test.jsonl; give a VSR split folder (--data)")
    return items


def build_rcm_set(refs: Path, instances: Path, out: Path, seed: int = 0) -> dict:
    examples: list[RefExample] = load_refcocog(refs, instances)
    return write_rcm(build_rcm(examples, seed), out, {"refs": str(refs), "instances": str(instances), "seed": seed})


def _extract_fingerprint(model: str, items: list[dict], images: Path, dtype: str, with_text: bool,
                         task: str | None) -> dict:  # fmt: skip
    """What defines a feature cache: a rerun resumes only when all of it is the same.

    The items (ids, texts, images, splits, targets) stand for the task's data files: they are what the
    cache is made of. Batch size and device do not change the features, so they may differ between runs."""
    return {**model_fingerprint(model), "task": task, "items": data_digest(items),
            "images": str(Path(images).resolve()), "dtype": dtype, "with_text": with_text,
            "versions": versions()}  # fmt: skip


def run_extract(model: str, items: list[dict], images: Path, out: Path, batch_size: int = 32,
                device: str = "cpu", dtype: str = "float32", with_text: bool = True, *, task: str | None = None,
                force: bool = False) -> dict:  # fmt: skip
    """Every layer's query outputs of ``items`` into the cache folder ``out`` (resumable, see :func:`extract`).

    The images, the model's config and the dtype are checked before anything is written; the folder is
    then locked and its record checked before any weight is loaded."""
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: give the number of items encoded at once, at least 1")
    if not items:
        raise ValueError("no items to extract; give data with at least one item")
    torch_dtype(dtype)
    encoder_type(model)
    absent = sorted({it["image"] for it in items if not (Path(images) / it["image"]).is_file()})
    if absent:
        raise FileNotFoundError(f"{len(absent)} image(s) of the items are not in {images}, e.g. {absent[0]} "
                                "(--images is the folder the items' image paths are relative to)")  # fmt: skip

    def load_image(item):
        return read_image(Path(images) / item["image"])

    out = Path(out)
    fingerprint = _extract_fingerprint(model, items, images, dtype, with_text, task)
    with RunFolder(out, "extract", fingerprint, outputs=EXTRACT_OUTPUTS, force=force) as folder:
        encoder = load_encoder(model, device, dtype)
        write_text(out / "items.jsonl", "".join(json.dumps(it) + "\n" for it in items))
        index = extract(encoder, items, load_image, out, batch_size=batch_size, with_text=with_text)
        index.update(model=str(model))
        write_text(out / "index.json", json.dumps(index) + "\n")
        folder.finished()
    return index


def _cache_fingerprint(cache: Path) -> dict:
    """A feature cache by its contents: its index and items, and the fingerprint of the extraction that
    wrote it (model, dtype, text or not) where it has a record."""
    cache = Path(cache)
    record = cache / RECORD
    extraction = None
    if record.is_file():
        try:
            extraction = data_digest(json.loads(record.read_text())["runs"]["extract"]["fingerprint"])
        except (ValueError, KeyError, TypeError):
            extraction = None
    return {"cache": file_digest(cache / "index.json", cache / "items.jsonl"), "cache_extraction": extraction}


def load_targets(cache: Path, task: str) -> tuple[list[dict], torch.Tensor, dict]:
    """The cache's items, their targets as a tensor and the indices of each split; targets that are not the
    task's (a box of 4 numbers for refcocog, a label 0 or 1 for rcm and vsr) are refused."""
    path = Path(cache) / "items.jsonl"
    items = read_jsonl(path, "the items.jsonl that `agci resampler-probe extract` writes beside the features",
                       keys=("id", "split", "target"))  # fmt: skip
    box = TASKS[task] == "box"
    try:
        targets = torch.tensor([it["target"] for it in items], dtype=torch.float32 if box else torch.long)
        binary = targets.dim() == 1 and bool(((targets == 0) | (targets == 1)).all())
        fits = targets.shape == (len(items), 4) if box else binary
    except (TypeError, ValueError, RuntimeError):
        fits = False
    if not fits:
        kind = "a box (4 numbers)" if box else "a label 0 or 1"
        raise ValueError(
            f"{path}: the targets are not {kind} per item, as --task {task} needs; give the --task the cache was "
            "extracted for"
        )
    splits = {s: torch.tensor([i for i, it in enumerate(items) if it["split"] == s], dtype=torch.long)
              for s in ("train", "val", "test")}  # fmt: skip
    for s in ("train", "val"):
        if len(splits[s]) == 0:
            raise ValueError(f"{cache}: no {s} items; a probe needs train and val (test is optional)")
    return items, targets, splits


def _check_joint(features: FeatureCache, cache: Path, images: Path) -> None:
    """What joint fine-tuning needs, before anything is written: the cache's model and every item's image."""
    if not Path(images).is_dir():
        raise FileNotFoundError(f"--images {images} is not a folder; give the images the cache was extracted from")
    model = features.index.get("model")
    if not model:
        raise ValueError(f"{cache}/index.json names no model; rerun `agci resampler-probe extract` into a new folder")
    encoder_type(model)
    items = read_jsonl(Path(cache) / "items.jsonl", "the items.jsonl of the cache", keys=("image", "text"))
    absent = sorted({it["image"] for it in items if not (Path(images) / it["image"]).is_file()})
    if absent:
        raise FileNotFoundError(f"{len(absent)} image(s) of the cache's items are not in {images}, e.g. {absent[0]} "
                                "(--images is the folder the cache was extracted from)")  # fmt: skip


def _joint_features(cache: Path, images: Path, layer: int, device: str):
    """Features computed live by a fresh copy of the cache's model, with the resampler trainable."""
    index = json.loads((Path(cache) / "index.json").read_text())
    encoder = load_encoder(index["model"], device)
    items = read_jsonl(Path(cache) / "items.jsonl")
    with_text = index.get("with_text", True)

    def features(idx, training):
        batch = [items[i] for i in idx.tolist()]
        pictures = [read_image(Path(images) / it["image"]) for it in batch]
        with torch.set_grad_enabled(training):
            feats = encoder.encode(pictures, [it["text"] for it in batch] if with_text else None)
        return feats[:, layer].flatten(1).float()

    unique = list({id(p): p for p in encoder.resampler_parameters()}.values())
    return features, unique


def _train_fingerprint(cache: Path, cfg: TrainConfig, joint_images: Path | None) -> dict:
    """What defines the rows of a training folder: a rerun resumes only when all of it is the same.

    Every row is one layer, so the layers may differ between runs (a rerun trains only the missing ones);
    the device does not change what is learnt, so it may differ too."""
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "device"}
    joint = {"joint": joint_images is not None,
             "joint_images": str(Path(joint_images).resolve()) if joint_images is not None else None}  # fmt: skip
    return {**_cache_fingerprint(cache), **options, **joint, "versions": versions("torch")}


def run_train(cache: Path, task: str, layers: list[int] | None, probe: str, out: Path, joint_images: Path | None = None,
              *, force: bool = False, **train_kwargs) -> list[dict]:  # fmt: skip
    """A probe per layer on cached features; ``out/results.jsonl`` is written as layers finish and a
    rerun with the same settings skips those done (then ``per_layer.png`` / ``.md`` are drawn). With
    ``joint_images`` (the images folder) the resampler is fine-tuned with the probe instead, from a fresh
    copy of the model for every layer. The cache, the layers and the options are checked before anything
    is written."""
    cfg = TrainConfig(task=task, probe=probe, **train_kwargs)
    features = FeatureCache(cache)
    _, targets, splits = load_targets(cache, task)
    chosen = list(layers) if layers is not None else list(range(features.layers))
    wrong = [layer + 1 for layer in chosen if not 0 <= layer < features.layers]
    if wrong:
        raise ValueError(f"layer(s) {wrong} out of range: the cache has layers 1..{features.layers}")
    if joint_images is not None:
        _check_joint(features, cache, joint_images)
    out = Path(out)
    with RunFolder(out, "train", _train_fingerprint(cache, cfg, joint_images), outputs=TRAIN_OUTPUTS,
                   force=force) as folder:  # fmt: skip
        rows = _train_layers(features, cache, targets, splits, cfg, chosen, out, joint_images, train_kwargs)
        from .report import per_layer

        per_layer(out / "results.jsonl", out)
        folder.finished()
    return rows


def _train_layers(features, cache, targets, splits, cfg, layers, out, joint_images, train_kwargs) -> list[dict]:
    task, probe = cfg.task, cfg.probe
    results_path = out / "results.jsonl"
    drop_partial_line(results_path)
    done = read_jsonl(results_path) if results_path.exists() else []
    rows = []
    for layer in layers:
        key = {"task": task, "probe": probe, "layer": layer, "joint": joint_images is not None,
               **{k: getattr(cfg, k) for k in train_kwargs}}  # fmt: skip
        # the folder's record vouches for the settings but the device, which does not change the results
        previous = next((r for r in done if all(r.get(k) == v for k, v in key.items() if k != "device")), None)
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
    rows = []
    for k, i in enumerate(idx.tolist()):
        if TASKS[task] == "box":
            score = iou(cxcywh_to_xyxy(out[k].sigmoid()), cxcywh_to_xyxy(targets[i])).item()
            rows.append({"id": ids[i], "iou": round(score, 5), "correct": score >= 0.5})
        else:
            rows.append({"id": ids[i], "correct": bool((out[k, 0] > 0).long().item() == int(targets[i]))})
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _search_fingerprint(cache: Path, task: str, layer: int, probe: str, seed: int, epochs, fixed: dict) -> dict:
    """What defines a search folder: a rerun resumes (and adds trials) only when all of it is the same.

    The number of trials only says how far the study goes, and the device does not change the results,
    so both may differ between runs."""
    return {**_cache_fingerprint(cache), "task": task, "layer": layer, "probe": probe, "seed": seed,
            "epochs": list(epochs), "fixed": {k: v for k, v in fixed.items() if k != "device"},
            "versions": versions("torch", "optuna")}  # fmt: skip


def run_search(cache: Path, task: str, layer: int, probe: str, out: Path, trials: int = 10, seed: int = 0,
               epochs=(5, 30), *, force: bool = False, **fixed) -> dict:  # fmt: skip
    """Bayesian search (optuna's TPE) over the study's ranges: learning rate in [1e-5, 5e-4], epochs, and
    for RefCOCOg the GIoU and L1 weights. Every trial goes to ``out/trials.jsonl``; the study resumes
    from ``out/study.db`` (a rerun with more trials adds the missing ones)."""
    if trials < 1:
        raise ValueError("--trials must be at least 1 (the study uses at least 10)")
    TrainConfig(task=task, probe=probe)
    cached = FeatureCache(cache)
    if not 0 <= layer < cached.layers:
        raise ValueError(f"layer {layer + 1} out of range: the cache has layers 1..{cached.layers}")
    _, targets, splits = load_targets(cache, task)
    out = Path(out)
    fingerprint = _search_fingerprint(cache, task, layer, probe, seed, epochs, fixed)
    with RunFolder(out, "search", fingerprint, outputs=SEARCH_OUTPUTS, force=force) as folder:
        summary = _search(cached.layer(layer), targets, splits, task, layer, probe, out, trials, seed, epochs, fixed)
        folder.finished()
    return summary


def _search(features, targets, splits, task, layer, probe, out, trials, seed, epochs, fixed) -> dict:
    import optuna

    drop_partial_line(out / "trials.jsonl")
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
    finished = len([t for t in study.trials if t.state.is_finished()])  # not a trial a killed run left running
    summary = {"task": task, "probe": probe, "layer": layer, "trials": finished, "best_params": best.params,
               "best_val": best.value, "test_of_best": best.user_attrs.get("test")}  # fmt: skip
    write_json(out / "search.json", summary)
    return summary
