"""Probe sets, sources and summaries of ``agci.bias`` (no model needed, but for the reference records scored by
the embedded model)."""

from __future__ import annotations

import json
import math

import pytest

from agci.bias.metrics import bias_figures, occlusion_summary, position_summary, position_test, similarity_summary
from agci.bias.probe_sets import MANIFEST, POSITIONS, SetOptions, build, cell_box, compose, read_records, rebuild
from agci.bias.sources import load_pairs
from agci.bias.synthetic import synthetic_pairs


def test_synthetic_pairs_are_seeded_and_cover_every_caption():
    a, b = synthetic_pairs(40, seed=3), synthetic_pairs(40, seed=3)
    assert [p.caption for p in a] == [p.caption for p in b]
    assert a[5].load_image().tobytes() == b[5].load_image().tobytes()
    assert len({p.caption for p in synthetic_pairs(30, seed=0)}) == 30  # one of each colour x shape first
    assert [p.caption for p in synthetic_pairs(40, seed=4)] != [p.caption for p in a]


def test_position_set_counts_balance_and_layout(tmp_path):
    m = build(tmp_path / "set", SetOptions(source="synthetic:12", canvas=90, negatives_per_pair=3), progress=False)
    rows = [json.loads(x) for x in (tmp_path / "set" / "position.jsonl").read_text().splitlines()]
    pos = [r for r in rows if r["answer"] == "Yes"]
    neg = [r for r in rows if r["answer"] == "No"]
    assert (m["positives"], m["negatives"], m["similarity_samples"]) == (12 * 9, 12 * 3, 12 * 9)
    assert len(pos) == 108 and len(neg) == 36
    # the target visits every cell once per pair; negatives are balanced over cells
    for pair in {r["pair"] for r in pos}:
        assert sorted(r["cell"] for r in pos if r["pair"] == pair) == list(range(9))
    assert [sum(r["cell"] == c for r in neg) for c in range(9)] == [4] * 9
    # a negative's caption is not on its canvas; positions are named as the reference names them
    for r in neg:
        assert r["caption"] not in {p["caption"] for p in pos if p["pair"] == r["pair"]}
        assert r["position"] == POSITIONS[r["cell"]]
    from PIL import Image

    image = Image.open(tmp_path / "set" / pos[0]["image"])
    assert image.size == (90, 90)
    sim = Image.open(tmp_path / "set" / "similarity" / f"{pos[4]['pair']}_4.jpg").convert("RGB")
    left, top, _, _ = cell_box(4, 90)
    assert sim.getpixel((2, 2)) == (255, 255, 255) and sim.getpixel((left + 3, top + 3)) != (255, 255, 255)


