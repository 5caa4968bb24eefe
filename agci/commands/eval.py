"""``agci eval``: its arguments and handler (lmms-eval is imported only when it runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..arguments import add_device, add_force, lambdas, refuse
from ..eval.engines import ENGINES


def register(subparsers) -> None:
    ev = subparsers.add_parser(
        "eval",
        help="the paper's benchmark suite through lmms-eval at lambda 0 and the given lambdas, with a comparison",
        description="Runs lmms-eval once per lambda (resumable) and writes comparison.md/json/png to --out.",
    )
    ev.add_argument("model_path", help="checkpoint folder or hub id of a supported VLM")
    ev.add_argument("--lambda", dest="lambdas", type=lambdas, default=[0.5],
                    help="comma-separated lambdas compared with 0 (default: 0.5)")  # fmt: skip
    ev.add_argument("--tasks", default="agci_paper", help="agci_paper (the suite), agci_crpe, or task names")
    ev.add_argument("--data", help="folder with local copies of the benchmarks (layout in README); default: the hub")
    ev.add_argument("--out", default="agci-eval", help="output folder; rerunning into it skips finished lambdas")
    add_force(ev)
    ev.add_argument("--engine", choices=ENGINES, default=ENGINES[0],
                    help="what runs the model: agci's lmms-eval models on transformers, or lmms-eval's vllm model "
                    "with agci's vLLM plugin (--model-args then go to vllm.LLM)")  # fmt: skip
    ev.add_argument("--lmms-model", help="agci_qwen2_5_vl, agci_llava, ... (default: from config.json)")
    ev.add_argument("--batch-size", type=int, default=1)
    ev.add_argument("--limit", type=int, help="first N documents per task (for trying it out)")
    ev.add_argument("--model-args", default="", help="more lmms-eval model_args, e.g. dtype=bfloat16,max_pixels=...")
    add_device(ev, help="cpu, cuda, cuda:1 ...")
    ev.set_defaults(func=eval_command)


EXTRA_HINT = "install the evaluation extra: pip install 'agci[eval]'"


def eval_command(args) -> int:
    import importlib.util

    if importlib.util.find_spec("lmms_eval") is None:
        return refuse("eval", f"lmms-eval is not installed; {EXTRA_HINT}")
    try:
        from ..eval import suite
    except ImportError as exc:
        return refuse("eval", f"{exc}; {EXTRA_HINT}")
    try:
        summary = suite.run(suite.EvalConfig(
            args.model_path, tuple(args.lambdas), Path(args.out),
            tuple(t.strip() for t in args.tasks.split(",") if t.strip()), data=Path(args.data) if args.data else None,
            model=args.lmms_model, batch_size=args.batch_size, limit=args.limit, model_args=args.model_args,
            device=args.device, force=args.force, engine=args.engine,
        ))  # fmt: skip
    except ModuleNotFoundError as exc:
        return refuse("eval", f"{exc}; {EXTRA_HINT}")
    except (ValueError, FileNotFoundError) as exc:
        return refuse("eval", exc)
    except subprocess.CalledProcessError as exc:
        print(f"agci eval: lmms-eval failed (exit {exc.returncode}); results so far are kept", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"agci eval: {exc}; results so far are kept", file=sys.stderr)
        return 1
    print((Path(args.out) / "comparison.md").read_text())
    print(f"wrote {args.out}/comparison.md, comparison.json and comparison.png ({len(summary['rows'])} rows)")
    return 0
