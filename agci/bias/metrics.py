"""Summaries of scored probe samples: accuracy and Yes-rate per cell, and the bias figures."""

from __future__ import annotations

import math

from .probe_sets import POSITIONS

CENTRE = 4


def grid(values: list[float | None]) -> list[list[float | None]]:
    """Nine per-cell values as 3 rows of 3 (row-major, top-left first)."""
    return [values[r * 3 : r * 3 + 3] for r in range(3)]


def bias_figures(per_cell: list[float | None]) -> dict:
    """Spread (max - min), population std across cells, and centre minus the mean of the 8 border cells."""
    known = [v for v in per_cell if v is not None]
    if len(known) < 2:
        return {"spread": None, "std": None, "centre_minus_border": None, "best_cell": None, "worst_cell": None}
    mean = sum(known) / len(known)
    border = [v for i, v in enumerate(per_cell) if i != CENTRE and v is not None]
    centre = per_cell[CENTRE]
    best = max(range(9), key=lambda i: -math.inf if per_cell[i] is None else per_cell[i])
    worst = min(range(9), key=lambda i: math.inf if per_cell[i] is None else per_cell[i])
    return {
        "spread": max(known) - min(known),
        "std": math.sqrt(sum((v - mean) ** 2 for v in known) / len(known)),
        "centre_minus_border": None if centre is None or not border else centre - sum(border) / len(border),
        "best_cell": POSITIONS[best],
        "worst_cell": POSITIONS[worst],
    }


