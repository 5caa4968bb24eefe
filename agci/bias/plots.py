"""Heatmaps of probe summaries (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from ..configs import format_lambda
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


def cell_heatmaps(per_lambda: dict[float, list], path: str | Path, title: str, label: str,
                  vmin: float | None = None, vmax: float | None = None,
                  notes: dict[float, str] | None = None) -> Path:  # fmt: skip
    """One 3 x 3 map per lambda on a shared scale (``notes`` adds a line under a lambda's title), then each
    lambda's difference to lambda 0."""
    plt = _plt()
    lambdas = sorted(per_lambda)
    values = [v for lam in lambdas for v in per_lambda[lam] if v is not None]
    lo = vmin if vmin is not None else (min(values) if values else 0.0)
    hi = vmax if vmax is not None else (max(values) if values else 1.0)
    base = per_lambda.get(0.0)
    diffs = [lam for lam in lambdas if lam != 0.0 and base is not None]
    rows = 2 if diffs else 1
    fig, axes = plt.subplots(rows, len(lambdas), figsize=(3.2 * len(lambdas), 3.2 * rows), squeeze=False)
    for k, lam in enumerate(lambdas):
        image = _cells(axes[0][k], per_lambda[lam], "viridis", lo, hi)
        note = (notes or {}).get(lam)
        axes[0][k].set_title(f"lambda = {format_lambda(lam)}" + (f"\n{note}" if note else ""))
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label=label)
    if diffs:
        deltas = {
            lam: [None if a is None or b is None else a - b for a, b in zip(per_lambda[lam], base, strict=False)]
            for lam in diffs
        }
        span = max([abs(v) for d in deltas.values() for v in d if v is not None] + [1e-6])
        axes[1][0].axis("off")
        axes[1][0].text(0.5, 0.5, "difference\nto lambda 0", ha="center", va="center", fontsize=11)
        for k, lam in enumerate(lambdas[1:], start=1):
            image = _cells(axes[1][k], deltas[lam], "RdBu", -span, span, "{:+.2f}")
            axes[1][k].set_title(f"lambda {format_lambda(lam)} - lambda 0")
        fig.colorbar(image, ax=list(axes[1]), shrink=0.8, label="difference")
    fig.suptitle(title)
    path = Path(path)
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def occlusion_maps(per_lambda: dict[float, list], path: str | Path, title: str) -> Path:
    """Mean drop map per target cell (rows: lambdas; columns: the 9 target cells)."""
    import numpy as np

    plt = _plt()
    lambdas = sorted(per_lambda)
    maps = [m for lam in lambdas for m in per_lambda[lam] if m is not None]
    span = max([float(np.abs(np.array(m)).max()) for m in maps] + [1e-6])
    fig, axes = plt.subplots(len(lambdas), 9, figsize=(15, 1.9 * len(lambdas) + 0.6), squeeze=False)
    from .probe_sets import POSITIONS

    for r, lam in enumerate(lambdas):
        for c in range(9):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            m = per_lambda[lam][c]
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
                ax.set_ylabel(f"lambda {format_lambda(lam)}")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="drop in log p(answer)")
    fig.suptitle(title)
    path = Path(path)
    save_figure(fig, path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