def test_set_is_rebuilt_exactly_from_its_manifest_and_reused_not_overwritten(tmp_path):
    opts = SetOptions(source="synthetic:10", canvas=60, seed=5)
    first = build(tmp_path / "a", opts, progress=False)
    rebuild(tmp_path / "a" / MANIFEST, tmp_path / "b", progress=False)
    for name in ("position.jsonl", "similarity.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    some = json.loads((tmp_path / "a" / "position.jsonl").read_text().splitlines()[7])["image"]
    assert (tmp_path / "a" / some).read_bytes() == (tmp_path / "b" / some).read_bytes()
    assert build(tmp_path / "a", opts, progress=False)["created"] == first["created"]  # reused
    with pytest.raises(ValueError, match="other inputs \\(options.seed: 5 then, 6 now\\)"):
        build(tmp_path / "a", SetOptions(source="synthetic:10", canvas=60, seed=6), progress=False)
    built_b = json.loads((tmp_path / "b" / MANIFEST).read_text())["created"]
    (tmp_path / "b" / "agci-run.json").unlink()  # a set written before run records: its manifest vouches for it
    assert rebuild(tmp_path / "a" / MANIFEST, tmp_path / "b", progress=False)["created"] == built_b  # reused
    with pytest.raises(ValueError, match="options.seed: 5 then, 6 now"):
        build(tmp_path / "b", SetOptions(source="synthetic:10", canvas=60, seed=6), progress=False)
    before = (tmp_path / "a" / "position.jsonl").read_text()
    forced = build(tmp_path / "a", SetOptions(source="synthetic:10", canvas=60, seed=6), progress=False, force=True)
    assert forced["options"]["seed"] == 6 and (tmp_path / "a" / "position.jsonl").read_text() != before


def _pairs_folder(tmp_path, n=12):
    folder = tmp_path / "pairs"
    folder.mkdir()
    rows = []
    for p in synthetic_pairs(n, seed=1):
        p.load_image(64).save(folder / f"{p.id}.png")
        rows.append({"image": f"{p.id}.png", "caption": p.caption})
    rows.append({"image": "nowhere.png", "caption": "a lost image"})
    (folder / "broken.png").write_bytes(b"not a png")
    rows.append({"image": "broken.png", "caption": "a broken image"})
    rows.append({"image": rows[0]["image"], "caption": "  "})
    return folder, rows


def test_bad_pairs_are_skipped_with_reasons_in_the_manifest(tmp_path):
    folder, rows = _pairs_folder(tmp_path)
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = build(tmp_path / "set", SetOptions(source=str(folder), canvas=60), progress=False)
    reasons = [s["reason"] for s in m["skipped"]]
    assert len(reasons) == 3
    assert sum("not found" in r for r in reasons) == 1
    assert sum("unreadable" in r for r in reasons) == 2
    assert reasons.count("empty caption") == 1
    assert m["pairs_used"] == 12


def test_sources_jsonl_csv_folder_and_datasets_agree(tmp_path):
    import csv

    folder, rows = _pairs_folder(tmp_path, n=5)
    rows = rows[:5]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (folder / "pairs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "caption"])
        w.writeheader()
        w.writerows(rows)
    plain = tmp_path / "plain"
    plain.mkdir()
    for r in rows:
        (plain / r["image"]).write_bytes((folder / r["image"]).read_bytes())
        (plain / r["image"]).with_suffix(".txt").write_text(r["caption"])
    datasets = pytest.importorskip("datasets", reason="hf: sources need `datasets` (in the dev extra)")
    from PIL import Image

    ds = datasets.Dataset.from_dict(
        {"img": [Image.open(folder / r["image"]) for r in rows], "text": [r["caption"] for r in rows]},
        features=datasets.Features({"img": datasets.Image(), "text": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    sources = {
        "jsonl": load_pairs(str(folder / "pairs.jsonl")),
        "csv": load_pairs(str(folder / "pairs.csv")),
        "folder": load_pairs(str(plain)),
        "hf": load_pairs(f"hf:{tmp_path / 'hf'}", image_key="img", caption_key="text"),
    }
    want = sorted(r["caption"] for r in rows)
    for name, pairs in sources.items():
        assert sorted(p.caption for p in pairs) == want, name
        assert all(p.load_image().size == (64, 64) for p in pairs), name
    with pytest.raises(ValueError, match="--image-column"):
        load_pairs(f"hf:{tmp_path / 'hf'}")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_pairs(str(tmp_path / "missing.jsonl"))


def test_bias_figures_on_known_values():
    acc = [0.5, 0.6, 0.5, 0.7, 1.0, 0.7, 0.5, 0.6, 0.5]
    b = bias_figures(acc)
    assert b["spread"] == pytest.approx(0.5)
    assert b["centre_minus_border"] == pytest.approx(1.0 - sum(acc[:4] + acc[5:]) / 8)
    mean = sum(acc) / 9
    assert b["std"] == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in acc) / 9))
    assert (b["best_cell"], b["worst_cell"]) == ("center", "top_left")


def test_position_summary_on_hand_made_rows():
    rows = []
    for c in range(9):
        rows.append({"id": f"p{c}", "cell": c, "answer": "Yes", "prediction": "Yes" if c < 6 else "No", "p_yes": 0.9})
        rows.append({"id": f"n{c}", "cell": c, "answer": "No", "prediction": "Yes" if c == 0 else "No", "p_yes": 0.1})
    rows.append({"id": "s", "cell": 3, "answer": "Yes", "skipped": "unreadable image: x"})
    s = position_summary(rows)
    assert s["scored"] == 18 and s["skipped"] == 1 and s["skipped_reasons"] == {"unreadable image": 1}
    assert s["accuracy"] == pytest.approx(14 / 18)
    assert s["positive_accuracy_per_cell"] == [1.0] * 6 + [0.0] * 3
    assert s["negative_yes_rate_per_cell"] == [1.0] + [0.0] * 8
    assert s["yes_rate_per_cell"][0] == 1.0 and s["yes_rate_per_cell"][8] == 0.0
    assert s["bias"]["spread"] == 1.0


def test_position_test_is_cochrans_q():
    from agci.bias.metrics import _chi2_sf, position_test

    assert _chi2_sf(0.0, 8) == pytest.approx(1.0)
    assert _chi2_sf(15.507, 8) == pytest.approx(0.05, abs=1e-4)  # the tabled 5% point of chi2(8)
    rows = []
    for pair in range(20):  # found in the centre always, in the corners never, elsewhere half the time
        for c in range(9):
            found = c == 4 or (c in (1, 3, 5, 7) and pair % 2 == 0)
            rows.append({"pair": f"p{pair}", "cell": c, "answer": "Yes", "prediction": "Yes" if found else "No"})
    rows.append({"pair": "incomplete", "cell": 0, "answer": "Yes", "prediction": "Yes"})
    test = position_test(rows)
    # by hand: columns 20, 10 x 4, 0 x 4, rows 5 x 10 and 1 x 10, N = 60
    assert test["pairs"] == 20
    assert test["q"] == pytest.approx(8 * (9 * (400 + 4 * 100) - 3600) / (9 * 60 - (10 * 25 + 10 * 1)))
    assert test["p_value"] < 1e-6
    same = [{**r, "prediction": "Yes" if r["pair"] in ("p0", "p1") else "No"} for r in rows]
    assert position_test(same)["q"] == 0.0 and position_test(same)["p_value"] == pytest.approx(1.0)
    assert position_test([])["p_value"] is None


def test_occlusion_share_counts_partial_squares():
    n = 4  # squares do not line up with the 3 x 3 cells: shares come from the overlap
    drops = [[0.0] * n for _ in range(n)]
    drops[0][0] = 1.0  # a square fully inside the top-left cell
    drops[1][1] = 1.0  # a square 1/3 x 1/3 inside it
    s = occlusion_summary([{"id": "a", "cell": 0, "drops": drops}])
    assert s["target_cell_share_per_cell"][0] == pytest.approx((1 + 1 / 9) / 2)
    assert s["target_cell_share_per_cell"][1] is None


COLOURS = {
    "black": (0, 0, 0), "white": (255, 255, 255), "red": (220, 20, 20), "green": (20, 160, 20),
    "blue": (20, 20, 220), "yellow": (240, 220, 20), "cyan": (20, 210, 210), "magenta": (210, 20, 210),
    "orange": (250, 140, 0), "purple": (110, 30, 150), "grey": (128, 128, 128),
}  # fmt: skip


def _coloured_folder(tmp_path, rows_extra=()):
    """``sub1/dup.jpg`` (black) and ``sub2/dup.jpg`` (white) plus nine top-level coloured squares."""
    from PIL import Image

    folder = tmp_path / "pairs"
    rows = []
    for name, colour in COLOURS.items():
        rel = {"black": "sub1/dup.jpg", "white": "sub2/dup.jpg"}.get(name, f"{name}.jpg")
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 48), colour).save(folder / rel)
        rows.append({"image": rel, "caption": f"a {name} square"})
    rows.extend(rows_extra)
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_same_file_name_in_two_sub_folders_gives_two_pairs_with_their_own_canvases(tmp_path):
    from PIL import Image

    folder = _coloured_folder(tmp_path)
    ids = {p.caption: p.id for p in load_pairs(str(folder))}
    assert ids["a red square"] == "red"  # top-level files keep their stem, so existing sets keep their ids
    assert (ids["a black square"], ids["a white square"]) == ("sub1__dup", "sub2__dup")
    assert all("/" not in i and "\\" not in i for i in ids.values())
    m = build(tmp_path / "set", SetOptions(source=str(folder), canvas=90, negatives_per_pair=2), progress=False)
    assert m["pairs_used"] == len(COLOURS) and m["positives"] == 9 * len(COLOURS)
    rows = [json.loads(x) for x in (tmp_path / "set" / "position.jsonl").read_text().splitlines()]
    yes = [r for r in rows if r["answer"] == "Yes"]
    assert len({r["image"] for r in yes}) == len(yes)  # one canvas per pair and cell
    assert sorted(p.name for p in (tmp_path / "set" / "images").iterdir()) == sorted(
        r["image"].split("/")[1] for r in yes
    )
    for r in yes:
        left, top, right, bottom = cell_box(r["cell"], 90)
        middle = ((left + right) // 2, (top + bottom) // 2)
        want = COLOURS[r["caption"].split()[1]]
        for kind in ("images", "similarity"):
            image = Image.open(tmp_path / "set" / r["image"].replace("images/", f"{kind}/")).convert("RGB")
            got = image.getpixel(middle)
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 30, (kind, r["image"], r["caption"], got)


def test_ids_from_an_id_column_are_kept_and_made_safe_as_file_names(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.jpg")
    rows = [
        {"id": "plain-1", "image": "a.jpg", "caption": "x"},
        {"id": "coco/val/42", "image": "a.jpg", "caption": "y"},
        {"id": 7, "image": "a.jpg", "caption": "z"},
        {"id": "", "image": "deep/er/b.png", "caption": "w"},
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids = [p.id for p in load_pairs(str(tmp_path / "rows.jsonl"))]
    assert ids[0] == "plain-1" and ids[2] == "7"
    assert len(set(ids)) == 4
    for i in ids:
        assert i and "/" not in i and "\\" not in i and "\0" not in i
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / f"{i}_0.jpg").write_bytes(b"")  # a plain file name inside out/
    assert len(list((tmp_path / "out").iterdir())) == 4


def test_pairs_sharing_an_id_are_refused_naming_the_id_and_the_fix(tmp_path):
    folder = _coloured_folder(tmp_path, rows_extra=[{"image": "red.jpg", "caption": "a scarlet square"}])
    with pytest.raises(ValueError, match=r"'red'.*distinct `id`"):
        build(tmp_path / "set", SetOptions(source=str(folder), canvas=90), progress=False)
    assert not (tmp_path / "set").exists()
    rows = [json.loads(x) for x in (folder / "captions.jsonl").read_text().splitlines()[: len(COLOURS)]]
    for n, r in enumerate(rows):
        r["id"] = "twin" if n < 2 else f"p{n}"
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"'twin'.*distinct `id`") as refused:
        build(tmp_path / "set", SetOptions(source=str(folder), canvas=90), progress=False)
    assert str(folder) in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "set").exists()


