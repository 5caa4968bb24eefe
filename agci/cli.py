"""The ``agci`` entry point; the commands are in :mod:`agci.commands`, one module each."""

from __future__ import annotations

import sys

from .commands import INTERRUPTED, build_parser, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
