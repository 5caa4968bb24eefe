"""Resampler probes, the pure parts on hand-made inputs (fast; the mutation run's selection for report.py and
boxes.py): box arithmetic, the per-layer report, the breakdowns and Kendall's tau. The steps end to end on
tiny models are in test_resampler_probes.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from agci.resampler_probes import boxes, report


def test_iou_and_giou_on_known_boxes():
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    assert boxes.iou(a, a).item() == 1.0 and boxes.giou(a, a).item() == 1.0
    b = torch.tensor([1.0, 1.0, 3.0, 3.0])  # overlap 1, union 7, hull 9
    assert boxes.iou(a, b).item() == pytest.approx(1 / 7)
    assert boxes.giou(a, b).item() == pytest.approx(1 / 7 - 2 / 9)
    c = torch.tensor([3.0, 0.0, 4.0, 1.0])  # disjoint: union 5, hull 8
    assert boxes.iou(a, c).item() == 0.0 and boxes.giou(a, c).item() == pytest.approx(-3 / 8)
    assert boxes.xywh_to_cxcywh([10, 20, 30, 40], 100, 200) == [0.25, 0.2, 0.3, 0.2]
    t = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    assert boxes.box_loss(t, t, 2.0, 5.0).item() == pytest.approx(0.0, abs=1e-6)
    shifted = torch.tensor([[0.6, 0.5, 0.2, 0.2]])  # iou 1/3, hull = union: giou 1/3; l1 0.1
    assert boxes.box_loss(shifted, t, 2.0, 5.0).item() == pytest.approx(2 * (2 / 3) + 5 * 0.1, abs=1e-5)
    assert boxes.accuracy_at(torch.cat([t, shifted]), torch.cat([t, t]), 0.5) == 0.5


def test_box_conversions_keep_any_leading_shape():
    # centre (0.5, 0.4), size 0.2 x 0.6: x from 0.4 to 0.6, y from 0.1 to 0.7
    one = boxes.cxcywh_to_xyxy(torch.tensor([0.5, 0.4, 0.2, 0.6]))
    torch.testing.assert_close(one, torch.tensor([0.4, 0.1, 0.6, 0.7]))
    batch = torch.tensor([[[0.5, 0.4, 0.2, 0.6], [2.0, 3.0, 4.0, 2.0]]])  # (1, 2, 4)
    expected = torch.tensor([[[0.4, 0.1, 0.6, 0.7], [0.0, 2.0, 4.0, 4.0]]])
    torch.testing.assert_close(boxes.cxcywh_to_xyxy(batch), expected)


def test_iou_and_giou_of_boxes_wider_than_tall():
    # a: 4 wide, 1 tall; b: 1 wide, 3 tall, crossing a: overlap 1 x 1, union 4 + 3 - 1 = 6, hull 4 x 3 = 12
    a = torch.tensor([0.0, 1.0, 4.0, 2.0])
    b = torch.tensor([1.0, 0.0, 2.0, 3.0])
    assert boxes.iou(a, b).item() == pytest.approx(1 / 6) and boxes.iou(b, a).item() == pytest.approx(1 / 6)
    assert boxes.giou(a, b).item() == pytest.approx(1 / 6 - 6 / 12)
    assert boxes.giou(b, a).item() == pytest.approx(1 / 6 - 6 / 12)


def test_giou_of_small_normalised_boxes():
    # disjoint 0.2 x 0.2 boxes 0.1 apart: union 0.08, hull 0.5 x 0.2 = 0.1, giou 0 - 0.02 / 0.1
    a, b = torch.tensor([0.0, 0.0, 0.2, 0.2]), torch.tensor([0.3, 0.0, 0.5, 0.2])
    assert boxes.iou(a, b).item() == 0.0
    assert boxes.giou(a, b).item() == pytest.approx(-0.2)


def test_box_loss_averages_over_boxes_of_any_leading_shape():
    target = torch.tensor([0.5, 0.5, 0.2, 0.2])
    moved = torch.tensor([0.6, 0.5, 0.2, 0.2])  # giou 1/3 (see above), l1 0.1
    # two boxes, one exact: mean of 0 and 2 * (2/3) + 5 * 0.1
    pairs = torch.stack([target, moved]), torch.stack([target, target])
    assert boxes.box_loss(*pairs, 2.0, 5.0).item() == pytest.approx((4 / 3 + 0.5) / 2, abs=1e-5)
    assert boxes.box_loss(moved, target, 2.0, 5.0).item() == pytest.approx(4 / 3 + 0.5, abs=1e-5)  # one box
    grid = torch.stack([torch.stack([moved, target, moved])] * 2), torch.stack([torch.stack([target] * 3)] * 2)
    assert boxes.box_loss(*grid, 2.0, 5.0).item() == pytest.approx((4 / 3 + 0.5) * 2 / 3, abs=1e-5)  # (2, 3, 4)


def test_accuracy_counts_an_iou_of_exactly_the_threshold():
    # target x 0..4, y 0..4; prediction its lower half (y 0..2): iou 8 / 16 = 0.5, which reaches the default 0.5
    target = torch.tensor([[2.0, 2.0, 4.0, 4.0]])
    half = torch.tensor([[2.0, 1.0, 4.0, 2.0]])
    assert boxes.accuracy_at(half, target) == 1.0
    assert boxes.accuracy_at(half, target, 0.75) == 0.0


def test_kendall_tau_on_hand_ranked_groups():
    from agci.resampler_probes.report import _kendall

    acc = [0.2, 0.5, 0.9]
    # 3 groups: 3! = 6 orders; tau = 1 for one of them and -1 for one, so the two-sided exact p is 2/6
    assert _kendall(acc, [1, 2, 3]) == {"tau": 1.0, "p": round(1 / 3, 4), "n": 3}
    assert _kendall(acc, [3, 2, 1]) == {"tau": -1.0, "p": round(1 / 3, 4), "n": 3}
    # one discordant pair of three: (2 - 1) / 3; every one of the 6 orders has |tau| >= 1/3, so p = 1
    assert _kendall(acc, [1, 3, 2]) == {"tau": round(1 / 3, 4), "p": 1.0, "n": 3}
    # 4 groups: pairs (0,1) and (1,2) discordant, the other 4 concordant: (4 - 2) / 6
    assert _kendall([0.1, 0.4, 0.3, 0.8], [2, 1, 3, 4])["tau"] == round(1 / 3, 4)
    assert _kendall([0.1, 0.4, 0.3, 0.8], [5, 5, 5, 5]) == {"tau": None, "p": None, "n": 4}  # undefined: no order
    assert _kendall([0.1, 0.4], [1, 2]) == {"tau": None, "p": None, "n": 2}  # too few groups


def test_refcocog_breakdown_on_hand_made_boxes(tmp_path):
    """Three super-categories (one named by its category, its super-category being empty) with training
    boxes of unequal width and height: counts, mean areas (w x h), mean centre distances and Kendall's tau
    of each against the accuracy, all worked out by hand."""
    from PIL import Image

    from agci.resampler_probes.report import breakdown

    def item(i, split, supercategory, target, category="thing"):
        return {"id": i, "split": split, "target": target, "category": category, "supercategory": supercategory}

    items = [
        item("a1", "train", "animal", [0.5, 0.5, 0.2, 0.5]),  # area 0.1, centre distance 0
        item("k1", "train", "", [0.8, 0.9, 0.4, 0.1], "kite"),  # area 0.04, distance 0.5 (0.3, 0.4)
        item("k2", "train", "", [0.2, 0.1, 0.2, 0.3], "kite"),  # area 0.06, distance 0.5
        item("v1", "train", "vehicle", [0.2, 0.1, 0.1, 0.2]),  # area 0.02, distance 0.5
        item("v2", "train", "vehicle", [0.5, 0.8, 0.3, 0.1]),  # area 0.03, distance 0.3
        item("v3", "train", "vehicle", [0.5, 0.3, 0.5, 0.4]),  # area 0.2, distance 0.2
        item("av", "val", "animal", [0.9, 0.9, 0.9, 0.1]),  # not training items: counted nowhere
        *[item(f"t{k}", "test", s, [0.95, 0.05, 0.9, 0.9], c) for k, (s, c) in
          enumerate([("animal", "dog"), ("animal", "cat"), ("", "kite"), ("", "kite"), ("vehicle", "car"),
                     ("vehicle", "bus")])],
    ]  # fmt: skip
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    correct = {"t0": False, "t1": False, "t2": True, "t3": False, "t4": True, "t5": True}
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": i, "correct": c}) + "\n" for i, c in correct.items()))
    out = tmp_path / "report"
    summary = breakdown(cache, predictions, "refcocog", out)
    groups = summary["groups"]
    assert list(groups) == ["animal", "kite", "vehicle"]
    assert [groups[g]["accuracy"] for g in groups] == [0.0, 0.5, 1.0]
    assert [groups[g]["test_items"] for g in groups] == [2, 2, 2]
    assert [groups[g]["train_count"] for g in groups] == [1, 2, 3]
    assert [groups[g]["mean_area"] for g in groups] == pytest.approx([0.1, 0.05, 0.25 / 3])
    assert [groups[g]["mean_centre_distance"] for g in groups] == pytest.approx([0.0, 0.5, 1.0 / 3])
    tau = summary["kendall_tau"]
    assert tau["train_count"] == {"tau": 1.0, "p": round(1 / 3, 4), "n": 3}  # counts rise with accuracy
    # areas 0.1, 0.05, 0.083 against accuracies 0, 0.5, 1: two pairs discordant, one concordant
    assert tau["mean_area"] == {"tau": round(-1 / 3, 4), "p": 1.0, "n": 3}
    # distances 0, 0.5, 0.33: only the kite-vehicle pair is discordant
    assert tau["mean_centre_distance"] == {"tau": round(1 / 3, 4), "p": 1.0, "n": 3}
    assert json.loads((out / "refcocog_breakdown.json").read_text()) == summary
    with Image.open(out / "refcocog_breakdown.png") as png:
        assert png.size == (600, 420)  # 5 x 3.5 inches at 120 dpi
        assert len(png.convert("L").getcolors(maxcolors=1 << 16)) > 2  # bars and labels, not a blank image


# -- per_layer, breakdown and best_layer on hand-written files -------------------------------------------------
@pytest.fixture
def figures(monkeypatch):
    """The figures that report.py saves (saved as usual), each with the path and keyword arguments given."""
    saved, save = [], report.save_figure

    def keep(fig, path, **kwargs):
        saved.append(SimpleNamespace(fig=fig, path=Path(path), kwargs=kwargs))
        return save(fig, path, **kwargs)

    monkeypatch.setattr(report, "save_figure", keep)
    return saved


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as png:
        return png.size


def test_per_layer_tables_and_plots_each_curve_by_layer(tmp_path, figures):
    import matplotlib.pyplot as plt

    results = _write_jsonl(tmp_path / "run" / "results.jsonl", [
        {"task": "vsr", "probe": "linear", "layer": 2, "val": 0.75, "test": 0.625},
        {"task": "rcm", "probe": "mlp2", "layer": 1, "val": 0.875, "test": None},  # no test split: val is plotted
        {"task": "vsr", "probe": "linear", "layer": 0, "val": 0.5, "test": 0.25},
        {"task": "rcm", "probe": "mlp2", "layer": 0, "val": 0.5, "test": math.nan},
    ])  # fmt: skip
    out = tmp_path / "report" / "layers"  # parents created
    summary = report.per_layer(results, out)
    assert summary == {"curves": {"vsr/linear": 2, "rcm/mlp2": 2}, "figure": str(out / "per_layer.png")}
    assert (out / "per_layer.md").read_text() == (
        "| task | probe | layer | val | test |\n"
        "|---|---|---|---|---|\n"
        "| rcm | mlp2 | 1 | 0.5000 | nan |\n"
        "| rcm | mlp2 | 2 | 0.8750 | n/a |\n"
        "| vsr | linear | 1 | 0.5000 | 0.2500 |\n"
        "| vsr | linear | 3 | 0.7500 | 0.6250 |\n"
    )
    assert _png_size(out / "per_layer.png") == (720, 480)  # 6 x 4 inches at 120 dpi
    [saved] = figures
    assert saved.path == out / "per_layer.png" and saved.kwargs == {"dpi": 120}
    assert not plt.fignum_exists(saved.fig.number)  # closed
    [ax] = saved.fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "resampler layer", "test metric (val where no test split)", "Probe accuracy per layer")  # fmt: skip
    rcm, vsr = ax.get_lines()
    assert (rcm.get_label(), vsr.get_label()) == ("rcm / mlp2", "vsr / linear")
    assert rcm.get_marker() == vsr.get_marker() == "o"
    np.testing.assert_array_equal(rcm.get_xdata(), [1, 2])  # layers counted from 1
    np.testing.assert_array_equal(rcm.get_ydata(), [math.nan, 0.875])
    np.testing.assert_array_equal(vsr.get_xdata(), [1, 3])
    np.testing.assert_array_equal(vsr.get_ydata(), [0.25, 0.625])
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["rcm / mlp2", "vsr / linear"]
    assert all(t.get_fontsize() == 7 for t in legend.get_texts())
    assert report.per_layer(results, out) == summary  # a rerun into the same folder


def test_per_layer_refuses_missing_empty_and_short_results(tmp_path):
    missing = tmp_path / "nowhere" / "results.jsonl"
    with pytest.raises(FileNotFoundError, match=r"does not exist; give the results.jsonl of `agci resampler-probe"):
        report.per_layer(missing, tmp_path / "out")
    empty = tmp_path / "results.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no results yet"):
        report.per_layer(empty, tmp_path / "out")
    _write_jsonl(empty, [{"task": "vsr", "probe": "linear", "layer": 0, "val": 0.5}])
    with pytest.raises(ValueError, match=r"results.jsonl:1 lacks 'test'; give the results.jsonl"):
        report.per_layer(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _cache(folder: Path, items: list[dict]) -> Path:
    _write_jsonl(folder / "items.jsonl", items)
    return folder


def test_vsr_breakdown_groups_relations_by_meta_category(tmp_path, figures):
    def item(i, relation=None):
        return {"id": i, "split": "test", "target": 1, **({} if relation is None else {"relation": relation})}

    cache = _cache(tmp_path / "cache", [item("a", "left of"), item("b", "above"), item("c", "near"),
                                        item("d", "zigzag"), item("e")])  # fmt: skip
    correct = {"a": True, "b": False, "c": False, "d": True, "e": False}
    predictions = _write_jsonl(tmp_path / "predictions.jsonl", [{"id": i, "correct": c} for i, c in correct.items()])
    out = tmp_path / "report" / "vsr"
    summary = report.breakdown(cache, predictions, "vsr", out)
    # left of, above: Projective; near: Proximity; an unknown relation and none at all: other
    assert summary == {"task": "vsr", "groups": {"Projective": {"accuracy": 0.5, "test_items": 2},
                                                 "Proximity": {"accuracy": 0.0, "test_items": 1},
                                                 "other": {"accuracy": 0.5, "test_items": 2}}}  # fmt: skip
    assert json.loads((out / "vsr_breakdown.json").read_text()) == summary
    assert _png_size(out / "vsr_breakdown.png") == (600, 420)  # at least 5 inches wide, 3.5 tall, 120 dpi
    [saved] = figures
    assert saved.path == out / "vsr_breakdown.png" and saved.kwargs == {"dpi": 120}
    [ax] = saved.fig.axes
    assert [bar.get_height() for bar in ax.patches] == [0.5, 0.0, 0.5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Projective", "Proximity", "other"]
    assert (ax.get_ylabel(), ax.get_title()) == ("test accuracy", "vsr: accuracy per group")
    assert all(t.get_rotation() == 60 and t.get_fontsize() == 7 for t in ax.get_xticklabels())
    assert all(t.get_rotation() == 0 and t.get_fontsize() != 7 for t in ax.get_yticklabels())  # x axis only
    # a mapping of one's own; an item without a relation counts as the relation ""
    mine = {"Sideways": ["left of"], "Unnamed": [""]}
    groups = report.breakdown(cache, predictions, "vsr", out, meta_categories=mine)["groups"]
    assert groups == {"Sideways": {"accuracy": 1.0, "test_items": 1}, "Unnamed": {"accuracy": 0.0, "test_items": 1},
                      "other": {"accuracy": 1 / 3, "test_items": 3}}  # fmt: skip


def test_rcm_breakdown_names_the_nine_cells(tmp_path):
    cache = _cache(tmp_path / "cache", [{"id": f"i{c}", "split": "test", "target": 1, "cell": c} for c in range(9)])
    # cells 0 (top left) and 8 (bottom right) right, the rest wrong
    predictions = _write_jsonl(tmp_path / "p.jsonl", [{"id": f"i{c}", "correct": c in (0, 8)} for c in range(9)])
    groups = report.breakdown(cache, predictions, "rcm", tmp_path / "out")["groups"]
    assert list(groups) == ["bottom left", "bottom middle", "bottom right", "middle", "middle left", "middle right",
                            "top left", "top middle", "top right"]  # fmt: skip
    assert [g for g, v in groups.items() if v["accuracy"] == 1.0] == ["bottom right", "top left"]
    assert all(v["test_items"] == 1 for v in groups.values())
    assert _png_size(tmp_path / "out" / "rcm_breakdown.png") == (780, 420)  # 0.5 x 9 + 2 = 6.5 inches wide


def test_refcocog_breakdown_of_a_group_without_training_boxes(tmp_path):
    def item(i, split, supercategory, target):
        return {"id": i, "split": split, "target": target, "category": "c", "supercategory": supercategory}

    # one person box in training: area 0.5 x 0.2 = 0.1, centre (0.8, 0.1) at distance sqrt(0.09 + 0.16) = 0.5
    cache = _cache(tmp_path / "cache", [item("p1", "train", "person", [0.8, 0.1, 0.5, 0.2]),
                                        item("pt", "test", "person", [0.5, 0.5, 0.1, 0.1]),
                                        item("ft", "test", "food", [0.5, 0.5, 0.1, 0.1])])  # fmt: skip
    predictions = _write_jsonl(tmp_path / "p.jsonl", [{"id": "pt", "correct": True}, {"id": "ft", "correct": False}])
    summary = report.breakdown(cache, predictions, "refcocog", tmp_path / "out")
    assert summary["groups"]["person"] == pytest.approx(
        {"accuracy": 1.0, "test_items": 1, "train_count": 1, "mean_area": 0.1, "mean_centre_distance": 0.5}
    )
    assert summary["groups"]["food"] == {"accuracy": 0.0, "test_items": 1, "train_count": 0, "mean_area": 0.0,
                                         "mean_centre_distance": 0.0}  # fmt: skip
    assert summary["kendall_tau"]["train_count"] == {"tau": None, "p": None, "n": 2}  # two groups: too few


def test_breakdown_refuses_what_does_not_match_in_words(tmp_path):
    def item(i, **extra):
        return {"id": i, "split": "test", "target": [0.5, 0.5, 0.1, 0.1], **extra}

    good = {"category": "dog", "supercategory": "animal", "cell": 4}
    cache = _cache(tmp_path / "cache", [item("a", **good), item("b", **good)])
    predictions = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "correct": True}, {"id": "zz", "correct": True}])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"item 'zz' is not in the cache .*; give the --cache the run trained on"):
        report.breakdown(cache, predictions, "refcocog", out)
    with pytest.raises(FileNotFoundError, match="give the test predictions that `agci resampler-probe train` writes"):
        report.breakdown(cache, tmp_path / "none.jsonl", "refcocog", out)
    with pytest.raises(FileNotFoundError, match="give the items.jsonl of a feature cache"):
        report.breakdown(tmp_path / "no-cache", predictions, "refcocog", out)
    _write_jsonl(predictions, [{"id": "a"}])
    with pytest.raises(ValueError, match="p.jsonl:1 lacks 'correct'; give the test predictions"):
        report.breakdown(cache, predictions, "vsr", out)
    _write_jsonl(predictions, [{"id": "a", "correct": True}])
    _cache(cache, [item("a", **good), item("b", category="dog"), item("c", cell=1)])
    lacks = "items.jsonl: item 'b' lacks 'category', 'supercategory', which --task refcocog groups by; give the --task"
    with pytest.raises(ValueError, match=lacks):
        report.breakdown(cache, predictions, "refcocog", out)
    with pytest.raises(ValueError, match=r"item 'b' lacks 'cell', which --task rcm groups by"):
        report.breakdown(cache, predictions, "rcm", out)
    _cache(cache, [{"id": "a", "split": "test"}])
    with pytest.raises(ValueError, match="items.jsonl:1 lacks 'target'; give the items.jsonl of a feature cache"):
        report.breakdown(cache, predictions, "vsr", out)
    assert not out.exists()


def test_best_layer_breaks_down_the_best_validation_layer_of_the_task(tmp_path):
    run = tmp_path / "run"
    _write_jsonl(run / "results.jsonl", [
        {"task": "vsr", "probe": "linear", "layer": 0, "val": 0.5},
        {"task": "vsr", "probe": "mlp2", "layer": 1, "val": 0.75},  # the best vsr layer: layer2 in file names
        {"task": "vsr", "probe": "linear", "layer": 2, "val": 0.625},
        {"task": "rcm", "probe": "linear", "layer": 0, "val": 0.9},  # better, but another task
    ])  # fmt: skip
    cache = _cache(tmp_path / "cache", [{"id": "a", "split": "test", "target": 1, "relation": "near"}])
    _write_jsonl(run / "predictions" / "vsr-mlp2-layer2.jsonl", [{"id": "a", "correct": True}])
    layer, summary = report.best_layer(run, cache, "vsr")
    assert layer == 1
    assert summary == {"task": "vsr", "groups": {"Proximity": {"accuracy": 1.0, "test_items": 1}}}
    assert json.loads((run / "vsr_breakdown.json").read_text()) == summary
    with pytest.raises(ValueError, match=f"{run}: no refcocog results"):
        report.best_layer(run, cache, "refcocog")
    with pytest.raises(FileNotFoundError, match="give the results.jsonl of `agci resampler-probe train`"):
        report.best_layer(tmp_path / "no-run", cache, "vsr")
    _write_jsonl(run / "results.jsonl", [{"task": "vsr", "probe": "linear", "layer": 0}])
    with pytest.raises(ValueError, match="results.jsonl:1 lacks 'val'; give the results.jsonl"):
        report.best_layer(run, cache, "vsr")
