"""Evaluation with lmms-eval: AGCI models for every registry family, the paper's task suite, and
``agci eval`` (lambda 0 against the given lambdas, with a comparison table).

``TASKS_DIR`` holds agci's task YAMLs; pass it to ``lmms-eval --include_path``."""

from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"
