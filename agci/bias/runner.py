"""``agci probe``: score a VLM on the position, similarity and occlusion probes for a sweep of lambdas.

Results are written as they are computed, one JSONL per task and lambda under ``OUT/lambda_<value>/``;
a rerun with the same model, data and scoring options skips every sample already there, so an interrupted
run loses nothing (the sweep, the tasks and ``--limit`` may grow on a rerun: every row stands alone). The
folder is locked for the run and a rerun with other inputs is refused (see :mod:`agci.runs`). Each batch of images is
read and put through the processor once, then scored at every lambda of the sweep. Under
``accelerate launch`` (or ``torchrun``) each process scores its share of the samples into its own file and the main
process writes ``summary.json`` and the heatmaps once all are done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..arguments import check_device, check_dtype
from ..configs import format_lambda, read_lambda, using_lambda
from ..fingerprints import content_digests, file_digest, model_fingerprint, versions
from ..images import read_image
from ..runs import RunFolder, drop_partial_line, write_json
from .adapters import AdapterSwitch, check_bases, fingerprint, probed_models
from .probe_sets import MANIFEST, PROMPT, SetOptions, build, read_records
from .processes import Processes
from .shipped import embedded_model, shipped_adapters
from .summary import lambda_dir, read_rows, summarise

log = logging.getLogger(__name__)

TASKS = ("position", "similarity", "occlusion")
DEFAULT_SOURCE = "synthetic:60"
OUTPUTS = ("lambda_*", "summary.json", "*.png", "probe_set")  # what a probe run writes into its folder


@dataclass
class ProbeConfig:
    model: str | None = None  # None: the tiny probe VLM shipped with agci
    data: str | None = None  # a probe-set folder or a records file; None: build one from `source`
    source: str = DEFAULT_SOURCE
    out: str = "agci-probe"
    lambdas: list[float] | None = None  # None: 0 and the checkpoint's value (0.5 when it has none); see models
    adapters: tuple[str, ...] | None = None  # PEFT adapter folders probed next to the base; None: the shipped
    # ones when `model` is None too (agci.bias.training.lora), else none
    tasks: tuple[str, ...] = TASKS
    batch_size: int = 16
    prefetch: int = 1  # batches read and encoded ahead on a worker thread while the model runs; 0: none
    generate: bool = False
    max_new_tokens: int = 128
    occlusion_samples: int = 9
    mask: int = 42
    pooling: str = "max"
    limit: int | None = None
    image_root: str | None = None
    dtype: str = "auto"
    device: str | None = None
    attn: str | None = None
    seed: int = 0
    progress: bool = True
    force: bool = False  # delete the folder's results of a run with other inputs and start over

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown probe task(s) {unknown}; choose from {', '.join(TASKS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0 (0: no prefetching), got {self.prefetch}")
        for name, low in (("max_new_tokens", 1), ("occlusion_samples", 0), ("mask", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (the first N records of each task), got {self.limit}")
        self.dtype = check_dtype(self.dtype, "dtype")
        if self.device is not None:
            self.device = check_device(self.device, "device")


def _image_path(record: dict, root: Path) -> Path:
    path = Path(record["image"])
    return path if path.is_absolute() else root / path


def _load_image(record: dict, root: Path):
    path = _image_path(record, root)
    if not path.is_file():
        raise FileNotFoundError(f"missing image {path}")
    return read_image(path)


def _prepare_data(cfg: ProbeConfig, out: Path, procs: Processes) -> tuple[Path, dict | None]:
    """The probe-set folder to read (built from ``cfg.source`` when no data is given)."""
    if cfg.data:
        data = Path(cfg.data)
        folder = data if data.is_dir() else data.parent
        manifest = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else None
        return data, manifest
    folder = out / "probe_set"
    if procs.main:
        build(folder, SetOptions(source=cfg.source, seed=cfg.seed), progress=cfg.progress)
    procs.wait()
    return folder, json.loads((folder / MANIFEST).read_text())


def _records(data: Path, task: str, warn: bool = True) -> list[dict] | None:
    if data.is_file():
        return read_records(data, warn) if task == "position" else None
    path = data / f"{task if task != 'occlusion' else 'position'}.jsonl"
    return read_records(path, warn) if path.is_file() else None


def _row_base(record: dict) -> dict:
    """The record's fields that every result row repeats."""
    return {k: record[k] for k in ("id", "pair", "cell", "position", "answer", "caption") if k in record}


