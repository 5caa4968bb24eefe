"""The ``agci`` command: ``info``, ``set-lambda`` and ``demo`` live here; every other sub-command is
registered by the wing that runs it (``add_parser(subparsers)`` next to its code)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .arguments import Parser, lambdas, refuse


def demo_command(args) -> int:
    from .demo import print_summary, run_demo

    try:
        summary = run_demo(args.out, lambdas=args.lambdas, impl=args.impl, seed=args.seed)
    except FileExistsError as exc:
        return refuse("demo", exc)
    except OSError as exc:
        problem = exc.strerror or exc
        return refuse("demo", f"--out {args.out} cannot be written ({problem}); give a folder you can write to")
    print_summary(summary)
    print(f"wrote {args.out}/demo.json and {args.out}/demo.png")
    return 0


def info_command(args) -> int:
    import torch

    from . import __version__
    from .fingerprints import versions
    from .kernels import IMPL_ENV, resolve_impl, triton_available

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = resolve_impl("auto", torch.empty(0, device=device, dtype=torch.bfloat16))
    except ValueError as exc:
        return refuse("info", exc)
    print(f"agci {__version__}")
    installed = versions("torch", "triton")
    for name in ("torch", "transformers", "triton"):
        print(f"{name} {installed[name] or 'not installed'}")
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    print(f"triton kernels usable on {device}: {triton_available(device)}")
    print(f"impl='auto' on {device} bf16 runs: {chosen} (set {IMPL_ENV}=reference|triton to force)")
    return 0


def families_command(args) -> int:
    from .registry import GROUPINGS, HOOKS, markdown_table, text_table

    if args.markdown:
        print(markdown_table(), end="")
        return 0
    print(text_table(), end="")
    print("\nhook:")
    for name, what in HOOKS.items():
        print(f"  {name}: {what}")
    print("images from:")
    for name, what in GROUPINGS.items():
        print(f"  {name}: {what}")
    print("lmms-eval: also 'agci', which serves every family (read from the checkpoint's config)")
    return 0


def set_lambda_command(args) -> int:
    from .configs import LAMBDA_KEY, parse_lambda
    from .patches.discovery import check_model_type
    from .runs import write_text

    path = Path(args.checkpoint)
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        return refuse("set-lambda", f"no config.json at {config_path}; pass a checkpoint folder")
    try:
        value = parse_lambda(args.value)
    except ValueError as exc:
        if "is not a number" not in str(exc):
            return refuse("set-lambda", exc)
        return refuse(
            "set-lambda", f"lambda {args.value!r} is not a number; give a number >= 0, e.g. 0.5 (0 turns AGCI off)"
        )
    restore = "repair it, or restore the checkpoint's original config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return refuse(
            "set-lambda",
            f"{config_path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {restore}",
        )
    except UnicodeDecodeError as exc:
        return refuse("set-lambda", f"{config_path} is not UTF-8 text ({exc.reason} at byte {exc.start}); {restore}")
    except OSError as exc:
        return refuse("set-lambda", f"cannot read {config_path} ({exc.strerror or exc}); check its permissions")
    if not isinstance(config, dict):
        kinds = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}
        held = kinds.get(type(config), "null")
        return refuse("set-lambda", f"{config_path} holds {held}, not a JSON object of settings; {restore}")
    model_type = config.get("model_type")
    try:
        check_model_type(model_type, where=f"{config_path}: ")
    except ValueError as exc:
        return refuse("set-lambda", exc)
    previous = config.get(LAMBDA_KEY)
    config[LAMBDA_KEY] = value
    try:
        write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        return refuse(
            "set-lambda", f"cannot write {config_path} ({exc.strerror or exc}); check the folder's permissions"
        )
    print(f"{config_path}: {LAMBDA_KEY} {previous} -> {value} ({model_type})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import llamafactory
    from .bias import command as bias_command
    from .configs import LAMBDA_KEY
    from .eval import command as eval_command
    from .resampler_probes import command as resampler_probe_command
    from .ris import command as ris_command

    parser = Parser(prog="agci", description="Adaptive Global Context Injection for VLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="AGCI on a small LLaVA built offline: weights, feature change, logits")
    demo.add_argument("--out", default="agci-demo", help="output folder (default: agci-demo)")
    demo.add_argument("--lambda", dest="lambdas", type=lambdas, default=[0.0, 0.25, 0.5, 1.0],
                      help="comma-separated lambdas (default: 0,0.25,0.5,1)")  # fmt: skip
    demo.add_argument("--impl", default="auto", choices=["auto", "reference", "triton"])
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=demo_command)
    setl = sub.add_parser("set-lambda", help=f"write {LAMBDA_KEY} into a checkpoint's config.json")
    setl.add_argument("checkpoint", help="checkpoint folder (or its config.json)")
    setl.add_argument("value", help="lambda >= 0; 0 turns AGCI off")
    setl.set_defaults(func=set_lambda_command)
    bias_command.add_parser(sub)
    eval_command.add_parser(sub)
    llamafactory.add_parser(sub)
    resampler_probe_command.add_parser(sub)
    ris_command.add_parser(sub)
    fam = sub.add_parser("families", help="the supported model families: hook, grouping, versions, integrations")
    fam.add_argument("--markdown", action="store_true", help="the table as README shows it")
    fam.set_defaults(func=families_command)
    info = sub.add_parser("info", help="versions, device and which implementation of the op will run")
    info.set_defaults(func=info_command)
    return parser


INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        claims_a_folder = hasattr(args, "out") and args.command != "demo"  # demo starts over every time
        resumes = "; what was written is kept, and rerunning the same command resumes" if claims_a_folder else ""
        print(f"\nagci {args.command}: interrupted{resumes}", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
