"""The ``agci`` command: one module per top-level command, each with ``register(subparsers)`` that adds its parser
and its handler; this package lists them, in the order ``agci --help`` shows them, and runs the one asked for."""

from __future__ import annotations

import importlib
import sys

from ..arguments import Parser

# module -> the top-level commands it registers
COMMANDS = ("demo", "set_lambda", "probe", "probe_set", "eval", "llamafactory", "resampler_probe", "ris", "families",
            "info")  # fmt: skip
INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def build_parser() -> Parser:
    parser = Parser(prog="agci", description="Adaptive Global Context Injection for VLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        claims_a_folder = hasattr(args, "out") and args.command != "demo"  # demo starts over every time
        resumes = "; what was written is kept, and rerunning the same command resumes" if claims_a_folder else ""
        print(f"\nagci {args.command}: interrupted{resumes}", file=sys.stderr)
        return INTERRUPTED
