"""An ``agci probe`` output folder: where each lambda's rows live, and ``summary.json`` with its heatmaps,
computed from the rows on disk."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..configs import format_lambda
from .probe_sets import POSITIONS


def lambda_dir(out: Path, lam: float) -> Path:
    """Where one lambda's rows live: ``OUT/lambda_<lambda written exactly>``."""
    return out / f"lambda_{format_lambda(lam)}"


def read_rows(folder: Path, task: str) -> tuple[set[str], list[dict]]:
    """The ids and rows of ``task`` in one lambda's folder (every rank's file; a line cut short is skipped)."""
    rows = []
    for path in sorted(folder.glob(f"{task}*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by an interruption: score it again
                continue
    return {r["id"] for r in rows}, rows


def summarise(out: Path, lambdas, tasks, model_path, data, manifest, cfg) -> dict:
    """summary.json's content and the PNGs, from the JSONL files on disk."""
    import torch
    import transformers

    from . import plots
    from .metrics import occlusion_summary, position_summary, similarity_summary

    per_lambda: dict = {}
    for lam in lambdas:
        folder = lambda_dir(out, lam)
        entry = {}
        for task in tasks:
            _, rows = read_rows(folder, task)
            entry[task] = {"position": position_summary, "similarity": similarity_summary,
                           "occlusion": occlusion_summary}[task](rows)  # fmt: skip
        per_lambda[format_lambda(lam)] = entry
    figures = {}
    lam_keys = {float(k): k for k in per_lambda}

    def collect(task, key):
        return {lam: per_lambda[k][task].get(key) for lam, k in lam_keys.items() if per_lambda[k][task].get(key)}

    name = Path(model_path).name
    heatmaps = [  # figure, task, summary key, title, colour-bar label, fixed range
        ("position_accuracy", "position", "positive_accuracy_per_cell",
         "accuracy when the target is in each cell", "accuracy", (0, 1)),
        ("yes_rate", "position", "yes_rate_per_cell",
         "rate of Yes answers per cell (positives and negatives)", "Yes rate", (0, 1)),
        ("similarity", "similarity", "mean_similarity_per_cell",
         f"image-caption cosine ({cfg.pooling} pooling) per cell", "cosine", (None, None)),
        ("occlusion_share", "occlusion", "target_cell_share_per_cell",
         "share of the answer's sensitivity inside the target cell", "share", (0, 1)),
    ]  # fmt: skip
    tests = collect("position", "position_test") if "position" in tasks else {}
    notes = {lam: f"Cochran's Q p = {t['p_value']:.2g}" for lam, t in tests.items() if t["p_value"] is not None}
    for figure, task, key, title, label, (lo, hi) in heatmaps:
        values = collect(task, key) if task in tasks else None
        if values:
            path = plots.cell_heatmaps(values, out / f"{figure}.png", f"{name}: {title}", label, lo, hi,
                                       notes if figure == "position_accuracy" else None)  # fmt: skip
            figures[figure] = str(path)
    maps = collect("occlusion", "mean_drop_map_per_cell") if "occlusion" in tasks else None
    if maps:
        title = f"{name}: drop in log p(answer) when each {cfg.mask}px square is masked"
        figures["occlusion_maps"] = str(plots.occlusion_maps(maps, out / "occlusion_maps.png", title))
    set_keys = ("options", "questions", "positives", "negatives", "skipped")
    return {
        "model": str(model_path),
        "data": str(data),
        "probe_set": manifest and {k: manifest[k] for k in set_keys if k in manifest},
        "positions": list(POSITIONS),
        "scoring": "generate-and-parse" if cfg.generate else "next-token Yes/No",
        "lambdas": per_lambda,
        "figures": figures,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress", "force")},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }  # fmt: skip
