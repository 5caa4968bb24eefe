"""``agci probe``: its arguments, handler and the summary it prints."""

from __future__ import annotations

from ..arguments import add_device, add_force, add_seed, dtype_arg, lambdas, refuse


def register(subparsers) -> None:
    probe = subparsers.add_parser(
        "probe",
        help="position / similarity / occlusion probes of spatial bias, for a sweep of lambdas (the main job)",
        description="Without --model: the tiny probe VLM shipped with agci on a synthetic probe set, offline.",
    )
    probe.add_argument("--model", help="checkpoint folder or hub id (default: the embedded tiny probe VLM)")
    probe.add_argument(
        "--adapter",
        help="comma-separated PEFT adapter folders, each probed next to the base model on the same batches "
        "(at the lambda in its agci-adapter.json unless --lambda is given); default without --model: the LoRA "
        "adapters shipped with agci (agci.bias.training.lora); 'none': the base alone",
    )
    probe.add_argument(
        "--data",
        help="probe-set folder (agci probe-set) or a records JSONL/JSON (image, caption, position, answer); "
        "default: build one from --source",
    )
    probe.add_argument("--source", default="synthetic:60", help="pairs to build the set from when --data is not given")
    probe.add_argument("--image-root", help="folder that record image paths are relative to (default: the data's)")
    probe.add_argument("--out", default="agci-probe",
                       help="output folder; a rerun with the same model, data and options resumes")  # fmt: skip
    add_force(probe)
    probe.add_argument(
        "--lambda", dest="lambdas", type=lambdas, default=None,
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
    probe.add_argument("--dtype", default="auto", type=dtype_arg, help="auto, float32, bfloat16, float16")
    add_device(probe, help="cpu, cuda, cuda:1 ... (default: the model's; accelerate's when launched)")
    probe.add_argument("--attn", help="attn_implementation, e.g. sdpa, eager, flash_attention_2")
    add_seed(probe)
    probe.set_defaults(func=run_probe_command)


def run_probe_command(args) -> int:
    from ..bias.runner import ProbeConfig, run_probe

    try:
        cfg = ProbeConfig(
            model=args.model, adapters=_adapters(args.adapter), data=args.data, source=args.source, out=args.out,
            lambdas=args.lambdas,
            tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()), batch_size=args.batch_size,
            prefetch=args.prefetch, generate=args.generate, max_new_tokens=args.max_new_tokens,
            occlusion_samples=args.occlusion_samples, mask=args.mask, pooling=args.pooling, limit=args.limit,
            image_root=args.image_root, dtype=args.dtype, device=args.device, attn=args.attn, seed=args.seed,
            force=args.force,
        )  # fmt: skip
        summary = run_probe(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        return refuse("probe", exc)
    if summary is not None:
        print_probe_summary(summary)
        rows = f"{args.out}/<model>/lambda_*/" if "models" in summary else f"{args.out}/lambda_*/"
        print(f"wrote {args.out}/summary.json, per-sample JSONL under {rows} and the PNGs:")
        for path in summary["figures"].values():
            print(f"  {path}")
    return 0


def _adapters(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if value.strip().lower() == "none":
        return ()
    return tuple(v.strip() for v in value.split(",") if v.strip())


def print_probe_summary(summary: dict) -> None:
    """One line per model and lambda: accuracy, the position spread and test, the similarity and occlusion
    spreads; then each comparison of two seeded settings."""
    models = summary.get("models") or {None: {"lambdas": summary["lambdas"]}}
    for label, entry in models.items():
        for lam, tasks in entry["lambdas"].items():
            print(("" if label is None else f"{label} ") + f"lambda {lam}: " + "; ".join(_figures(tasks)))
    for name, c in summary.get("comparisons", {}).items():
        parts = []
        for key, test in c["paired_over_seeds"].items():
            if test["mean_difference"] is not None:
                parts.append(f"{key} {test['mean_difference']:+.3f} (p = {test['p_value']:.2g})")
        sign = c["cells"]["sign"]
        parts.append(f"cells higher/lower {sign['higher']}/{sign['lower']} (sign test p = {sign['p_value']:.2g})")
        print(f"{name}, {len(c['seeds'])} seeds, mean paired difference: " + "; ".join(parts))


def _figures(tasks: dict) -> list[str]:
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
    return parts
