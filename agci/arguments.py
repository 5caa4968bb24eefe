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
