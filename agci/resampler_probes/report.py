"""Per-layer curves of probe results (``results.jsonl`` of ``agci resampler-probe train``): a PNG and a
markdown table."""

from __future__ import annotations

from pathlib import Path

from .data import read_jsonl


def per_layer(results: Path, out: Path) -> dict:
    rows = read_jsonl(results)
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
    fig.savefig(out / "per_layer.png", dpi=120)
    plt.close(fig)
    (out / "per_layer.md").write_text("\n".join(lines) + "\n")
    return {"curves": {f"{t}/{p}": len(rs) for (t, p), rs in curves.items()}, "figure": str(out / "per_layer.png")}
