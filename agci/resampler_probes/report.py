"""Reports on probe runs: per-layer curves (``results.jsonl`` of ``agci resampler-probe train``) and
breakdowns of a layer's test predictions (super-categories with Kendall's tau, VSR meta-categories,
RCM cells), each as JSON or markdown plus a PNG."""

from __future__ import annotations

from pathlib import Path

from ..inputs import read_jsonl
from ..runs import save_figure, write_json, write_text

RESULTS = "the results.jsonl of `agci resampler-probe train` (give the run's --out folder)"
ITEMS = "the items.jsonl of a feature cache (give the --cache the run trained on)"


def per_layer(results: Path, out: Path) -> dict:
    rows = read_jsonl(results, RESULTS, keys=("task", "probe", "layer", "val", "test"))
    if not rows:
        raise ValueError(f"{results}: no results yet")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple, list[dict]] = {}
    for r in rows:
        curves.setdefault((r["task"], r["probe"]), []).append(r)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    lines = ["| task | probe | layer | val | test |", "|---|---|---|---|---|"]
    for (task, probe), rs in sorted(curves.items()):
        rs = sorted(rs, key=lambda r: r["layer"])
        ax.plot([r["layer"] + 1 for r in rs], [r["test"] if r["test"] is not None else r["val"] for r in rs],
                marker="o", label=f"{task} / {probe}")  # fmt: skip
        lines += [f"| {task} | {probe} | {r['layer'] + 1} | {r['val']:.4f} | "
                  f"{'n/a' if r['test'] is None else format(r['test'], '.4f')} |" for r in rs]  # fmt: skip
    ax.set_xlabel("resampler layer")
    ax.set_ylabel("test metric (val where no test split)")
    ax.set_title("Probe accuracy per layer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "per_layer.png", dpi=120)
    plt.close(fig)
    write_text(out / "per_layer.md", "\n".join(lines) + "\n")
    return {"curves": {f"{t}/{p}": len(rs) for (t, p), rs in curves.items()}, "figure": str(out / "per_layer.png")}


# Relation -> meta-category, after Table 1 of the VSR paper (Liu et al., 2023). Pass your own mapping
# (a JSON object) to `breakdown` where your copy of the data differs.
VSR_META_CATEGORIES = {
    "Adjacency": ["adjacent to", "alongside", "at the side of", "at the right side of", "at the left side of",
                  "attached to", "at the back of", "ahead of", "against", "at the edge of"],
    "Directional": ["off", "past", "toward", "down", "deep down", "up", "away from", "along", "around", "from",
                    "into", "to", "across", "across from", "through", "down from"],
    "Orientation": ["facing", "facing away from", "parallel to", "perpendicular to"],
    "Projective": ["on top of", "beneath", "beside", "behind", "left of", "right of", "under", "in front of",
                   "below", "above", "over", "in the middle of"],
    "Proximity": ["by", "close to", "near", "far from", "far away from"],
    "Topological": ["connected to", "detached from", "has as a part", "part of", "contains", "within", "at", "on",
                    "in", "with", "surrounding", "among", "consists of", "out of", "between", "inside", "outside",
                    "touching"],
    "Unallocated": ["beyond", "next to", "opposite to", "after", "enclosed by"],
}  # fmt: skip


def _kendall(x: list[float], y: list[float]) -> dict:
    from scipy.stats import kendalltau

    if len(x) < 3:
        return {"tau": None, "p": None, "n": len(x)}
    tau, p = kendalltau(x, y)
    return {
        "tau": None if tau != tau else round(float(tau), 4),
        "p": None if p != p else round(float(p), 4),
        "n": len(x),
    }


def breakdown(cache: Path, predictions: Path, task: str, out: Path, meta_categories: dict | None = None) -> dict:
    """Accuracy per group of test items: RefCOCOg per COCO super-category, with Kendall's tau between that
    accuracy and the super-category's training count, mean box area and mean distance of the box centre
    from the image centre; VSR per relation meta-category; RCM per cell. JSON and a bar chart in ``out``."""
    items = {it["id"]: it for it in read_jsonl(Path(cache) / "items.jsonl", ITEMS, keys=("id", "split", "target"))}
    preds = read_jsonl(predictions, "the test predictions that `agci resampler-probe train` writes",
                       keys=("id", "correct"))  # fmt: skip
    unknown = [p["id"] for p in preds if p["id"] not in items]
    if unknown:
        raise ValueError(f"{predictions}: item {unknown[0]!r} is not in the cache {cache}; give the --cache the run "
                         "trained on")  # fmt: skip
    needs = {"refcocog": ("category", "supercategory"), "rcm": ("cell",)}.get(task, ())
    lacking = next((it for it in items.values() if any(k not in it for k in needs)), None)
    if lacking is not None:
        raise ValueError(f"{cache}/items.jsonl: item {lacking['id']!r} lacks {', '.join(map(repr, needs))}, which "
                         f"--task {task} groups by; give the --task the cache was extracted for")  # fmt: skip
    if task == "refcocog":
        key = lambda it: it["supercategory"] or it["category"]  # noqa: E731
    elif task == "vsr":
        lookup = {rel: meta for meta, rels in (meta_categories or VSR_META_CATEGORIES).items() for rel in rels}
        key = lambda it: lookup.get(it.get("relation", ""), "other")  # noqa: E731
    else:
        from .data import CELL_NAMES

        key = lambda it: CELL_NAMES[it["cell"]]  # noqa: E731
    groups: dict[str, list[bool]] = {}
    for p in preds:
        groups.setdefault(key(items[p["id"]]), []).append(bool(p["correct"]))
    table = {g: {"accuracy": sum(v) / len(v), "test_items": len(v)} for g, v in sorted(groups.items())}
    summary: dict = {"task": task, "groups": table}
    if task == "refcocog":
        train = [it for it in items.values() if it["split"] == "train"]
        for g in table:
            mine = [it for it in train if key(it) == g]
            table[g]["train_count"] = len(mine)
            table[g]["mean_area"] = sum(it["target"][2] * it["target"][3] for it in mine) / max(1, len(mine))
            table[g]["mean_centre_distance"] = sum(
                ((it["target"][0] - 0.5) ** 2 + (it["target"][1] - 0.5) ** 2) ** 0.5 for it in mine
            ) / max(1, len(mine))
        acc = [table[g]["accuracy"] for g in table]
        summary["kendall_tau"] = {
            factor: _kendall(acc, [table[g][factor] for g in table])
            for factor in ("train_count", "mean_area", "mean_centre_distance")
        }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(table) + 2), 3.5))
    ax.bar(list(table), [v["accuracy"] for v in table.values()])
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{task}: accuracy per group")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    fig.tight_layout()
    save_figure(fig, out / f"{task}_breakdown.png", dpi=120)
    plt.close(fig)
    write_json(out / f"{task}_breakdown.json", summary)
    return summary


def best_layer(run: Path, cache: Path, task: str) -> tuple[int, dict]:
    """The layer (0-based) of ``task`` with the best validation score in ``run/results.jsonl``, and the
    :func:`breakdown` of its test predictions (written under ``run``)."""
    run = Path(run)
    rows = [r for r in read_jsonl(run / "results.jsonl", RESULTS, keys=("task", "probe", "layer", "val"))
            if r["task"] == task]  # fmt: skip
    if not rows:
        raise ValueError(f"{run}: no {task} results")
    best = max(rows, key=lambda r: r["val"])
    name = f"{task}-{best['probe']}-layer{best['layer'] + 1}.jsonl"
    return best["layer"], breakdown(Path(cache), run / "predictions" / name, task, run)