def _prepare_rows(vlm, task: str, batch: list[dict], root: Path) -> tuple[list[dict], list[dict], dict | None]:
    """Rows skipped with their reason, the rows kept, and the kept images and prompts encoded."""
    from .model_runs import SIMILARITY_PROMPT, encode

    rows, images, kept = [], [], []
    for record in batch:
        base = _row_base(record)
        if "malformed" in record:
            rows.append({**base, "skipped": f"malformed record: {record['malformed']}"})
            continue
        if not str(record.get("caption", "")).strip():
            rows.append({**base, "skipped": "empty caption"})
            continue
        try:
            images.append(_load_image(record, root))
            kept.append(base)
        except Exception as exc:
            rows.append({**base, "skipped": f"unreadable image: {exc}"})
    for r in rows:
        log.warning("skipping %s: %s", r["id"], r["skipped"])
    if not kept:
        return rows, kept, None
    if task == "position":
        return rows, kept, encode(vlm, images, [PROMPT.format(caption=r["caption"]) for r in kept])
    return rows, kept, encode(vlm, images, [SIMILARITY_PROMPT] * len(images))


def _score_rows(vlm, task: str, prepared: tuple, cfg: ProbeConfig, slots: list, switch) -> dict:
    """Rows of one prepared batch for each (model, lambda) slot."""
    from .model_runs import generate_from_inputs, similarity_from_inputs, yes_no_from_inputs

    rows, kept, inputs = prepared
    if inputs is None:
        return {slot: rows for slot in slots}
    out = {}
    for slot in slots:
        label, lam = slot
        with switch.active(label), using_lambda(vlm.model, lam):
            if task == "similarity":
                values = similarity_from_inputs(vlm, inputs, [r["caption"] for r in kept], cfg.pooling)
                scored = [{"similarity": round(v, 6)} for v in values]
            elif cfg.generate:
                scored = generate_from_inputs(vlm, inputs, cfg.max_new_tokens)
                for s in scored:
                    s.pop("answer_ids")
            else:
                scored = yes_no_from_inputs(vlm, inputs)
        out[slot] = rows + [{**r, **s} for r, s in zip(kept, scored, strict=True)]
    return out


def _occlusion_rows(vlm, record: dict, root: Path, cfg: ProbeConfig, slots: list, switch) -> dict:
    """The occlusion map of one record for each (model, lambda) slot, for the answer the model generates
    there; the masked copies are encoded once for all slots."""
    from .model_runs import encode, generate_from_inputs, occlusion_maps

    base = _row_base(record)
    try:
        image = _load_image(record, root)
    except Exception as exc:
        return {slot: [{**base, "skipped": f"unreadable image: {exc}"}] for slot in slots}
    prompt = PROMPT.format(caption=record["caption"])
    inputs = encode(vlm, [image], [prompt])
    answers, out = {}, {}
    for slot in slots:
        with switch.active(slot[0]), using_lambda(vlm.model, slot[1]):
            answers[slot] = generate_from_inputs(vlm, inputs, cfg.max_new_tokens)[0]
        if not answers[slot]["answer_ids"]:
            out[slot] = [{**base, "skipped": "the model generated an empty answer"}]
            del answers[slot]
    if answers:
        ids = {slot: a["answer_ids"] for slot, a in answers.items()}

        @contextlib.contextmanager
        def setting(slot):
            with switch.active(slot[0]), using_lambda(vlm.model, slot[1]):
                yield

        maps = occlusion_maps(vlm, image, prompt, ids, cfg.mask, cfg.batch_size, cfg.prefetch, inputs, setting)
        for slot, (logp, drops) in maps.items():
            rounded = [[round(v, 5) for v in row] for row in drops.tolist()]
            out[slot] = [{**base, "generated": answers[slot]["generated"], "answer_ids": ids[slot],
                          "base_logprob": round(logp, 5), "drops": rounded}]  # fmt: skip
    return out