def test_probe_set_command_refuses_shared_ids_with_one_line(tmp_path):
    import subprocess
    import sys

    folder = _coloured_folder(tmp_path, rows_extra=[{"id": "red", "image": "red.jpg", "caption": "a scarlet square"}])
    out = subprocess.run(
        [sys.executable, "-m", "agci", "probe-set", str(tmp_path / "set"), "--source", str(folder), "--canvas", "90"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("agci probe-set: ") and "'red'" in out.stderr and "distinct `id`" in out.stderr
    assert not (tmp_path / "set" / "position.jsonl").exists()


def _row(cell, answer, prediction, p_yes):
    return {"id": f"{cell}-{answer}-{prediction}-{p_yes}", "cell": cell, "answer": answer, "prediction": prediction,
            "p_yes": p_yes}  # fmt: skip


def test_position_summary_rates_use_each_keys_own_denominator():
    """Cells with unequal numbers of positives and negatives, so every denominator gives another value:
    ``positive_*`` over the cell's positives, ``negative_*`` over its negatives, ``accuracy_per_cell`` and
    ``yes_rate_per_cell`` over all of its questions, ``accuracy`` over every scored question."""
    rows = [
        # cell 0: positives Yes, Yes, No (2 of 3 right); one negative answered Yes (wrong)
        _row(0, "Yes", "Yes", 0.9), _row(0, "Yes", "Yes", 0.7), _row(0, "Yes", "No", 0.2), _row(0, "No", "Yes", 0.95),
        # cell 1: one positive answered Unknown; negatives No, No, Unknown (2 of 3 right)
        _row(1, "Yes", "Unknown", 0.5), _row(1, "No", "No", 0.1), _row(1, "No", "No", 0.2),
        _row(1, "No", "Unknown", 0.3),
        # cell 4: two positives, both found; no negative
        _row(4, "Yes", "Yes", 0.8), _row(4, "Yes", "Yes", 0.6),
        # cell 8: no positive; negatives Yes (wrong) and No (right)
        _row(8, "No", "Yes", 0.9), _row(8, "No", "No", 0.4),
    ]  # fmt: skip
    rows.append({"id": "gone", "cell": 2, "answer": "Yes", "skipped": "missing image: x.jpg"})
    s = position_summary(rows)
    none = None
    assert (s["questions"], s["scored"], s["skipped"]) == (13, 12, 1)
    assert s["skipped_reasons"] == {"missing image": 1}
    assert s["accuracy"] == pytest.approx(7 / 12)  # right: 2 + 2 + 2 + 1 of 12
    assert s["unknown_answers"] == 2
    assert s["positive_count_per_cell"] == [3, 1, 0, 0, 2, 0, 0, 0, 0]
    assert s["negative_count_per_cell"] == [1, 3, 0, 0, 0, 0, 0, 0, 2]
    want = {
        "positive_accuracy_per_cell": [2 / 3, 0.0, none, none, 1.0, none, none, none, none],
        "positive_yes_rate_per_cell": [2 / 3, 0.0, none, none, 1.0, none, none, none, none],
        "negative_accuracy_per_cell": [0.0, 2 / 3, none, none, none, none, none, none, 0.5],
        "negative_yes_rate_per_cell": [1.0, 0.0, none, none, none, none, none, none, 0.5],
        "accuracy_per_cell": [2 / 4, 2 / 4, none, none, 1.0, none, none, none, 1 / 2],
        "yes_rate_per_cell": [3 / 4, 0.0, none, none, 1.0, none, none, none, 1 / 2],
        # the mean P(Yes) of the positives only: cell 0's negative (0.95) does not count
        "positive_mean_p_yes_per_cell": [0.6, 0.5, none, none, 0.7, none, none, none, none],
    }
    for key, values in want.items():
        assert s[key] == [None if v is None else pytest.approx(v) for v in values], key
    # the bias figures are those of the positives' accuracy: 2/3, 0 and 1 known (mean 5/9)
    assert s["bias"]["spread"] == pytest.approx(1.0)
    assert s["bias"]["std"] == pytest.approx(math.sqrt(14) / 9)  # ((1/9)^2 + (5/9)^2 + (4/9)^2) / 3 = 14/81
    assert s["bias"]["centre_minus_border"] == pytest.approx(1.0 - (2 / 3 + 0.0) / 2)
    assert (s["bias"]["best_cell"], s["bias"]["worst_cell"]) == ("center", "top_center")
    assert s["position_test"]["pairs"] == 0 and s["position_test"]["q"] is None  # no row names its pair


def test_occlusion_mean_map_averages_the_rows_of_its_own_cell():
    """Cell 0 has 2 rows, cell 4 one and cell 8 three: each mean map is divided by its own count (the
    shares are the same under any common scale, so only the maps show a wrong count)."""
    zero = [[0.0] * 3 for _ in range(3)]

    def drops(**squares):
        m = [row[:] for row in zero]
        for name, v in squares.items():
            m[int(name[1])][int(name[2])] = v
        return m

    rows = [
        {"id": "a", "cell": 0, "drops": drops(s00=0.6, s22=0.2)},
        {"id": "b", "cell": 0, "drops": drops(s00=0.2, s11=-0.4)},
        {"id": "c", "cell": 4, "drops": drops(s11=0.3, s02=0.1)},
        {"id": "d", "cell": 8, "drops": drops(s22=0.3, s00=0.9)},
        {"id": "e", "cell": 8, "drops": drops(s22=0.6)},
        {"id": "f", "cell": 8, "drops": drops()},
        {"id": "g", "cell": 5, "skipped": "unreadable image: g.jpg"},
    ]
    s = occlusion_summary(rows)
    assert (s["scored"], s["skipped"]) == (6, 1)
    maps = s["mean_drop_map_per_cell"]
    assert [m is None for m in maps] == [False, True, True, True, False, True, True, True, False]

    def flat(m):
        return [v for line in m for v in line]

    assert flat(maps[0]) == pytest.approx([0.4, 0, 0, 0, -0.2, 0, 0, 0, 0.1])  # (0.6 + 0.2) / 2, -0.4 / 2, 0.2 / 2
    assert flat(maps[4]) == pytest.approx([0, 0, 0.1, 0, 0.3, 0, 0, 0, 0])
    assert flat(maps[8]) == pytest.approx([0.3, 0, 0, 0, 0, 0, 0, 0, 0.3])  # 0.9 / 3 and (0.3 + 0.6) / 3
    # on a 3 x 3 map each square is one cell; negative drops take no part in the share
    share = s["target_cell_share_per_cell"]
    assert share[0] == pytest.approx(0.4 / 0.5) and share[4] == pytest.approx(0.3 / 0.4)
    assert share[8] == pytest.approx(0.5) and share[1] is None and share[5] is None
    assert s["bias"]["spread"] == pytest.approx(0.3)
    assert (s["bias"]["best_cell"], s["bias"]["worst_cell"]) == ("top_left", "bottom_right")


def test_probe_set_command_rebuilds_the_same_files_from_a_manifest(tmp_path, capsys):
    """`agci probe-set OUT --from-manifest M`: options that are not the defaults (seed, canvas, negatives,
    pairs) come from the manifest alone, and the rebuilt set is the original byte for byte."""
    from PIL import Image

    from agci.cli import main

    a, b = tmp_path / "a", tmp_path / "b"
    built = ["probe-set", str(a), "--source", "synthetic:10", "--seed", "5", "--canvas", "60",
             "--negatives-per-pair", "2"]  # fmt: skip
    assert main(built) == 0
    assert main(["probe-set", str(b), "--from-manifest", str(a / MANIFEST)]) == 0
    said = f"{b}: 110 position questions (90 Yes, 20 No), 90 similarity samples, 0 pairs skipped"
    assert said in capsys.readouterr().out
    for name in ("position.jsonl", "similarity.jsonl"):
        assert (b / name).read_bytes() == (a / name).read_bytes(), name
    rows = [json.loads(x) for x in (a / "position.jsonl").read_text().splitlines()]
    assert len(rows) == 10 * 9 + 10 * 2  # 9 positives and 2 negatives per pair
    for image in (rows[13]["image"], rows[-1]["image"], rows[13]["image"].replace("images/", "similarity/")):
        assert (b / image).read_bytes() == (a / image).read_bytes(), image
    with Image.open(b / rows[13]["image"]) as canvas:
        assert canvas.size == (60, 60)
    manifest = json.loads((b / MANIFEST).read_text())
    assert (manifest["options"]["seed"], manifest["options"]["canvas"], manifest["options"]["negatives_per_pair"]) == (
        5, 60, 2)  # fmt: skip


# The reference's record files: image, caption, position, answer; no cell, usually no id.
REFERENCE_RECORDS = [
    {"image": "imgs/red_0.jpg", "caption": "a red circle", "position": "top_left", "answer": "Yes"},
    {"image": "imgs/red_0.jpg", "caption": "a blue square", "position": "bottom_right", "answer": "No"},
    {"image": "imgs/green_4.jpg", "caption": "a green star", "position": "center", "answer": "Yes"},
    {"image": "imgs/green_4.jpg", "caption": "a green star", "position": "right", "answer": "Yes"},
]


def test_reference_records_get_their_cell_from_the_position_and_an_id_from_image_answer_and_index(tmp_path):
    extra = [
        {"id": "mine", "image": "imgs/x.jpg", "caption": "c", "position": "left", "answer": "No"},
        {"image": "imgs/y.jpg", "caption": "c", "position": "center", "cell": 7, "answer": "Yes"},  # its own cell
    ]
    rows = REFERENCE_RECORDS + extra
    want = [  # by hand: POSITIONS.index(position); id = image stem _ answer _ index in the file (0-based)
        ("red_0_Yes_0", 0), ("red_0_No_1", 8), ("green_4_Yes_2", 4), ("green_4_Yes_3", 5), ("mine", 3),
        ("y_Yes_5", 7),
    ]  # fmt: skip
    (tmp_path / "records.json").write_text(json.dumps(rows, indent=1))
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("records.json", "records.jsonl"):
        got = read_records(tmp_path / name)
        assert [(r["id"], r.get("cell")) for r in got] == want, name
        assert [{k: v for k, v in r.items() if k not in ("id", "cell")} for r in got] == [
            {k: v for k, v in r.items() if k not in ("id", "cell")} for r in rows
        ], name  # every other field as it was
    # not a position: refused by file and line (issue 28; it used to end in KeyError: 'cell' after scoring)
    middle = {"image": "imgs/z.jpg", "caption": "c", "position": "middle", "answer": "Yes"}
    (tmp_path / "middle.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, middle]))
    with pytest.raises(ValueError, match=rf"middle.jsonl:{len(rows) + 1}: position \"middle\" is not one of"):
        read_records(tmp_path / "middle.jsonl")


def test_probe_scores_a_reference_records_file_with_the_right_cells(tmp_path):
    """`agci probe --data FILE --tasks position --limit 3 --lambda 0` on the reference's records (the embedded
    model; the images in another folder, given as image_root)."""
    from agci.bias.runner import ProbeConfig, run_probe

    pairs = synthetic_pairs(9, seed=2)
    images = [p.load_image(32) for p in pairs]
    (tmp_path / "root" / "imgs").mkdir(parents=True)
    compose(images, 0, 84).save(tmp_path / "root" / "imgs" / "red_0.jpg")
    compose(images, 4, 84).save(tmp_path / "root" / "imgs" / "green_4.jpg")
    data = tmp_path / "reference.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in REFERENCE_RECORDS))
    summary = run_probe(ProbeConfig(data=str(data), image_root=str(tmp_path / "root"), out=str(tmp_path / "out"),
                                    tasks=("position",), limit=3, lambdas=[0.0], adapters=(),
                                    progress=False))  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "out" / "lambda_0" / "position.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["cell"], r["position"], r["answer"]) for r in rows) == [  # the fourth is past --limit 3
        ("green_4_Yes_2", 4, "center", "Yes"),
        ("red_0_No_1", 8, "bottom_right", "No"),
        ("red_0_Yes_0", 0, "top_left", "Yes"),
    ]
    assert all("skipped" not in r and r["prediction"] in ("Yes", "No") and 0 <= r["p_yes"] <= 1 for r in rows), rows
    pos = summary["lambdas"]["0"]["position"]
    assert (pos["scored"], pos["skipped"]) == (3, 0)
    assert pos["positive_count_per_cell"] == [1, 0, 0, 0, 1, 0, 0, 0, 0]
    assert pos["negative_count_per_cell"] == [0, 0, 0, 0, 0, 0, 0, 0, 1]


NO_FIGURES = {"spread": None, "std": None, "centre_minus_border": None, "best_cell": None, "worst_cell": None}


def test_bias_figures_need_two_known_cells_and_a_known_centre_for_the_centre_figure():
    assert bias_figures([None] * 9) == NO_FIGURES
    assert bias_figures([None] * 8 + [0.5]) == NO_FIGURES
    two = [0.2, None, None, None, 0.8, None, None, None, None]  # exactly two known: mean 0.5
    assert bias_figures(two) == {"spread": pytest.approx(0.6), "std": pytest.approx(0.3),
                                 "centre_minus_border": pytest.approx(0.6), "best_cell": "center",
                                 "worst_cell": "top_left"}  # fmt: skip
    no_centre = [0.2, None, None, None, None, None, None, None, 0.6]
    assert bias_figures(no_centre) == {"spread": pytest.approx(0.4), "std": pytest.approx(0.2),
                                       "centre_minus_border": None, "best_cell": "bottom_right",
                                       "worst_cell": "top_left"}  # fmt: skip


def test_position_test_names_itself_and_its_degrees_of_freedom():
    rows = [{"pair": "p", "cell": c, "answer": "Yes", "prediction": "Yes" if c else "No"} for c in range(9)]
    test = position_test(rows)
    # one pair, found in 8 cells: columns 0 + 8 x 1, T = 8, Q = 8 (9 * 8 - 64) / (9 * 8 - 64) = 8
    assert test == {"test": "Cochran's Q", "pairs": 1, "df": 8, "q": pytest.approx(8.0),
                    "p_value": pytest.approx(math.exp(-4) * (1 + 4 + 8 + 64 / 6))}  # fmt: skip


def test_skipped_reasons_are_counted_per_reason():
    rows = [{"id": "a", "cell": 0, "answer": "Yes", "skipped": "missing image: a.jpg"},
            {"id": "b", "cell": 1, "answer": "No", "skipped": "missing image: b.jpg"},
            {"id": "c", "cell": 2, "answer": "Yes", "skipped": "unreadable image: c.jpg"}]  # fmt: skip
    s = position_summary(rows)
    assert s == {"questions": 3, "scored": 0, "skipped": 3,
                 "skipped_reasons": {"missing image": 2, "unreadable image": 1}}  # fmt: skip


def test_occlusion_share_of_a_middle_cell_leaves_out_the_squares_above_and_left_of_it():
    """Target in the centre cell of a 3 x 3 map: only square (1, 1) is inside it; the squares above and to
    its left are not. A cell whose drops are all <= 0 has no share."""
    rows = [
        {"id": "a", "cell": 4, "drops": [[0.0, 0.3, 0.0], [0.3, 0.4, 0.0], [0.0, 0.0, 0.0]]},
        {"id": "b", "cell": 0, "drops": [[0.0, -0.1, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -0.2]]},
    ]
    s = occlusion_summary(rows)
    share = s["target_cell_share_per_cell"]
    assert share[4] == pytest.approx(0.4) and share[0] is None
    assert share[:4] + share[5:] == [None] * 8
    assert s["bias"] == NO_FIGURES  # one known share


def test_similarity_summary_means_per_cell_and_bias_figures():
    rows = [{"id": "a", "cell": 0, "similarity": 0.2}, {"id": "b", "cell": 0, "similarity": 0.4},
            {"id": "c", "cell": 4, "similarity": 0.9}, {"id": "d", "cell": 8, "similarity": 0.6},
            {"id": "e", "cell": 3, "skipped": "missing image: e.jpg"}]  # fmt: skip
    s = similarity_summary(rows)
    assert (s["scored"], s["skipped"]) == (4, 1)
    none = None
    assert s["mean_similarity_per_cell"] == [pytest.approx(0.3), none, none, none, 0.9, none, none, none, 0.6]
    # known 0.3, 0.9, 0.6: mean 0.6, std sqrt((0.09 + 0.09 + 0) / 3), centre minus the border mean 0.45
    assert s["bias"] == {"spread": pytest.approx(0.6), "std": pytest.approx(math.sqrt(0.06)),
                         "centre_minus_border": pytest.approx(0.45), "best_cell": "center",
                         "worst_cell": "top_left"}  # fmt: skip
    assert similarity_summary([]) == {"scored": 0, "skipped": 0, "mean_similarity_per_cell": [None] * 9,
                                      "bias": NO_FIGURES}  # fmt: skip
