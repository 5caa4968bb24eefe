"""The ``agci`` command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def _lambdas(text: str) -> list[float]:
    from .configs import validate_lambda

    try:
        return [validate_lambda(float(v)) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--lambda takes comma-separated numbers >= 0, e.g. 0,0.5,1 ({exc})") from exc


def _cmd_demo(args) -> int:
    from .demo import print_summary, run_demo

    summary = run_demo(args.out, lambdas=args.lambdas, impl=args.impl, seed=args.seed)
    print_summary(summary)
    print(f"wrote {args.out}/demo.json and {args.out}/demo.png")
    return 0


def _cmd_info(args) -> int:
    import importlib.metadata as md

    import torch

    from . import __version__
    from .kernels import IMPL_ENV, resolve_impl, triton_available

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"agci {__version__}")
    for name in ("torch", "transformers", "triton"):
        print(f"{name} {version(name)}")
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    print(f"triton kernels usable on {device}: {triton_available(device)}")
    chosen = resolve_impl("auto", torch.empty(0, device=device, dtype=torch.bfloat16))
    print(f"impl='auto' on {device} bf16 runs: {chosen} (set {IMPL_ENV}=reference|triton to force)")
    return 0


def _cmd_set_lambda(args) -> int:
    import json
    from pathlib import Path

    from .configs import LAMBDA_KEY, validate_lambda
    from .patches.core import check_model_type

    path = Path(args.checkpoint)
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        print(f"agci set-lambda: no config.json at {config_path}; pass a checkpoint folder", file=sys.stderr)
        return 2
    try:
        value = validate_lambda(float(args.value))
    except ValueError as exc:
        print(f"agci set-lambda: {exc}", file=sys.stderr)
        return 2
    config = json.loads(config_path.read_text())
    model_type = config.get("model_type")
    try:
        check_model_type(model_type, where=f"{config_path}: ")
    except ValueError as exc:
        print(f"agci set-lambda: {exc}", file=sys.stderr)
        return 2
    previous = config.get(LAMBDA_KEY)
    config[LAMBDA_KEY] = value
    tmp = config_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tmp.replace(config_path)
    print(f"{config_path}: {LAMBDA_KEY} {previous} -> {value} ({model_type})")
    return 0


def _cmd_probe(args) -> int:
    from .bias.runner import ProbeConfig, run_probe

    try:
        cfg = ProbeConfig(
            model=args.model, data=args.data, source=args.source, out=args.out, lambdas=args.lambdas,
            tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()), batch_size=args.batch_size,
            prefetch=args.prefetch, generate=args.generate, max_new_tokens=args.max_new_tokens,
            occlusion_samples=args.occlusion_samples, mask=args.mask, pooling=args.pooling, limit=args.limit,
            image_root=args.image_root, dtype=args.dtype, device=args.device, attn=args.attn, seed=args.seed,
        )  # fmt: skip
        summary = run_probe(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"agci probe: {exc}", file=sys.stderr)
        return 2
    if summary is not None:
        print_probe_summary(summary)
        print(f"wrote {args.out}/summary.json, per-sample JSONL under {args.out}/lambda_*/ and the PNGs:")
        for path in summary["figures"].values():
            print(f"  {path}")
    return 0


def print_probe_summary(summary: dict) -> None:
    for lam, tasks in summary["lambdas"].items():
        parts = []
        pos = tasks.get("position", {})
        if "accuracy" in pos:
            b = pos["bias"]
            parts.append(f"accuracy {pos['accuracy']:.3f}")
            if b["spread"] is not None:
                parts.append(f"position spread {b['spread']:.3f} (best {b['best_cell']}, worst {b['worst_cell']})")
            if b["centre_minus_border"] is not None:
                parts.append(f"centre-border {b['centre_minus_border']:+.3f}")
            test = pos.get("position_test", {})
            if test.get("p_value") is not None:
                parts.append(f"position effect p = {test['p_value']:.2g} (Cochran's Q, {test['pairs']} pairs)")
            if pos.get("skipped"):
                parts.append(f"skipped {pos['skipped']}")
        sim = tasks.get("similarity", {})
        if sim.get("bias", {}).get("spread") is not None:
            parts.append(f"similarity spread {sim['bias']['spread']:.4f}")
        occ = tasks.get("occlusion", {})
        if occ.get("bias", {}).get("spread") is not None:
            parts.append(f"occlusion target-share spread {occ['bias']['spread']:.3f}")
        print(f"lambda {lam}: " + "; ".join(parts))


def _cmd_probe_set(args) -> int:
    from .bias.probe_sets import SetOptions, build, rebuild

    try:
        if args.from_manifest:
            manifest = rebuild(args.from_manifest, args.out)
        else:
            options = SetOptions(
                source=args.source, seed=args.seed, canvas=args.canvas, negatives_per_pair=args.negatives_per_pair,
                similarity=not args.no_similarity, max_pairs=args.max_pairs, image_column=args.image_column,
                caption_column=args.caption_column,
            )  # fmt: skip
            manifest = build(args.out, options)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as exc:
        print(f"agci probe-set: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {manifest['questions']} position questions "
        f"({manifest['positives']} Yes, {manifest['negatives']} No), "
        f"{manifest['similarity_samples']} similarity samples, {len(manifest['skipped'])} pairs skipped"
    )
    return 0


def _cmd_eval(args) -> int:
    try:
        from .eval import suite
    except ImportError as exc:
        print(f"agci eval: {exc}; install the evaluation extra: pip install 'agci[eval]'", file=sys.stderr)
        return 2
    try:
        summary = suite.run(
            args.model_path, args.lambdas, Path(args.out), [t.strip() for t in args.tasks.split(",") if t.strip()],
            data=Path(args.data) if args.data else None, model=args.lmms_model, batch_size=args.batch_size,
            limit=args.limit, model_args=args.model_args, device=args.device,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        print(f"agci eval: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"agci eval: lmms-eval failed (exit {exc.returncode}); results so far are kept", file=sys.stderr)
        return 1
    print((Path(args.out) / "comparison.md").read_text())
    print(f"wrote {args.out}/comparison.md, comparison.json and comparison.png ({len(summary['rows'])} rows)")
    return 0


def _cmd_llamafactory(args) -> int:
    from . import llamafactory as lf

    try:
        if args.action == "data":
            summary = lf.convert_llava(
                Path(args.source), Path(args.out), n=args.n, seed=args.seed, name=args.name,
                with_text_only=args.with_text_only,
            )  # fmt: skip
            skipped = summary["skipped"] or "none"
            print(f"wrote {summary['written']} conversations to {args.out}/{args.name}.json (skipped: {skipped})")
            print(f"and the {args.name} entry in {args.out}/dataset_info.json")
            return 0
        return lf.run(args.action, Path(args.recipe), args.extra)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"agci llamafactory {args.action}: {exc}", file=sys.stderr)
        return 2


def _layers(text: str) -> list[int] | None:
    if text == "all":
        return None
    try:
        return [int(x) - 1 for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"layers are 1-based numbers separated by commas, or 'all'; got {text!r}"
        ) from exc


def _cmd_resampler_probe(args) -> int:
    from .resampler_probes import report, runner
    from .resampler_probes.data import read_jsonl

    try:
        if args.action == "build-rcm":
            manifest = runner.build_rcm_set(Path(args.refs), Path(args.instances), Path(args.out), args.seed)
            for split, c in manifest["counts"].items():
                print(f"{split}: {c['examples']} examples; positives per cell {c['positives_per_cell']}")
        elif args.action == "extract":
            if args.task == "refcocog" and not args.instances:
                raise ValueError("refcocog needs --instances (COCO instances.json) beside --data (the refs pickle)")
            loaders = {
                "refcocog": lambda: runner.refcocog_items(Path(args.data), Path(args.instances)),
                "rcm": lambda: runner.rcm_items(Path(args.data)),
                "vsr": lambda: runner.vsr_items(Path(args.data)),
            }
            index = runner.run_extract(args.model, loaders[args.task](), Path(args.images), Path(args.out),
                                       args.batch_size, args.device, args.dtype, not args.no_text)  # fmt: skip
            print(f"{args.out}: {len(index['ids'])} items, features {index['shape']} (layers, queries, hidden)")
        elif args.action == "train":
            if args.joint and not args.images:
                raise ValueError("--joint fine-tunes the resampler on the images: give --images (the images folder)")
            joint = Path(args.images) if args.joint else None
            rows = runner.run_train(Path(args.cache), args.task, args.layers, args.probe, Path(args.out), joint,
                                    lr=args.lr, epochs=args.epochs, patience=args.patience,
                                    giou_weight=args.giou_weight, l1_weight=args.l1_weight, seed=args.seed,
                                    device=args.device)  # fmt: skip
            for r in rows:
                print(f"layer {r['layer'] + 1}: val {r['val']:.4f}, test {r['test']}")
            report.per_layer(Path(args.out) / "results.jsonl", Path(args.out))
        elif args.action == "search":
            s = runner.run_search(Path(args.cache), args.task, args.layer - 1, args.probe, Path(args.out),
                                  trials=args.trials, seed=args.seed, device=args.device)  # fmt: skip
            print(f"best of {s['trials']} trials: {s['best_params']} val {s['best_val']:.4f} test {s['test_of_best']}")
        else:
            run = Path(args.run)
            print(report.per_layer(run / "results.jsonl", run))
            rows = [r for r in read_jsonl(run / "results.jsonl") if r["task"] == args.task]
            if not rows:
                raise ValueError(f"{run}: no {args.task} results")
            best = max(rows, key=lambda r: r["val"])
            name = f"{args.task}-{best['probe']}-layer{best['layer'] + 1}.jsonl"
            summary = report.breakdown(Path(args.cache), run / "predictions" / name, args.task, run)
            print(f"layer {best['layer'] + 1} (best validation):", json.dumps(summary, indent=1))
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"agci resampler-probe {args.action}: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_ris(args) -> int:
    from .ris import evaluate as ris

    try:
        if args.action == "evaluate":
            s = ris.evaluate(args.model, Path(args.refer), args.dataset, args.split, Path(args.images),
                             args.proposals, Path(args.out), args.mode, args.layer, args.normalise, args.limit,
                             args.device, args.split_by, Path(args.translations) if args.translations else None,
                             args.language, args.v)  # fmt: skip
            print(f"{args.dataset} {args.split} ({s['n']} expressions, {args.mode}): mIoU {s['mIoU']:.4f}, "
                  f"oIoU {s['oIoU']:.4f}, Prec@0.5 {s['Prec@0.5']:.4f}")  # fmt: skip
        else:
            path = ris.picture(args.model, Path(args.image), args.text, args.proposals, Path(args.out), args.mode,
                               args.layer, args.normalise, args.device)  # fmt: skip
            print(f"wrote {path}")
    except (ValueError, FileNotFoundError) as exc:
        print(f"agci ris {args.action}: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agci", description="Adaptive Global Context Injection for VLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="AGCI on a small LLaVA built offline: weights, feature change, logits")
    demo.add_argument("--out", default="agci-demo", help="output folder (default: agci-demo)")
    demo.add_argument("--lambda", dest="lambdas", type=_lambdas, default=[0.0, 0.25, 0.5, 1.0],
                      help="comma-separated lambdas (default: 0,0.25,0.5,1)")  # fmt: skip
    demo.add_argument("--impl", default="auto", choices=["auto", "reference", "triton"])
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    setl = sub.add_parser("set-lambda", help="write global_context_broadcast_lambda into a checkpoint's config.json")
    setl.add_argument("checkpoint", help="checkpoint folder (or its config.json)")
    setl.add_argument("value", help="lambda >= 0; 0 turns AGCI off")
    setl.set_defaults(func=_cmd_set_lambda)
    probe = sub.add_parser(
        "probe",
        help="position / similarity / occlusion probes of spatial bias, for a sweep of lambdas (the main job)",
        description="Without --model: the tiny probe VLM shipped with agci on a synthetic probe set, offline.",
    )
    probe.add_argument("--model", help="checkpoint folder or hub id (default: the embedded tiny probe VLM)")
    probe.add_argument(
        "--data",
        help="probe-set folder (agci probe-set) or a records JSONL/JSON (image, caption, position, answer); "
        "default: build one from --source",
    )
    probe.add_argument("--source", default="synthetic:60", help="pairs to build the set from when --data is not given")
    probe.add_argument("--image-root", help="folder that record image paths are relative to (default: the data's)")
    probe.add_argument("--out", default="agci-probe", help="output folder; rerunning into it resumes")
    probe.add_argument(
        "--lambda", dest="lambdas", type=_lambdas, default=None,
        help="comma-separated lambdas, e.g. 0,0.25,0.5,1 (default: 0 and the checkpoint's value, or 0.5)",
    )  # fmt: skip
    probe.add_argument("--tasks", default="position,similarity,occlusion")
    probe.add_argument("--batch-size", type=int, default=16)
    probe.add_argument("--prefetch", type=int, default=1,
                       help="batches read and put through the processor ahead, on a thread, while the model runs "
                            "(0: none)")  # fmt: skip
    probe.add_argument("--generate", action="store_true", help="score by generating and parsing, as the reference")
    probe.add_argument("--max-new-tokens", type=int, default=128)
    probe.add_argument("--occlusion-samples", type=int, default=9, help="positive samples mapped (spread over cells)")
    probe.add_argument("--mask", type=int, default=42, help="occlusion square size in canvas pixels")
    probe.add_argument("--pooling", default="max", choices=["max", "mean"], help="similarity pooling over tokens")
    probe.add_argument("--limit", type=int, help="score only the first N records of each task")
    probe.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    probe.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the model's; accelerate's when launched)")
    probe.add_argument("--attn", help="attn_implementation, e.g. sdpa, eager, flash_attention_2")
    probe.add_argument("--seed", type=int, default=0)
    probe.set_defaults(func=_cmd_probe)
    pset = sub.add_parser("probe-set", help="build a position + similarity probe set (with a manifest) from pairs")
    pset.add_argument("out", help="output folder")
    pset.add_argument(
        "--source",
        default="synthetic:60",
        help="synthetic[:N], synthetic-textured[:N], a folder, a .jsonl/.csv of image+caption, hf:NAME[:SPLIT]",
    )
    pset.add_argument("--seed", type=int, default=0)
    pset.add_argument("--canvas", type=int, default=840)
    pset.add_argument("--negatives-per-pair", type=int, default=3)
    pset.add_argument("--no-similarity", action="store_true")
    pset.add_argument("--max-pairs", type=int)
    pset.add_argument("--image-column", default="image")
    pset.add_argument("--caption-column", default="caption")
    pset.add_argument("--from-manifest", help="rebuild exactly the set that this manifest.json describes")
    pset.set_defaults(func=_cmd_probe_set)
    ev = sub.add_parser(
        "eval",
        help="the paper's benchmark suite through lmms-eval at lambda 0 and the given lambdas, with a comparison",
        description="Runs lmms-eval once per lambda (resumable) and writes comparison.md/json/png to --out.",
    )
    ev.add_argument("model_path", help="checkpoint folder or hub id of a supported VLM")
    ev.add_argument("--lambda", dest="lambdas", type=_lambdas, default=[0.5],
                    help="comma-separated lambdas compared with 0 (default: 0.5)")  # fmt: skip
    ev.add_argument("--tasks", default="agci_paper", help="agci_paper (the suite), agci_crpe, or task names")
    ev.add_argument("--data", help="folder with local copies of the benchmarks (layout in README); default: the hub")
    ev.add_argument("--out", default="agci-eval", help="output folder; rerunning into it skips finished lambdas")
    ev.add_argument("--lmms-model", help="agci_qwen2_5_vl, agci_llava, ... (default: from config.json)")
    ev.add_argument("--batch-size", type=int, default=1)
    ev.add_argument("--limit", type=int, help="first N documents per task (for trying it out)")
    ev.add_argument("--model-args", default="", help="more lmms-eval model_args, e.g. dtype=bfloat16,max_pixels=...")
    ev.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    ev.set_defaults(func=_cmd_eval)
    lf = sub.add_parser(
        "llamafactory",
        help="LLaMA-Factory with AGCI: convert LLaVA-v1.5 data, train and export with AGCI in every process",
        description="train/export check the recipe (supported model, lambda in config.json, template) and run "
        "llamafactory-cli with AGCI_AUTOPATCH=1, so that processes LLaMA-Factory re-launches keep AGCI.",
    )
    lf_sub = lf.add_subparsers(dest="action", required=True)
    data = lf_sub.add_parser("data", help="LLaVA-v1.5 instruction JSON -> LLaMA-Factory format, seeded sample")
    data.add_argument("source", help="e.g. llava_v1_5_mix665k.json")
    data.add_argument("--out", default="data", help="dataset_dir for LLaMA-Factory (default: data)")
    data.add_argument("-n", type=int, default=10000, help="conversations to sample (default: 10000, as the paper)")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--name", default="llava_v1_5_agci_10k", help="dataset name in dataset_info.json")
    data.add_argument("--with-text-only", action="store_true", help="keep conversations without an image")
    for action in ("train", "export"):
        cmd = lf_sub.add_parser(action, help=f"llamafactory-cli {action} RECIPE with AGCI_AUTOPATCH=1")
        cmd.add_argument("recipe", help="LLaMA-Factory YAML (integrations/llamafactory/recipes/)")
        cmd.add_argument("extra", nargs=argparse.REMAINDER, help="more arguments for llamafactory-cli")
    lf.set_defaults(func=_cmd_llamafactory)
    rp = sub.add_parser("resampler-probe", help="diagnostic probes of Q-Former resamplers (BLIP-2, InstructBLIP)")
    rp_sub = rp.add_subparsers(dest="action", required=True)
    b = rp_sub.add_parser("build-rcm", help="Region Cell Matching from RefCOCOg (umd), with a manifest")
    b.add_argument("--refs", required=True, help="refs(umd).p of RefCOCOg")
    b.add_argument("--instances", required=True, help="COCO instances.json of the refs")
    b.add_argument("--out", required=True)
    b.add_argument("--seed", type=int, default=0)
    e = rp_sub.add_parser("extract", help="query outputs of every layer, cached once (resumable)")
    e.add_argument("--model", required=True, help="BLIP-2 stage-1 (e.g. Salesforce/blip2-itm-vit-g) or InstructBLIP")
    e.add_argument("--task", required=True, choices=["refcocog", "rcm", "vsr"])
    e.add_argument("--data", required=True, help="refcocog: refs(umd).p; rcm: build-rcm folder; vsr: random split")
    e.add_argument("--instances", help="refcocog: COCO instances.json")
    e.add_argument("--images", required=True, help="folder the items' image paths are relative to")
    e.add_argument("--out", required=True, help="cache folder")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default="cpu")
    e.add_argument("--dtype", default="float32")
    e.add_argument("--no-text", action="store_true", help="queries only, without the text in the Q-Former")
    t = rp_sub.add_parser("train", help="a frozen probe per layer on cached features")
    t.add_argument("--cache", required=True)
    t.add_argument("--task", required=True, choices=["refcocog", "rcm", "vsr"])
    t.add_argument("--layers", type=_layers, default=None, help="1-based, comma-separated, or all (default)")
    t.add_argument("--probe", default="linear", choices=["linear", "mlp2", "mlp4"])
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--patience", type=int, help="early stopping (the study uses 10 for RCM)")
    t.add_argument("--giou-weight", type=float, default=1.0)
    t.add_argument("--l1-weight", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--joint", action="store_true", help="fine-tune the resampler with the probe (needs --images)")
    t.add_argument("--images", help="the images folder, for --joint")
    t.add_argument("--out", required=True, help="results folder (results.jsonl, per_layer.png); resumes")
    s_ = rp_sub.add_parser("search", help="Bayesian hyper-parameter search (optuna) for one layer")
    s_.add_argument("--cache", required=True)
    s_.add_argument("--task", required=True, choices=["refcocog", "rcm", "vsr"])
    s_.add_argument("--layer", type=int, required=True, help="1-based")
    s_.add_argument("--probe", default="linear", choices=["linear", "mlp2", "mlp4"])
    s_.add_argument("--trials", type=int, default=10)
    s_.add_argument("--seed", type=int, default=0)
    s_.add_argument("--device", default="cpu")
    s_.add_argument("--out", required=True)
    r = rp_sub.add_parser("report", help="per-layer curve, and the best layer's accuracy per group (Kendall tau)")
    r.add_argument("run", help="the --out folder of train")
    r.add_argument("--cache", required=True, help="the feature cache the run trained on")
    r.add_argument("--task", required=True, choices=["refcocog", "rcm", "vsr"])
    rp.set_defaults(func=_cmd_resampler_probe)
    ris = sub.add_parser("ris", help="mid-layer zero-shot referring segmentation with CLIP / SigLIP / SigLIP2")
    ris_sub = ris.add_subparsers(dest="action", required=True)
    ev_ = ris_sub.add_parser("evaluate", help="mIoU, oIoU and Prec@X on RefCOCO/+/g (REFER files), resumable")
    show = ris_sub.add_parser("show", help="the map, regions and chosen mask for one image and expression")
    for cmd in (ev_, show):
        cmd.add_argument("--model", required=True, help="CLIP, SigLIP or SigLIP2 checkpoint folder or hub id")
        proposals_help = "disk:FOLDER (COCO RLE json or PNG masks per image), mask2former:CKPT or sam:CKPT"
        cmd.add_argument("--proposals", required=True, help=proposals_help)
        cmd.add_argument("--mode", default="full", choices=["full", "global", "pmap"],
                         help="full; global: global score only; pmap: map regions only")  # fmt: skip
        cmd.add_argument("--layer", type=int, help="1-based layer of the map (default: two thirds up, 8 of 12)")
        cmd.add_argument("--normalise", default="channel", choices=["channel", "patch"])
        cmd.add_argument("--device", default="cpu")
    ev_.add_argument("--refer", required=True, help="REFER root: <root>/<dataset>/refs(<split_by>).p, instances.json")
    ev_.add_argument("--dataset", required=True, choices=["refcoco", "refcoco+", "refcocog"])
    ev_.add_argument("--split", required=True, help="val, testA, testB, test")
    ev_.add_argument("--split-by", help="unc, umd or google (default: unc; umd for refcocog)")
    ev_.add_argument("--images", required=True, help="COCO train2014 images folder")
    ev_.add_argument("--limit", type=int)
    ev_.add_argument("--v", type=float, help="crop vs whole-image weight of the global score (0.95 RefCOCO/+, 0.85 g)")
    ev_.add_argument("--translations", help="CSV: sent_id and one column per language")
    ev_.add_argument("--language", help="a column of --translations to ground with, or centroid (all of them)")
    ev_.add_argument("--out", required=True)
    show.add_argument("--image", required=True)
    show.add_argument("--text", required=True)
    show.add_argument("--out", required=True, help="PNG path")
    ris.set_defaults(func=_cmd_ris)
    info = sub.add_parser("info", help="versions, device and which implementation of the op will run")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
