"""Heatmaps of probe summaries (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from ..runs import save_figure
from .metrics import grid


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cells(ax, values, cmap, vmin, vmax, fmt="{:.2f}"):
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in row] for row in grid(values)], dtype=float)
    image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax)
    for r in range(3):
        for c in range(3):
            text = "n/a" if np.isnan(data[r, c]) else fmt.format(data[r, c])
            ax.text(c, r, text, ha="center", va="center", fontsize=10, color="black")
    ax.set_xticks([])
    ax.set_yticks([])
    return image


def cell_heatmaps(columns: dict[str, list], path: str | Path, title: str, label: str,
                  vmin: float | None = None, vmax: float | None = None, notes: dict[str, str] | None = None,
                  differences: list[tuple[str, str]] = ()) -> Path:  # fmt: skip
    """One 3 x 3 map per column on a shared scale (``notes`` adds a line under a column's title), then a row
    with the map of ``a - b`` for each ``(a, b)`` of ``differences``."""
    plt = _plt()
    names = list(columns)
    values = [v for name in names for v in columns[name] if v is not None]
    lo = vmin if vmin is not None else (min(values) if values else 0.0)
    hi = vmax if vmax is not None else (max(values) if values else 1.0)
    differences = [(a, b) for a, b in differences if a in columns and b in columns]
    width = max(len(names), len(differences))
    rows = 2 if differences else 1
    fig, axes = plt.subplots(rows, width, figsize=(3.2 * width, 3.2 * rows), squeeze=False)
    for k in range(width):
        if k >= len(names):
            axes[0][k].axis("off")
            continue
        image = _cells(axes[0][k], columns[names[k]], "viridis", lo, hi)
        note = (notes or {}).get(names[k])
        axes[0][k].set_title(names[k] + (f"\n{note}" if note else ""), fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label=label)
    if differences:
        deltas = [
            [None if x is None or y is None else x - y for x, y in zip(columns[a], columns[b], strict=False)]
            for a, b in differences
        ]
        span = max([abs(v) for d in deltas for v in d if v is not None] + [1e-6])
        for k in range(width):
            if k >= len(deltas):
                axes[1][k].axis("off")
                continue
            image = _cells(axes[1][k], deltas[k], "RdBu", -span, span, "{:+.2f}")
            axes[1][k].set_title(f"{differences[k][0]}\n- {differences[k][1]}", fontsize=9)
        fig.colorbar(image, ax=list(axes[1]), shrink=0.8, label="difference")
    fig.suptitle(title)
    path = Path(path)
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def occlusion_maps(per_row: dict[str, list], path: str | Path, title: str) -> Path:
    """Mean drop map per target cell (rows: the models or lambdas; columns: the 9 target cells)."""
    import numpy as np

    plt = _plt()
    names = list(per_row)
    maps = [m for name in names for m in per_row[name] if m is not None]
    span = max([float(np.abs(np.array(m)).max()) for m in maps] + [1e-6])
    fig, axes = plt.subplots(len(names), 9, figsize=(15, 1.9 * len(names) + 0.6), squeeze=False)
    from .probe_sets import POSITIONS

    for r, name in enumerate(names):
        for c in range(9):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            m = per_row[name][c]
            if m is None:
                ax.axis("off")
                continue
            image = ax.imshow(np.array(m), cmap="RdBu_r", vmin=-span, vmax=span)
            n = len(m)
            row, col = divmod(c, 3)
            ax.add_patch(
                plt.Rectangle((col * n / 3 - 0.5, row * n / 3 - 0.5), n / 3, n / 3, fill=False, ec="black", lw=1.2)
            )
            if r == 0:
                ax.set_title(POSITIONS[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="drop in log p(answer)")
    fig.suptitle(title)
    path = Path(path)
    save_figure(fig, path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def seed_figures(comparisons: dict, path: str | Path, title: str) -> Path:
    """Per comparison (a row): each bias figure per seed for both settings, with the paired test's p."""
    from .metrics import SEED_FIGURES

    plt = _plt()
    rows = list(comparisons.values())
    fig, axes = plt.subplots(len(rows), len(SEED_FIGURES), figsize=(3.6 * len(SEED_FIGURES), 3.0 * len(rows)),
                             squeeze=False)  # fmt: skip
    for r, comparison in enumerate(rows):
        seeds = comparison["seeds"]
        for k, key in enumerate(SEED_FIGURES):
            ax = axes[r][k]
            for offset, side, marker in ((-0.12, "first", "o"), (0.12, "second", "s")):
                values = [comparison["per_seed"][s][side][key] for s in seeds]
                ax.plot([i + offset for i in range(len(seeds))], values, marker, label=comparison[side])
            test = comparison["paired_over_seeds"][key]
            p = "n/a" if test["p_value"] is None else f"{test['p_value']:.2g}"
            ax.set_title(f"{key}\npaired t over seeds: p = {p}", fontsize=9)
            ax.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
            if k == 0:
                ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
