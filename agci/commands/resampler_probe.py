"""``agci resampler-probe build-rcm|extract|train|search|report``: arguments and handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..arguments import add_device, add_force, add_seed, refuse

TASKS = ["refcocog", "rcm", "vsr"]
PROBES = ["linear", "mlp2", "mlp4"]


def layers(text: str) -> list[int] | None:
    """argparse type of ``--layers``: 1-based numbers separated by commas (0-based back), or ``all`` (None)."""
    if text == "all":
        return None
    try:
        return [int(x) - 1 for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"layers are 1-based numbers separated by commas, or 'all'; got {text!r}"
        ) from exc


def register(subparsers) -> None:
    rp = subparsers.add_parser(
        "resampler-probe", help="diagnostic probes of Q-Former resamplers (BLIP-2, InstructBLIP)"
    )
    rp_sub = rp.add_subparsers(dest="action", required=True)
    b = rp_sub.add_parser("build-rcm", help="Region Cell Matching from RefCOCOg (umd), with a manifest")
    b.add_argument("--refs", required=True, help="refs(umd).p of RefCOCOg")
    b.add_argument("--instances", required=True, help="COCO instances.json of the refs")
    b.add_argument("--out", required=True)
    add_seed(b)
    e = rp_sub.add_parser("extract", help="query outputs of every layer, cached once (resumable)")
    e.add_argument("--model", required=True, help="BLIP-2 stage-1 (e.g. Salesforce/blip2-itm-vit-g) or InstructBLIP")
    e.add_argument("--task", required=True, choices=TASKS)
    e.add_argument("--data", required=True, help="refcocog: refs(umd).p; rcm: build-rcm folder; vsr: random split")
    e.add_argument("--instances", help="refcocog: COCO instances.json")
    e.add_argument("--images", required=True, help="folder the items' image paths are relative to")
    e.add_argument("--out", required=True, help="cache folder; a rerun with the same inputs resumes")
    add_force(e)
    e.add_argument("--batch-size", type=int, default=32)
    add_device(e, "cpu")
    e.add_argument("--dtype", default="float32")
    e.add_argument("--no-text", action="store_true", help="queries only, without the text in the Q-Former")
    t = rp_sub.add_parser("train", help="a frozen probe per layer on cached features")
    t.add_argument("--cache", required=True)
    t.add_argument("--task", required=True, choices=TASKS)
    t.add_argument("--layers", type=layers, default=None, help="1-based, comma-separated, or all (default)")
    t.add_argument("--probe", default="linear", choices=PROBES)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--patience", type=int, help="early stopping (the study uses 10 for RCM)")
    t.add_argument("--giou-weight", type=float, default=1.0)
    t.add_argument("--l1-weight", type=float, default=1.0)
    add_seed(t)
    add_device(t, "cpu")
    t.add_argument("--joint", action="store_true", help="fine-tune the resampler with the probe (needs --images)")
    t.add_argument("--images", help="the images folder, for --joint")
    t.add_argument("--out", required=True,
                   help="results folder (results.jsonl, per_layer.png); the same inputs resume")  # fmt: skip
    add_force(t)
    s = rp_sub.add_parser("search", help="Bayesian hyper-parameter search (optuna) for one layer")
    s.add_argument("--cache", required=True)
    s.add_argument("--task", required=True, choices=TASKS)
    s.add_argument("--layer", type=int, required=True, help="1-based")
    s.add_argument("--probe", default="linear", choices=PROBES)
    s.add_argument("--trials", type=int, default=10)
    add_seed(s)
    add_device(s, "cpu")
    s.add_argument("--out", required=True,
                   help="results folder (study.db, trials.jsonl, search.json); the same inputs resume")  # fmt: skip
    add_force(s)
    r = rp_sub.add_parser("report", help="per-layer curve, and the best layer's accuracy per group (Kendall tau)")
    r.add_argument("run", help="the --out folder of train")
    r.add_argument("--cache", required=True, help="the feature cache the run trained on")
    r.add_argument("--task", required=True, choices=TASKS)
    rp.set_defaults(func=resampler_probe_command)


def resampler_probe_command(args) -> int:
    try:
        {"build-rcm": _build_rcm, "extract": _extract, "train": _train, "search": _search, "report": _report}[
            args.action
        ](args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        return refuse(f"resampler-probe {args.action}", exc)
    return 0


REFS = "refs(umd).p of RefCOCOg (the REFER refs pickle)"
INSTANCES = "the COCO instances.json of the refs"


def _existing_files(*options: tuple[str, str, str]) -> None:
    """``(option, path, what)``: each path must be a file, or the option is named with what to give."""
    for option, path, what in options:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{option} {path} {'is a folder' if Path(path).is_dir() else 'does not exist'}; "
                                    f"give {what}")  # fmt: skip


def _build_rcm(args) -> None:
    from ..resampler_probes.runner import build_rcm_set

    _existing_files(("--refs", args.refs, REFS), ("--instances", args.instances, INSTANCES))
    manifest = build_rcm_set(Path(args.refs), Path(args.instances), Path(args.out), args.seed)
    for split, c in manifest["counts"].items():
        print(f"{split}: {c['examples']} examples; positives per cell {c['positives_per_cell']}")


def _extract(args) -> None:
    from ..resampler_probes import runner

    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: give the number of items encoded at once, at least 1")
    if args.task == "refcocog":
        if not args.instances:
            raise ValueError("refcocog needs --instances (COCO instances.json) beside --data (the refs pickle)")
        _existing_files(("--data", args.data, REFS), ("--instances", args.instances, INSTANCES))
    loaders = {
        "refcocog": lambda: runner.refcocog_items(Path(args.data), Path(args.instances)),
        "rcm": lambda: runner.rcm_items(Path(args.data)),
        "vsr": lambda: runner.vsr_items(Path(args.data)),
    }
    index = runner.run_extract(args.model, loaders[args.task](), Path(args.images), Path(args.out),
                               args.batch_size, args.device, args.dtype, not args.no_text, task=args.task,
                               force=args.force)  # fmt: skip
    print(f"{args.out}: {len(index['ids'])} items, features {index['shape']} (layers, queries, hidden)")


def _train(args) -> None:
    from ..resampler_probes.runner import run_train

    if args.joint and not args.images:
        raise ValueError("--joint fine-tunes the resampler on the images: give --images (the images folder)")
    joint = Path(args.images) if args.joint else None
    rows = run_train(Path(args.cache), args.task, args.layers, args.probe, Path(args.out), joint,
                     lr=args.lr, epochs=args.epochs, patience=args.patience, giou_weight=args.giou_weight,
                     l1_weight=args.l1_weight, seed=args.seed, device=args.device, force=args.force)  # fmt: skip
    for r in rows:
        print(f"layer {r['layer'] + 1}: val {r['val']:.4f}, test {r['test']}")
    print(f"wrote {Path(args.out) / 'results.jsonl'} and {Path(args.out) / 'per_layer.png'}")


def _search(args) -> None:
    from ..resampler_probes.runner import run_search

    s = run_search(Path(args.cache), args.task, args.layer - 1, args.probe, Path(args.out),
                   trials=args.trials, seed=args.seed, device=args.device, force=args.force)  # fmt: skip
    print(f"best of {s['trials']} trials: {s['best_params']} val {s['best_val']:.4f} test {s['test_of_best']}")


def _report(args) -> None:
    from ..resampler_probes.report import best_layer, per_layer

    run = Path(args.run)
    print(per_layer(run / "results.jsonl", run))
    layer, summary = best_layer(run, Path(args.cache), args.task)
    print(f"layer {layer + 1} (best validation):", json.dumps(summary, indent=1))
