"""An ``agci probe`` output folder: where each lambda's rows live, and ``summary.json`` with its heatmaps,
computed from the rows on disk."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..configs import format_lambda
from .adapters import BASE as BASE_LABEL
from .probe_sets import POSITIONS


def lambda_dir(out: Path, lam: float, model: str | None = None) -> Path:
    """Where one lambda's rows live: ``OUT/lambda_<lambda written exactly>``, or ``OUT/<model>/lambda_...``
    when a run probes several models (the base and adapters)."""
    return (out / model if model else out) / f"lambda_{format_lambda(lam)}"


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


def _per_lambda(folder_of, lambdas, tasks) -> dict:
    from .metrics import occlusion_summary, position_summary, similarity_summary

    per_lambda: dict = {}
    for lam in lambdas:
        entry = {}
        for task in tasks:
            _, rows = read_rows(folder_of(lam), task)
            entry[task] = {"position": position_summary, "similarity": similarity_summary,
                           "occlusion": occlusion_summary}[task](rows)  # fmt: skip
        per_lambda[format_lambda(lam)] = entry
    return per_lambda


HEATMAPS = (  # figure, task, summary key, title, colour-bar label, fixed range
    ("position_accuracy", "position", "positive_accuracy_per_cell",
     "accuracy when the target is in each cell", "accuracy", (0, 1)),
    ("yes_rate", "position", "yes_rate_per_cell",
     "rate of Yes answers per cell (positives and negatives)", "Yes rate", (0, 1)),
    ("similarity", "similarity", "mean_similarity_per_cell",
     "image-caption cosine ({pooling} pooling) per cell", "cosine", (None, None)),
    ("occlusion_share", "occlusion", "target_cell_share_per_cell",
     "share of the answer's sensitivity inside the target cell", "share", (0, 1)),
)  # fmt: skip


def _mean_cells(maps: list[list]) -> list | None:
    """The cell-wise mean of per-seed maps (9 values, or 9 drop maps); None where a seed lacks the cell."""
    if not maps or any(m is None for m in maps):
        return None
    out = []
    for cells in zip(*maps, strict=True):
        if any(c is None for c in cells):
            out.append(None)
        elif isinstance(cells[0], list):
            out.append([[sum(v) / len(v) for v in zip(*rows, strict=True)] for rows in zip(*cells, strict=True)])
        else:
            out.append(sum(cells) / len(cells))
    return out


def _columns(models: dict, tasks, task: str, key: str) -> dict[str, list]:
    """Heatmap columns: per lambda for one model; else per setting (seeds averaged) and lambda."""
    if task not in tasks:
        return {}
    columns: dict[str, list] = {}
    for setting, members in _settings(models).items():
        for lam in models[members[0]]["lambdas"]:
            maps = [models[m]["lambdas"].get(lam, {}).get(task, {}).get(key) for m in members]
            mean = _mean_cells(maps)
            if mean is not None:
                seeds = f" ({len(members)} seeds)" if len(members) > 1 else ""
                name = f"lambda = {lam}" if setting is None else f"{setting}{seeds}\nlambda = {lam}"
                columns[name] = mean
    return columns


def _settings(models: dict) -> dict:
    """Model labels grouped by setting (the label without ``-seed<N>``), in order; one run without adapters
    is the setting None."""
    from .adapters import split_seed

    groups: dict = {}
    for label in models:
        groups.setdefault(split_seed(label)[0] if label else None, []).append(label)
    return groups


def summarise(out: Path, lambdas: dict, tasks, model_path, data, manifest, cfg, models) -> dict:
    """summary.json's content and the PNGs, from the JSONL files on disk. ``lambdas``: each model's."""
    import torch
    import transformers

    from . import plots

    several = len(models) > 1
    per_model = {}
    for m in models:
        label = m.label if several else None
        per_model[label] = {"lambdas": _per_lambda(lambda lam, label=label: lambda_dir(out, lam, label),
                                                   lambdas[m.label], tasks)}  # fmt: skip
        if several:
            per_model[label].update(adapter=m.adapter and str(m.adapter), trained_lambda=m.trained_lambda)
    name = Path(model_path).name
    figures = {}
    columns = {key: _columns(per_model, tasks, task, key) for _, task, key, *_ in HEATMAPS}
    notes = {}
    if several:
        differences = _differences(list(columns["positive_accuracy_per_cell"]))
    else:
        names = list(columns["positive_accuracy_per_cell"] or columns["mean_similarity_per_cell"])
        differences = [(n, "lambda = 0") for n in names if n != "lambda = 0"]
        for lam, entry in per_model[None]["lambdas"].items():
            p = entry.get("position", {}).get("position_test", {}).get("p_value")
            if p is not None:
                notes[f"lambda = {lam}"] = f"Cochran's Q p = {p:.2g}"
    for figure, _task, key, title, label, (lo, hi) in HEATMAPS:
        if columns[key]:
            title = f"{name}: {title.format(pooling=cfg.pooling)}"
            path = plots.cell_heatmaps(columns[key], out / f"{figure}.png", title, label, lo, hi,
                                       notes if figure == "position_accuracy" else None, differences)  # fmt: skip
            figures[figure] = str(path)
    maps = _columns(per_model, tasks, "occlusion", "mean_drop_map_per_cell")
    if maps:
        title = f"{name}: drop in log p(answer) when each {cfg.mask}px square is masked"
        maps = {k.replace("\n", ", "): v for k, v in maps.items()}
        figures["occlusion_maps"] = str(plots.occlusion_maps(maps, out / "occlusion_maps.png", title))
    set_keys = ("options", "questions", "positives", "negatives", "skipped")
    summary = {
        "model": str(model_path),
        "data": str(data),
        "probe_set": manifest and {k: manifest[k] for k in set_keys if k in manifest},
        "positions": list(POSITIONS),
        "scoring": "generate-and-parse" if cfg.generate else "next-token Yes/No",
    }  # fmt: skip
    if several:
        summary["models"] = per_model
        comparisons = _comparisons(per_model) if "position" in tasks else {}
        if comparisons:
            summary["comparisons"] = comparisons
            figures["seeds"] = str(plots.seed_figures(comparisons, out / "seeds.png", f"{name}: seeds compared"))
    else:
        summary["lambdas"] = per_model[None]["lambdas"]
    summary.update(
        figures=figures,
        config={k: v for k, v in asdict(cfg).items() if k not in ("progress", "force")},
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
    )
    return summary


def _differences(names: list[str]) -> list[tuple[str, str]]:
    """Each setting against the base, and the last two settings against each other."""
    base = [n for n in names if n.split("\n")[0] == BASE_LABEL]
    others = [n for n in names if n not in base]
    pairs = [(n, base[0]) for n in others] if base else []
    if len(others) >= 2:
        pairs.append((others[-1], others[-2]))
    return pairs


def _comparisons(per_model: dict) -> dict:
    """Settings seeded alike (two or more shared seeds), each against the next: per-seed figures and tests."""
    from .adapters import split_seed
    from .metrics import compare_settings

    seeded: dict = {}
    for label, entry in per_model.items():
        setting, seed = split_seed(label)
        if seed is not None and len(entry["lambdas"]) == 1:
            position = next(iter(entry["lambdas"].values())).get("position")
            if position:
                seeded.setdefault(setting, {})[seed] = position
    names = list(seeded)
    out = {}
    for first, second in zip(names, names[1:], strict=False):
        if len(set(seeded[first]) & set(seeded[second])) >= 2:
            out[f"{second} vs {first}"] = {"first": first, "second": second,
                                           **compare_settings(seeded[first], seeded[second])}  # fmt: skip
    return out