def _score_task(vlm, task: str, records: list[dict], slots: list, switch, out: Path, root: Path,
                cfg: ProbeConfig, procs: Processes) -> None:  # fmt: skip
    """Write every (model, lambda) slot's missing rows of ``task``: batches are read and encoded once, then
    scored in each slot that still lacks one of their samples."""
    from tqdm.auto import tqdm

    from .model_runs import chunks, prefetched

    done = {}
    for label, lam in slots:
        folder = lambda_dir(out, lam, label)
        folder.mkdir(parents=True, exist_ok=True)
        done[(label, lam)] = read_rows(folder, task)[0]
    todo = [r for r in procs.share(records) if any(r["id"] not in done[slot] for slot in slots)]
    if not todo:
        return
    sinks = {}
    for label, lam in slots:
        path = lambda_dir(out, lam, label) / f"{task}{procs.suffix()}.jsonl"
        drop_partial_line(path)
        sinks[(label, lam)] = path.open("a")
    desc = f"{task} lambda={','.join(sorted({format_lambda(lam) for _, lam in slots}))}"
    desc += f" x {len({label for label, _ in slots})} models" if any(label for label, _ in slots) else ""
    desc += f" [rank {procs.rank}]" if procs.world > 1 else ""
    if task == "occlusion":  # one record at a time; its masked copies are batched and prefetched inside
        work = (([r], r) for r in todo)

        def score(record, wanted):
            return _occlusion_rows(vlm, record, root, cfg, wanted, switch)
    else:  # the next batch is read and encoded while this one is scored
        work = prefetched(lambda b: (b, _prepare_rows(vlm, task, b, root)), chunks(todo, cfg.batch_size), cfg.prefetch)

        def score(prepared, wanted):
            return _score_rows(vlm, task, prepared, cfg, wanted, switch)

    try:
        with tqdm(total=len(todo), desc=desc, disable=not cfg.progress) as bar:
            for batch, prepared in work:
                missing = {slot: {r["id"] for r in batch} - done[slot] for slot in slots}
                missing = {slot: ids for slot, ids in missing.items() if ids}
                for slot, rows in score(prepared, list(missing)).items():
                    sinks[slot].writelines(json.dumps(row) + "\n" for row in rows if row["id"] in missing[slot])
                    sinks[slot].flush()
                bar.update(len(batch))
    finally:
        for sink in sinks.values():
            sink.close()


def _occlusion_records(records: list[dict], n: int) -> list[dict]:
    """``n`` positive samples spread evenly over the 9 target cells."""
    by_cell = [[r for r in records if r.get("answer", "Yes") == "Yes" and r.get("cell") == c] for c in range(9)]
    chosen, k = [], 0
    while len(chosen) < n and any(k < len(cell) for cell in by_cell):
        chosen += [cell[k] for cell in by_cell if k < len(cell)][: n - len(chosen)]
        k += 1
    return chosen


def _fingerprint(cfg: ProbeConfig, model_path: str, models: list) -> dict:
    """What defines the rows of a probe folder: a rerun resumes only when all of it is the same.

    The lambdas, the tasks, ``limit`` and ``occlusion_samples`` choose which rows are computed, not their
    values, so they may change between runs; batch size, prefetching and device do not change the results."""
    if cfg.data:
        data = Path(cfg.data)
        if not data.exists():
            raise FileNotFoundError(f"--data {data} does not exist; give a probe-set folder or a records file")
        files = [data] if data.is_file() else [data / f"{t}.jsonl" for t in ("position", "similarity")]
        _check_records(data, cfg.tasks)
        source = {"data": str(data.resolve()), "records": file_digest(*files), "images": _images_digest(cfg, data)}
    else:
        source = {"source": cfg.source, "seed": cfg.seed}
    options = {k: getattr(cfg, k) for k in ("generate", "max_new_tokens", "mask", "pooling", "dtype", "attn")}
    options["image_root"] = cfg.image_root and str(Path(cfg.image_root).resolve())
    adapters = {"adapters": fingerprint(models)} if len(models) > 1 else {}
    return {**model_fingerprint(model_path), **adapters, **source, "options": options, "versions": versions()}