def _chi2_sf(x: float, df: int) -> float:
    """Upper tail of the chi-squared distribution for an even ``df`` (closed form, no scipy)."""
    half = x / 2
    return math.exp(-half) * sum(half**i / math.factorial(i) for i in range(df // 2))


def position_test(rows: list[dict]) -> dict:
    """Cochran's Q test that a target is found equally often in every cell.

    The position set shows the same pair in all 9 cells, so each pair is a block of 9 paired Yes/No
    outcomes; pairs with a positive question scored in every cell take part. A small p-value means the
    per-cell accuracies differ by more than chance would make them."""
    by_pair: dict[str, dict[int, int]] = {}
    for r in rows:
        if r.get("answer") == "Yes" and "prediction" in r and "pair" in r:
            by_pair.setdefault(r["pair"], {})[r["cell"]] = int(r["prediction"] == "Yes")
    blocks = [[cells[c] for c in range(9)] for cells in by_pair.values() if len(cells) == 9]
    out = {"test": "Cochran's Q", "pairs": len(blocks), "df": 8, "q": None, "p_value": None}
    row_totals = [sum(b) for b in blocks]
    total = sum(row_totals)
    denominator = 9 * total - sum(t * t for t in row_totals)
    if denominator > 0:
        columns = [sum(b[c] for b in blocks) for c in range(9)]
        q = 8 * (9 * sum(c * c for c in columns) - total * total) / denominator
        out.update(q=q, p_value=_chi2_sf(q, 8))
    elif blocks:  # every pair answered alike in all cells: no sign of a position effect
        out.update(q=0.0, p_value=1.0)
    return out


def _rate(hits: list[float], counts: list[int]) -> list[float | None]:
    return [h / c if c else None for h, c in zip(hits, counts, strict=False)]


def position_summary(rows: list[dict]) -> dict:
    """Overall and per-cell accuracy, Yes-rate per cell (all questions, and on negatives), bias figures."""
    scored = [r for r in rows if "prediction" in r]
    skipped = [r for r in rows if "skipped" in r]
    out: dict = {"questions": len(rows), "scored": len(scored), "skipped": len(skipped)}
    reasons: dict[str, int] = {}
    for r in skipped:
        key = r["skipped"].split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    out["skipped_reasons"] = reasons
    if not scored:
        return out
    out["accuracy"] = sum(r["prediction"] == r["answer"] for r in scored) / len(scored)
    out["unknown_answers"] = sum(r["prediction"] not in ("Yes", "No") for r in scored)
    for name, subset in (("positive", [r for r in scored if r["answer"] == "Yes"]),
                         ("negative", [r for r in scored if r["answer"] == "No"])):  # fmt: skip
        counts, hits, yes = [0] * 9, [0.0] * 9, [0.0] * 9
        for r in subset:
            c = r["cell"]
            counts[c] += 1
            hits[c] += r["prediction"] == r["answer"]
            yes[c] += r["prediction"] == "Yes"
        out[f"{name}_count_per_cell"] = counts
        out[f"{name}_accuracy_per_cell"] = _rate(hits, counts)
        out[f"{name}_yes_rate_per_cell"] = _rate(yes, counts)
    counts = [a + b for a, b in zip(out["positive_count_per_cell"], out["negative_count_per_cell"], strict=False)]
    yes_all = [sum(r["prediction"] == "Yes" for r in scored if r["cell"] == c) for c in range(9)]
    out["yes_rate_per_cell"] = _rate(yes_all, counts)
    out["accuracy_per_cell"] = _rate(
        [sum(r["prediction"] == r["answer"] for r in scored if r["cell"] == c) for c in range(9)], counts
    )
    out["bias"] = bias_figures(out["positive_accuracy_per_cell"])
    out["position_test"] = position_test(scored)
    if all("p_yes" in r for r in scored):
        p = [[r["p_yes"] for r in scored if r["cell"] == c and r["answer"] == "Yes"] for c in range(9)]
        out["positive_mean_p_yes_per_cell"] = [sum(v) / len(v) if v else None for v in p]
    return out


def similarity_summary(rows: list[dict]) -> dict:
    scored = [r for r in rows if "similarity" in r]
    per_cell = []
    for c in range(9):
        v = [r["similarity"] for r in scored if r["cell"] == c]
        per_cell.append(sum(v) / len(v) if v else None)
    return {"scored": len(scored), "skipped": sum("skipped" in r for r in rows),
            "mean_similarity_per_cell": per_cell, "bias": bias_figures(per_cell)}  # fmt: skip


def occlusion_summary(rows: list[dict]) -> dict:
    """Per target cell: the mean drop map, and the share of the total positive drop that falls inside the
    target's own cell (how much the answer rests on the right place)."""
    scored = [r for r in rows if "drops" in r]
    out: dict = {"scored": len(scored), "skipped": sum("skipped" in r for r in rows)}
    if not scored:
        return out
    share = []
    mean_maps = []
    for c in range(9):
        maps = [r["drops"] for r in scored if r["cell"] == c]
        if not maps:
            share.append(None)
            mean_maps.append(None)
            continue
        n = len(maps[0])
        mean = [[sum(m[i][j] for m in maps) / len(maps) for j in range(n)] for i in range(n)]
        mean_maps.append(mean)
        row, col = divmod(c, 3)
        inside = sum(
            max(0.0, mean[i][j])
            * _overlap(i, row * n / 3, (row + 1) * n / 3)
            * _overlap(j, col * n / 3, (col + 1) * n / 3)
            for i in range(n)
            for j in range(n)
        )
        total = sum(max(0.0, v) for line in mean for v in line)
        share.append(inside / total if total > 0 else None)
    out["target_cell_share_per_cell"] = share
    out["mean_drop_map_per_cell"] = mean_maps
    out["bias"] = bias_figures(share)
    return out


def _overlap(k: int, lo: float, hi: float) -> float:
    """Length of [k, k + 1) inside [lo, hi): a mask square's share in a cell along one axis."""
    return max(0.0, min(k + 1, hi) - max(k, lo))


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below the mean; use the symmetry
        return 1.0 - _incomplete_beta(1 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fmt: skip
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-14:
            break
    return front * result


def paired_t_test(differences: list[float]) -> dict:
    """Two-sided one-sample t-test that the mean of paired ``differences`` is 0."""
    n = len(differences)
    out = {"test": "paired t", "n": n, "mean_difference": None, "t": None, "p_value": None}
    if n < 2:
        return out
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    out["mean_difference"] = mean
    if sd == 0:
        out.update(t=None, p_value=1.0 if mean == 0 else 0.0)
        return out
    t = mean / (sd / math.sqrt(n))
    df = n - 1
    out.update(t=t, p_value=_incomplete_beta(df / (df + t * t), df / 2, 0.5))
    return out


def sign_test(differences: list[float]) -> dict:
    """Two-sided exact sign test (ties dropped) that positive and negative differences are equally likely."""
    up = sum(d > 0 for d in differences)
    down = sum(d < 0 for d in differences)
    n = up + down
    tail = sum(math.comb(n, k) for k in range(min(up, down) + 1)) / 2**n if n else 1.0
    return {"test": "sign", "higher": up, "lower": down, "ties": len(differences) - n, "p_value": min(1.0, 2 * tail)}


SEED_FIGURES = ("accuracy", "spread", "std", "centre_minus_border")


def _seed_figures(position: dict) -> dict:
    bias = position.get("bias", {})
    test = position.get("position_test", {})
    return {"accuracy": position.get("accuracy"), "spread": bias.get("spread"), "std": bias.get("std"),
            "centre_minus_border": bias.get("centre_minus_border"), "cochran_p": test.get("p_value"),
            "positive_accuracy_per_cell": position.get("positive_accuracy_per_cell")}  # fmt: skip


def compare_settings(first: dict[int, dict], second: dict[int, dict]) -> dict:
    """Two settings probed over the same seeds (each ``{seed: position summary}``): per-seed figures, and
    paired tests of ``second - first`` over seeds (each bias figure) and over seeds x cells (the accuracy
    when the target is in each cell)."""
    seeds = sorted(set(first) & set(second))
    per_seed = {s: {"first": _seed_figures(first[s]), "second": _seed_figures(second[s])} for s in seeds}
    tests = {}
    for key in SEED_FIGURES:
        pairs = [(f["first"][key], f["second"][key]) for f in per_seed.values()]
        tests[key] = paired_t_test([b - a for a, b in pairs if a is not None and b is not None])
    cells = [
        b - a
        for f in per_seed.values()
        for a, b in zip(
            f["first"]["positive_accuracy_per_cell"] or [],
            f["second"]["positive_accuracy_per_cell"] or [],
            strict=False,
        )  # fmt: skip
        if a is not None and b is not None
    ]
    return {"seeds": seeds, "per_seed": per_seed, "paired_over_seeds": tests,
            "cells": {"t": paired_t_test(cells), "sign": sign_test(cells)}}  # fmt: skip
