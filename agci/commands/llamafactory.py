"""``agci llamafactory data|train|export``: LLaMA-Factory with AGCI in every process it starts."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..arguments import add_seed, refuse
from ..llamafactory import convert_llava, run


def register(subparsers) -> None:
    """``agci llamafactory data|train|export``."""
    lf = subparsers.add_parser(
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
    add_seed(data)
    data.add_argument("--name", default="llava_v1_5_agci_10k", help="dataset name in dataset_info.json")
    data.add_argument("--with-text-only", action="store_true", help="keep conversations without an image")
    for action in ("train", "export"):
        cmd = lf_sub.add_parser(action, help=f"llamafactory-cli {action} RECIPE with AGCI_AUTOPATCH=1")
        cmd.add_argument("recipe", help="LLaMA-Factory YAML (integrations/llamafactory/recipes/)")
        cmd.add_argument("extra", nargs=argparse.REMAINDER, help="more arguments for llamafactory-cli")
    lf.set_defaults(func=llamafactory_command)


def llamafactory_command(args) -> int:
    try:
        if args.action == "data":
            summary = convert_llava(
                Path(args.source), Path(args.out), n=args.n, seed=args.seed, name=args.name,
                with_text_only=args.with_text_only,
            )  # fmt: skip
            skipped = summary["skipped"] or "none"
            print(f"wrote {summary['written']} conversations to {args.out}/{args.name}.json (skipped: {skipped})")
            print(f"and the {args.name} entry in {args.out}/dataset_info.json")
            return 0
        return run(args.action, Path(args.recipe), args.extra)
    except (ValueError, FileNotFoundError, OSError) as exc:
        return refuse(f"llamafactory {args.action}", exc)