def _images_digest(cfg: ProbeConfig, data: Path) -> str:
    """A digest of the bytes of every image the records name (a row depends on its image as much as on its
    record): the contents are cached against each file's size and times (:func:`agci.fingerprints.content_digests`),
    so an unchanged set is not read again, and an image overwritten after a run is noticed."""
    root = Path(cfg.image_root) if cfg.image_root else (data if data.is_dir() else data.parent)
    records = [r for task in ("position", "similarity") if (found := _records(data, task, warn=False)) for r in found]
    paths = {r["image"]: _image_path(r, root) for r in records if isinstance(r.get("image"), str) and r["image"]}
    digests = content_digests(paths.values())
    listing = "\n".join(f"{name}:{digests[str(paths[name].resolve())]}" for name in sorted(paths))
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def _check_records(data: Path, tasks) -> None:
    """Refuse a --data that holds no record the probe could score (every line malformed, or none with an
    image and a caption), before anything is written."""
    records = [r for task in tasks if (found := _records(data, task, warn=False)) for r in found]
    usable = [r for r in records if "malformed" not in r and r.get("image") and str(r.get("caption", "")).strip()]
    if not usable:
        malformed = sum("malformed" in r for r in records)
        raise ValueError(
            f"--data {data} holds no usable probe records ({len(records)} read, {malformed} not valid JSON); each "
            "needs image and caption (and position, answer): see `agci probe --help`"
        )


def run_probe(cfg: ProbeConfig) -> dict | None:
    """Score, summarise and plot; returns the summary on the main process (None on the others).

    The model's config and the data are checked before anything is written; the folder is then locked (by
    the main process) and its record checked, before any weight is loaded."""
    from ..vlm import load_config
    from .model_runs import load_probe_vlm

    procs = Processes(cfg.device)
    model_path = cfg.model or str(embedded_model())
    config = load_config(model_path)
    adapters = cfg.adapters
    if adapters is None:
        adapters = [] if cfg.model else shipped_adapters()
    models = probed_models(adapters)
    check_bases(models, model_path, config.model_type)
    out = Path(cfg.out)
    folder = RunFolder(out, "probe", _fingerprint(cfg, model_path, models), outputs=OUTPUTS, force=cfg.force)
    with folder if procs.main else contextlib.nullcontext():
        procs.wait()
        needs_yes_no = not cfg.generate and "position" in cfg.tasks
        vlm = load_probe_vlm(model_path, cfg.dtype, procs.device, cfg.attn, config=config, yes_no=needs_yes_no)
        switch = AdapterSwitch(vlm.model, models)
        data, manifest = _prepare_data(cfg, out, procs)
        root = Path(cfg.image_root) if cfg.image_root else (data if data.is_dir() else data.parent)
        lambdas = model_lambdas(cfg.lambdas, models, read_lambda(vlm.model.config))
        slots = [(m.label if len(models) > 1 else None, lam) for m in models for lam in lambdas[m.label]]
        tasks = {}
        for task in cfg.tasks:
            records = _records(data, task)
            if records is None:
                log.warning("no %s records in %s; skipping that task", task, data)
                continue
            if cfg.limit:
                records = records[: cfg.limit]
            if task == "occlusion":
                records = _occlusion_records(records, cfg.occlusion_samples)
            tasks[task] = records
        if not tasks:
            raise ValueError(f"{data} holds no probe records for the tasks {cfg.tasks}")
        started = time.time()
        for task, records in tasks.items():
            _score_task(vlm, task, records, slots, switch, out, root, cfg, procs)
        procs.wait()
        if not procs.main:
            return None
        summary = summarise(out, lambdas, list(tasks), model_path, data, manifest, cfg, models)
        summary["seconds_this_run"] = round(time.time() - started, 1)
        write_json(out / "summary.json", summary)
        folder.finished()
    return summary


def model_lambdas(asked: list[float] | None, models: list, own: float) -> dict[str, list[float]]:
    """The lambdas each model is probed at: the ones asked for; without, the base alone at 0 and its
    checkpoint's value (0.5 when it has none), and with adapters every model at the lambda it was trained
    with (an adapter's agci-adapter.json, else the checkpoint's value)."""
    if asked is not None:
        return {m.label: list(asked) for m in models}
    if len(models) == 1:
        return {models[0].label: [0.0, own if own > 0 else 0.5]}
    return {m.label: [own if m.trained_lambda is None else m.trained_lambda] for m in models}
