"""What every ``agci`` sub-command shares: argument types and the one-line error for bad input."""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (``agci probe: argument --lambda: ...``) instead of the usage
    block; the sub-command parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}; see `{self.prog} --help`\n")


def lambdas(text: str) -> list[float]:
    """argparse type of ``--lambda``: comma-separated numbers >= 0."""
    from .configs import parse_lambdas

    try:
        return parse_lambdas(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--lambda takes comma-separated numbers >= 0, e.g. 0,0.5,1 ({exc})") from exc


def refuse(command: str, exc: BaseException | str) -> int:
    """Print ``agci COMMAND: problem`` on stderr and return exit code 2 (bad input, not a bug)."""
    print(f"agci {command}: {exc}", file=sys.stderr)
    return 2


DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")


def check_dtype(text: str, option: str = "--dtype") -> str:
    """``text`` if it names a dtype agci loads models in (:data:`DTYPES`), else ValueError naming them."""
    name = str(text).strip().lower().removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"{option} {text!r} is not one of {', '.join(DTYPES)}")
    return name


def check_device(text: str, option: str = "--device") -> str:
    """``text`` if it names a device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...), else
    ValueError saying what is missing and what to give instead."""
    import torch

    try:
        device = torch.device(str(text).strip())
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{option} {text!r} is not a device; give cpu, cuda, cuda:1 ... ({exc})") from exc
    if device.type == "cpu":
        return str(device)
    backend = getattr(torch, device.type, None) if device.type != "mps" else torch.backends.mps
    available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    if not available:
        raise ValueError(
            f"{option} {text}: this machine has no {device.type} device; use --device cpu, or run where one is"
        )
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise ValueError(f"{option} {text}: this machine has {count} {device.type} device(s), numbered from 0")
    return str(device)


def _argparse_type(check, option: str):
    def parse(text: str) -> str:
        try:
            return check(text, option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{option} ")) from exc

    parse.__name__ = option.lstrip("-")
    return parse


dtype_arg = _argparse_type(check_dtype, "--dtype")
device_arg = _argparse_type(check_device, "--device")


# the options several commands share, defined once (each command keeps its own wording where it needs one)
FORCE_HELP = "delete --out's results of a run with other inputs and start over"


def add_force(parser, help: str = FORCE_HELP) -> None:
    parser.add_argument("--force", action="store_true", help=help)


def add_seed(parser) -> None:
    parser.add_argument("--seed", type=int, default=0)


def add_device(parser, default: str | None = None, help: str | None = None) -> None:
    parser.add_argument("--device", default=default, type=device_arg, help=help)
