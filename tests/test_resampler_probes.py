"""Resampler probes: the RCM builder, the feature cache, probes on planted signals, and the
``agci resampler-probe`` steps end to end on tiny random BLIP-2 / InstructBLIP models."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from agci.cli import main
from agci.resampler_probes.data import CELL_NAMES, RefExample, build_rcm, load_refcocog
from agci.resampler_probes.encoders import load_encoder
from agci.resampler_probes.features import FeatureCache, extract
from agci.resampler_probes.probes import TrainConfig, build_probe, train_probe
from agci.runs import RunFolder

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def _synthetic_refer(root: Path, per_cell=(12, 9, 9), extra_centre=6, image_size=(64, 48)):
    """A REFER-format RefCOCOg: COCO images, instances.json and refs(umd).p, boxes in every 3x3 cell."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns, refs = [], [], []
    rng = np.random.default_rng(0)
    w, h = image_size
    k = 0
    for split, n in zip(("train", "val", "test"), per_cell, strict=True):
        for cell in range(9):
            count = n + (extra_centre if cell == 4 else 0)
            for _ in range(count):
                cx, cy = ((cell % 3) + 0.5) * w / 3, ((cell // 3) + 0.5) * h / 3
                name = f"{k:06d}.jpg"
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / name)
                images.append({"id": k, "file_name": name, "width": w, "height": h})
                anns.append({"id": 1000 + k, "image_id": k, "bbox": [cx - 6, cy - 5, 12, 10], "category_id": 1 + k % 2})
                refs.append(
                    {
                        "ref_id": k,
                        "ann_id": 1000 + k,
                        "image_id": k,
                        "split": split,
                        "category_id": 1 + k % 2,
                        "sentences": [{"sent_id": k, "sent": f"the thing number {k}", "raw": f"The thing {k}."}],
                    }
                )
                k += 1
    cats = [{"id": 1, "name": "dog", "supercategory": "animal"}, {"id": 2, "name": "car", "supercategory": "vehicle"}]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    with open(root / "refs(umd).p", "wb") as f:
        pickle.dump(refs, f)
    return root


def test_refcocog_loader_and_rcm_balance(tmp_path):
    root = _synthetic_refer(tmp_path)
    examples = load_refcocog(root / "refs(umd).p", root / "instances.json")
    train = [e for e in examples if e.split == "train"]
    assert len(train) == 9 * 12 + 6 and train[0].supercategory in ("animal", "vehicle")
    assert sorted({e.cell for e in train}) == list(range(9))
    rcm = build_rcm(examples, seed=0)
    for split, per_cell in (("train", 12), ("val", 9), ("test", 9)):
        rows = [r for r in rcm if r.split == split]
        pos = [sum(r.label and r.cell == c for r in rows) for c in range(9)]
        neg = [sum((not r.label) and r.cell == c for r in rows) for c in range(9)]
        assert pos == [per_cell] * 9  # the crowded centre is downsampled to the others' count
        assert neg == [8 * (per_cell // 8)] * 9  # N_i / 8 from each of the 8 other cells
        assert all(r.true_cell != r.cell for r in rows if not r.label)
        assert all(r.true_cell == r.cell for r in rows if r.label)
    r = next(r for r in rcm if r.label)
    assert (
        r.text == f"The phrase 'The thing {r.id.split('_')[0]}' refers to the {CELL_NAMES[r.cell]} part of the image."
    )
    assert build_rcm(examples, seed=0) == rcm and build_rcm(examples, seed=1) != rcm
    few = [RefExample(str(i), "x.jpg", "t", [0.5, 0.5, 0.1, 0.1], "dog", "animal", "train") for i in range(20)]
    with pytest.raises(ValueError, match="at least 8 per cell"):
        build_rcm(few)


def test_cache_round_trip_and_resume(tmp_path):
    from PIL import Image
    from tiny_checkpoints import save_qformer_model

    encoder = load_encoder(save_qformer_model("blip2", tmp_path / "blip2"))
    rng = np.random.default_rng(1)
    pictures = {i: Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for i in range(10)}
    items = [{"id": i, "text": f"a thing {i} on the left"} for i in range(10)]
    calls = []

    def load(item):
        calls.append(item["id"])
        return pictures[item["id"]]

    index = extract(encoder, items, load, tmp_path / "cache", batch_size=3, shard_size=4)
    assert [s["count"] for s in index["shards"]] == [4, 4, 2] and index["shape"] == [3, 4, 32]
    cache = FeatureCache(tmp_path / "cache")
    direct = encoder.encode([pictures[i] for i in range(10)], [it["text"] for it in items])
    for layer in range(3):
        torch.testing.assert_close(cache.layer(layer), direct[:, layer].flatten(1).half().float())
    # an interrupted run: the last shard is missing from the index; a rerun encodes only it
    index["shards"] = index["shards"][:2]
    (tmp_path / "cache" / "index.json").write_text(json.dumps(index))
    calls.clear()
    extract(encoder, items, load, tmp_path / "cache", batch_size=3, shard_size=4)
    assert calls == [8, 9]
    with pytest.raises(FileExistsError, match="other items"):
        extract(encoder, items[:5], load, tmp_path / "cache")
    with pytest.raises(ValueError, match="out of range"):
        cache.layer(3)


def _splits(n):
    idx = torch.arange(n)
    return {"train": idx[: n * 6 // 10], "val": idx[n * 6 // 10 : n * 8 // 10], "test": idx[n * 8 // 10 :]}


@pytest.mark.parametrize("probe", ["linear", "mlp2", "mlp4"])
def test_probe_learns_a_planted_signal_and_not_a_shuffled_one(probe):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 48, generator=g)
    y = (x @ torch.randn(48, generator=g) > 0).long()
    cfg = TrainConfig(task="rcm", probe=probe, lr=3e-3, epochs=25, batch_size=64, hidden=64)
    _, real = train_probe(x, y, _splits(1000), cfg, progress=False)
    _, shuffled = train_probe(x, y[torch.randperm(1000, generator=g)], _splits(1000), cfg, progress=False)
    # deeper probes overfit 600 training samples a little; the gap to the shuffled labels is what matters
    assert real.test > (0.85 if probe == "linear" else 0.75) and shuffled.test < 0.65, (real.test, shuffled.test)


def test_box_probe_learns_planted_boxes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 32, generator=g)
    centre = 0.5 + 0.3 * torch.tanh(x[:, :2] @ torch.randn(2, 2, generator=g) * 0.5)
    y = torch.cat([centre, torch.full((1200, 2), 0.3)], 1)
    cfg = TrainConfig(task="refcocog", lr=1e-2, epochs=40, batch_size=64, giou_weight=2.0, l1_weight=5.0)
    _, real = train_probe(x, y, _splits(1200), cfg, progress=False)
    _, shuffled = train_probe(x, y[torch.randperm(1200, generator=g)], _splits(1200), cfg, progress=False)
    assert real.test > 0.9 and shuffled.test < real.test - 0.3, (real.test, shuffled.test)


def test_joint_fine_tuning_trains_the_resampler(tmp_path):
    from PIL import Image
    from tiny_checkpoints import save_qformer_model

    encoder = load_encoder(save_qformer_model("instructblip", tmp_path / "ib"))
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(40)]
    labels = torch.tensor([i % 2 for i in range(40)])
    before = [p.detach().clone() for p in encoder.resampler_parameters()]

    def features(idx, training):
        with torch.set_grad_enabled(training):
            return encoder.encode([pictures[i] for i in idx], ["is it on the left?"] * len(idx))[:, -1].flatten(1)

    cfg = TrainConfig(task="vsr", lr=1e-3, epochs=2, batch_size=8)
    _, result = train_probe(features, labels, _splits(40), cfg, encoder.resampler_parameters(), progress=False)
    changed = [not torch.equal(a, b) for a, b in zip(before, encoder.resampler_parameters(), strict=True)]
    assert any(changed) and result.epochs_run == 2


def test_unknown_probe_task_and_model_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown probe"):
        build_probe("mlp3", 4, 1)
    with pytest.raises(ValueError, match="unknown task"):
        TrainConfig(task="gqa")
    from tiny_checkpoints import save_tiny

    with pytest.raises(ValueError, match="no resampler encoder wrapper"):
        load_encoder(save_tiny("llava", tmp_path / "llava"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A REFER-format RefCOCOg, a VSR split of its images, and tiny BLIP-2 and InstructBLIP checkpoints."""
    from tiny_checkpoints import save_qformer_model

    base = tmp_path_factory.mktemp("resampler")
    root = _synthetic_refer(base / "refer", per_cell=(8, 8, 8), extra_centre=2)
    vsr = base / "vsr"
    vsr.mkdir()
    for split in ("train", "dev", "test"):
        caption = "the dog is left of the car"
        rows = [{"image": f"{k:06d}.jpg", "caption": caption, "label": k % 2, "relation": "left of"} for k in range(12)]
        (vsr / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return SimpleNamespace(root=root, images=root / "images", vsr=vsr,
                           blip2=save_qformer_model("blip2", base / "blip2"),
                           instructblip=save_qformer_model("instructblip", base / "instructblip"))  # fmt: skip


def test_cli_end_to_end_for_each_task(tmp_path, inputs):
    root, blip2, instructblip, vsr = inputs.root, inputs.blip2, inputs.instructblip, inputs.vsr
    refs, inst, images = str(root / "refs(umd).p"), str(root / "instances.json"), str(root / "images")
    assert (
        main(["resampler-probe", "build-rcm", "--refs", refs, "--instances", inst, "--out", str(tmp_path / "rcm")]) == 0
    )
    manifest = json.loads((tmp_path / "rcm" / "manifest.json").read_text())
    assert manifest["counts"]["train"]["positives_per_cell"] == [8] * 9
    for task, model, data in (("rcm", blip2, str(tmp_path / "rcm")), ("refcocog", instructblip, refs),
                              ("vsr", blip2, str(vsr))):  # fmt: skip
        cache, out = str(tmp_path / f"cache-{task}"), str(tmp_path / f"out-{task}")
        args = ["resampler-probe", "extract", "--model", str(model), "--task", task, "--data", data,
                "--images", images, "--out", cache, "--batch-size", "16"]  # fmt: skip
        args += ["--instances", inst] if task == "refcocog" else []
        assert main(args) == 0
        assert main(["resampler-probe", "train", "--cache", cache, "--task", task, "--epochs", "2", "--out", out]) == 0
        rows = [json.loads(line) for line in Path(out, "results.jsonl").read_text().splitlines()]
        assert [r["layer"] for r in rows] == [0, 1, 2]
        for r in rows:  # the test metric is the share of test items the layer's written predictions got right
            assert r["test"] == pytest.approx(_share_correct(Path(out, "predictions", f"{task}-linear-layer"
                                                                 f"{r['layer'] + 1}.jsonl")))  # fmt: skip
        from PIL import Image

        with Image.open(Path(out, "per_layer.png")) as png:
            assert png.size == (720, 480)  # 6 x 4 inches at 120 dpi
            assert len(png.convert("L").getcolors(maxcolors=1 << 20)) > 10  # curves and labels drawn
        assert main(["resampler-probe", "report", out, "--cache", cache, "--task", task]) == 0
        groups = json.loads(Path(out, f"{task}_breakdown.json").read_text())
        if task == "refcocog":
            assert set(groups["groups"]) == {"animal", "vehicle"} and set(groups["kendall_tau"]) == {
                "train_count", "mean_area", "mean_centre_distance"}  # fmt: skip
        elif task == "vsr":
            assert set(groups["groups"]) == {"Projective"}
        else:
            assert set(groups["groups"]) == set(CELL_NAMES)
    # the resampler fine-tuned with the probe, on the live model (layer 3 of the RCM run)
    joint = ["resampler-probe", "train", "--cache", str(tmp_path / "cache-rcm"), "--task", "rcm", "--layers", "3",
             "--epochs", "1", "--joint", "--out", str(tmp_path / "joint")]  # fmt: skip
    assert main(joint) == 2  # --images missing
    assert main([*joint, "--images", images]) == 0
    row = json.loads(Path(tmp_path, "joint", "results.jsonl").read_text())
    assert row["joint"] is True and row["layer"] == 2
    joint_predictions = Path(tmp_path, "joint", "predictions", "rcm-linear-layer3.jsonl")
    assert row["test"] == pytest.approx(_share_correct(joint_predictions))
    assert len(Path(tmp_path, "joint", "predictions", "rcm-linear-layer3.jsonl").read_text().splitlines()) == sum(
        1 for line in Path(tmp_path, "rcm", "test.jsonl").read_text().splitlines())  # fmt: skip
    # a rerun skips the layers that are done
    assert main(["resampler-probe", "train", "--cache", str(tmp_path / "cache-rcm"), "--task", "rcm", "--epochs", "2",
                 "--out", str(tmp_path / "out-rcm")]) == 0  # fmt: skip
    assert len(Path(tmp_path, "out-rcm", "results.jsonl").read_text().splitlines()) == 3
    search = ["resampler-probe", "search", "--cache", str(tmp_path / "cache-refcocog"), "--task", "refcocog",
              "--layer", "3", "--out", str(tmp_path / "search")]  # fmt: skip
    assert main([*search, "--trials", "3"]) == 0
    assert main([*search, "--trials", "4"]) == 0  # resumes: one more trial
    trials = [json.loads(line) for line in Path(tmp_path, "search", "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 4 and all(1e-5 <= t["lr"] <= 5e-4 and "giou_weight" in t for t in trials)
    assert json.loads(Path(tmp_path, "search", "search.json").read_text())["trials"] == 4
    for changed in (["--layer", "2"], ["--probe", "mlp2"], ["--seed", "1"]):  # another study: refused
        assert main([*search, "--trials", "4", *changed]) == 2
    assert len(Path(tmp_path, "search", "trials.jsonl").read_text().splitlines()) == 4


def _share_correct(predictions: Path) -> float:
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    return sum(bool(r["correct"]) for r in rows) / len(rows)


def _files(folder: Path) -> dict[str, bytes]:
    """The results in a folder (not the lock), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}  # fmt: skip


def _results(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k != "agci-run.json"}


def test_runs_resume_refuse_other_inputs_and_force(tmp_path, inputs, capsys):
    """extract and train: the same inputs resume, other inputs are refused (files untouched) and --force
    starts over to what a fresh run gives; a folder in use or an --out that is a file is refused."""
    cache = tmp_path / "cache"
    extract = ["resampler-probe", "extract", "--model", str(inputs.blip2), "--task", "vsr", "--data",
               str(inputs.vsr), "--images", str(inputs.images), "--out", str(cache)]  # fmt: skip
    assert main(extract) == 0
    first = _files(cache)
    assert {"agci-run.json", "index.json", "items.jsonl", "features-00000000.safetensors"} == set(first)
    assert main(extract) == 0  # resumes: nothing left to encode, nothing rewritten
    resumed = _files(cache)
    assert _results(resumed) == _results(first)
    capsys.readouterr()
    for changed, field in ((["--model", str(inputs.instructblip)], "model"), (["--no-text"], "with_text"),
                           (["--dtype", "bfloat16"], "dtype")):  # fmt: skip
        assert main([*extract, *changed]) == 2
        err = capsys.readouterr().err
        assert f"{field}: " in err and "other inputs" in err and "--force" in err, err
        assert _files(cache) == resumed
    assert main([*extract, "--no-text", "--force"]) == 0
    assert main([*extract[:-1], str(tmp_path / "cache-fresh"), "--no-text"]) == 0
    assert _results(_files(cache)) == _results(_files(tmp_path / "cache-fresh")) != _results(first)

    out = tmp_path / "train"
    train = ["resampler-probe", "train", "--cache", str(cache), "--task", "vsr", "--layers", "1,3", "--epochs", "2",
             "--out", str(out)]  # fmt: skip
    assert main(train) == 0
    trained = _files(out)
    assert {"results.jsonl", "per_layer.png", "per_layer.md", "agci-run.json"} <= set(trained)
    assert main(train) == 0  # resumes: both layers are done
    assert _results(_files(out)) == _results(trained)
    assert main([*train, "--layers", "3,2"]) == 0  # more layers: only layer 2 is trained
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["layer"] for r in rows] == [0, 2, 1]
    grown = _files(out)
    capsys.readouterr()
    for changed, field in ((["--lr", "1e-3"], "lr"), (["--probe", "mlp2"], "probe"), (["--seed", "1"], "seed")):
        assert main([*train, *changed]) == 2
        err = capsys.readouterr().err
        assert f"{field}: " in err and "other inputs" in err, err
        assert _files(out) == grown
    assert main([*train, "--lr", "1e-3", "--force"]) == 0
    assert main([*train[:-1], str(tmp_path / "train-fresh"), "--lr", "1e-3"]) == 0
    forced, fresh = _results(_files(out)), _results(_files(tmp_path / "train-fresh"))
    assert forced.keys() == fresh.keys() and forced["results.jsonl"] == fresh["results.jsonl"]
    assert forced["predictions/vsr-linear-layer3.jsonl"] == fresh["predictions/vsr-linear-layer3.jsonl"]
    assert "predictions/vsr-linear-layer2.jsonl" not in forced  # the earlier run's files are gone

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    search = ["resampler-probe", "search", "--cache", str(cache), "--task", "vsr", "--layer", "1"]
    for command in (extract, train, search):
        assert main([*command, "--out", str(a_file)]) == 2
        assert "is an existing file" in capsys.readouterr().err
    assert a_file.read_text() == "not a folder"
    with RunFolder(out, "holder", {}, outputs=()):  # another run holds the folder
        result = subprocess.run([sys.executable, "-m", "agci", *train, "--lr", "1e-3"], capture_output=True,
                                text=True, env=dict(os.environ, TQDM_DISABLE="1"), timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0] and f"pid {os.getpid()}" in lines[0], result.stderr
    assert _results(_files(out)) == forced


def test_a_row_cut_by_a_kill_is_dropped_before_appending(tmp_path):
    from agci.runs import drop_partial_line

    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')
    drop_partial_line(path)
    assert path.read_text() == '{"a": 1}\n'
    drop_partial_line(path)
    assert path.read_text() == '{"a": 1}\n'


# -- bad input: one line on stderr, exit code 2, nothing created ---------------------------------------------
def _refused(capsys, args: list[str], created: Path, *expected: str) -> str:
    """``agci ARGS`` exits with 2 and one stderr line holding ``expected``, and ``created`` does not exist."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"agci resampler-probe {args[1]}: "), err
    assert all(e in lines[0] for e in expected), err
    assert not created.exists()
    return lines[0]


def _fake_cache(folder: Path, n: int = 30) -> Path:
    """A VSR-like feature cache of random features (3 layers, 2 queries of width 4), without a model."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"features": torch.randn(n, 3, 2, 4).half()}, str(folder / "features-00000000.safetensors"))
    ids = [str(i) for i in range(n)]
    index = {"ids": ids, "shards": [{"file": "features-00000000.safetensors", "start": 0, "count": n}],
             "shape": [3, 2, 4], "with_text": True, "model_type": "blip-2"}  # fmt: skip
    (folder / "index.json").write_text(json.dumps(index))
    splits = ["train"] * (n * 6 // 10) + ["val"] * (n * 2 // 10) + ["test"] * (n - n * 8 // 10)
    items = [{"id": ids[i], "text": "t", "image": "x.jpg", "split": splits[i], "target": i % 2} for i in range(n)]
    (folder / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    return folder


def test_extract_and_build_rcm_refuse_refer_files_and_paths_in_words(tmp_path, inputs, capsys):
    refs, instances = tmp_path / "refs(umd).p", tmp_path / "instances.json"
    refs.write_text("not a pickle")
    instances.write_text((inputs.root / "instances.json").read_text())
    out = tmp_path / "cache"
    extract = ["resampler-probe", "extract", "--model", str(inputs.blip2), "--task", "refcocog", "--data", str(refs),
               "--instances", str(instances), "--images", str(inputs.images), "--out", str(out)]  # fmt: skip
    _refused(capsys, extract, out, str(refs), "is not a readable pickle", "give a REFER refs pickle")
    refs.write_bytes((inputs.root / "refs(umd).p").read_bytes())
    instances.write_text("{}")
    _refused(capsys, extract, out, str(instances), "lacks 'images', 'annotations'")
    instances.write_text('{"images": [')
    _refused(capsys, extract, out, str(instances), "is not valid JSON")
    coco = json.loads((inputs.root / "instances.json").read_text())
    instances.write_text(json.dumps({**coco, "categories": []}))
    _refused(capsys, extract, out, str(instances), "category_id", "categories lack")
    nowhere = tmp_path / "nowhere" / "instances.json"
    _refused(capsys, [*extract[:9], str(nowhere), *extract[10:]], out, f"--instances {nowhere} does not exist",
             "give the COCO instances.json")  # fmt: skip
    _refused(
        capsys, [*extract[:7], str(tmp_path / "no.p"), *extract[8:]], out, "--data", "does not exist", "refs(umd).p"
    )
    build = ["resampler-probe", "build-rcm", "--refs", str(refs), "--instances", str(nowhere), "--out", str(out)]
    _refused(capsys, build, out, f"--instances {nowhere} does not exist")
    refs.write_text("not a pickle")
    instances.write_text(json.dumps(coco))
    _refused(capsys, [*build[:5], str(instances), *build[6:]], out, str(refs), "is not a readable pickle")


def test_extract_refuses_bad_vsr_rows_models_and_batch_sizes(tmp_path, inputs, capsys):
    vsr = tmp_path / "vsr"
    vsr.mkdir()
    train = vsr / "train.jsonl"
    rows = [{"image": "000000.jpg", "caption": "the dog is left of the car", "label": 1}]
    out = tmp_path / "cache"
    extract = ["resampler-probe", "extract", "--model", str(inputs.blip2), "--task", "vsr", "--data", str(vsr),
               "--images", str(inputs.images), "--out", str(out)]  # fmt: skip
    train.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"image": "000001.jpg", "label": 0}) + "\n")
    _refused(capsys, extract, out, f"{train}:2 lacks 'caption'", "give a VSR split")
    train.write_text(json.dumps(rows[0]) + "\n{not json\n")
    _refused(capsys, extract, out, f"{train}:2 is not valid JSON")
    train.write_text(json.dumps({**rows[0], "label": "yes"}) + "\n")
    _refused(capsys, extract, out, str(train), "label 'yes', not 0 or 1")
    _refused(capsys, [*extract[:7], str(tmp_path / "none"), *extract[8:]], out, "--data", "is not a folder")
    model = tmp_path / "no" / "model"
    vsr_args = [*extract[:7], str(inputs.vsr), *extract[8:]]
    _refused(capsys, [*vsr_args[:3], str(model), *vsr_args[4:]], out, f"{model} does not exist")
    for size in ("0", "-1"):
        _refused(capsys, [*vsr_args, "--batch-size", size], out, f"--batch-size {size}", "at least 1")


def test_train_and_search_refuse_what_is_not_a_cache(tmp_path, capsys):
    out = tmp_path / "out"
    nowhere = tmp_path / "nonexistent"
    for command in (["train"], ["search", "--layer", "1"]):
        args = ["resampler-probe", *command, "--cache", str(nowhere), "--task", "vsr", "--out", str(out)]
        _refused(capsys, args, out, f"--cache {nowhere} is not a feature cache (no index.json)",
                 "agci resampler-probe extract")  # fmt: skip
    cache = _fake_cache(tmp_path / "cache")
    train = ["resampler-probe", "train", "--cache", str(cache), "--task", "vsr", "--epochs", "1", "--out", str(out)]
    search = ["resampler-probe", "search", "--cache", str(cache), "--task", "vsr", "--layer", "1", "--out", str(out)]
    good = (cache / "index.json").read_text()
    for text, expected in (("{}", "lacks 'ids', 'shards'"), ("{not json", "is not valid JSON"),
                           ("[]", "holds a list, not an object")):  # fmt: skip
        (cache / "index.json").write_text(text)
        for args in (train, search):
            _refused(capsys, args, out, str(cache / "index.json"), expected)
    (cache / "index.json").write_text(good)
    items = (cache / "items.jsonl").read_text()
    (cache / "items.jsonl").write_text('{"id": "0", "split": "train"}\n')
    _refused(capsys, train, out, f"{cache / 'items.jsonl'}:1 lacks 'target'")
    (cache / "items.jsonl").write_text(items)
    _refused(capsys, [*train[:5], "refcocog", *train[6:]], out, "not a box", "--task refcocog")
    _refused(capsys, ["resampler-probe", "report", str(tmp_path / "no-run"), "--cache", str(cache), "--task", "vsr"],
             out, "results.jsonl does not exist")  # fmt: skip


def test_train_refuses_bad_options_before_writing(tmp_path, capsys):
    cache = _fake_cache(tmp_path / "cache")
    out = tmp_path / "out"
    train = ["resampler-probe", "train", "--cache", str(cache), "--task", "vsr", "--epochs", "1", "--out", str(out)]
    for option, value, expected in (("--epochs", "0", "at least 1"), ("--epochs", "-2", "at least 1"),
                                    ("--lr", "-1", "above 0"), ("--lr", "0", "above 0"), ("--lr", "nan", "above 0"),
                                    ("--patience", "-1", "at least 1"), ("--patience", "0", "at least 1"),
                                    ("--giou-weight", "-1", "at least 0"), ("--l1-weight", "-0.5", "at least 0"),
                                    ("--l1-weight", "inf", "at least 0")):  # fmt: skip
        _refused(capsys, [*train, option, value], out, f"{option} {value}", expected)
    with pytest.raises(ValueError, match="--batch-size 0"):
        TrainConfig(task="vsr", batch_size=0)
    with pytest.raises(ValueError, match="--weight-decay -1"):
        TrainConfig(task="vsr", weight_decay=-1)
    assert main([*train, "--patience", "1", "--giou-weight", "0"]) == 0  # the edges run
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("kind", ["blip2", "instructblip"])
def test_extract_no_text_caches_the_queries_alone(tmp_path, inputs, kind, capsys):
    """`extract --no-text`: the Q-Former runs on the queries alone (InstructBLIP: an empty instruction), so the
    cache holds other features than with the text, for the same items, in the same (layers, queries, hidden)."""
    from PIL import Image

    model = getattr(inputs, kind)
    args = ["resampler-probe", "extract", "--model", str(model), "--task", "vsr", "--data", str(inputs.vsr),
            "--images", str(inputs.images), "--batch-size", "64"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "text")]) == 0
    assert main([*args, "--out", str(tmp_path / "queries"), "--no-text"]) == 0
    assert f"{tmp_path / 'queries'}: 36 items, features [3, 4, 32] (layers, queries, hidden)" in capsys.readouterr().out
    text, queries = FeatureCache(tmp_path / "text"), FeatureCache(tmp_path / "queries")
    # the tiny models: 3 Q-Former layers, 4 queries of width 32; 12 VSR rows in each of 3 splits
    assert (queries.layers, queries.queries, queries.hidden) == (3, 4, 32) and queries.index["shape"] == [3, 4, 32]
    assert queries.ids == text.ids and len(queries.ids) == 36
    assert (queries.index["with_text"], text.index["with_text"]) == (False, True)
    items = [json.loads(line) for line in (tmp_path / "queries" / "items.jsonl").read_text().splitlines()]
    pictures = [Image.open(inputs.images / it["image"]).convert("RGB") for it in items]
    encoder = load_encoder(model)
    with torch.no_grad():
        alone, with_text = encoder.encode(pictures, None), encoder.encode(pictures, [it["text"] for it in items])
    for layer in range(3):
        got = queries.layer(layer)
        assert got.shape == (36, 4 * 32)
        torch.testing.assert_close(got, alone[:, layer].flatten(1).half().float())
        torch.testing.assert_close(text.layer(layer), with_text[:, layer].flatten(1).half().float())
        assert bool(((got - text.layer(layer)).abs().amax(1) > 1e-2).all()), layer  # every item differs


@pytest.mark.parametrize("base", ["instructblip", "blip2"])
def test_register_encoder_makes_a_new_model_type_loadable(base, tmp_path, inputs, capsys):
    """`register_encoder(model_type)` on an encoder wrapper class: encoder_type, load_encoder and `extract` accept a
    checkpoint of that model type (here: a tiny InstructBLIP or BLIP-2 under another model type name, its config
    class registered with transformers so that its config can be read), loaded with the wrapper's model_class; the
    old name, features.register_adapter, is the same function."""
    from PIL import Image
    from transformers import AutoConfig, Blip2Config, InstructBlipConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from agci.resampler_probes import encoders, features

    ENCODERS, encoder_type, register_encoder = encoders.ENCODERS, encoders.encoder_type, encoders.register_encoder
    assert (features.register_adapter, features.ResamplerAdapter) == (register_encoder, encoders.ResamplerEncoder)
    original = getattr(inputs, base)
    config_class, wrapper_class = {"instructblip": (InstructBlipConfig, encoders.InstructBlipQFormer),
                                   "blip2": (Blip2Config, encoders.Blip2QFormer)}[base]  # fmt: skip
    name = f"agci-test-{base}"
    renamed = tmp_path / "renamed"
    shutil.copytree(original, renamed)
    config = json.loads((renamed / "config.json").read_text())
    (renamed / "config.json").write_text(json.dumps({**config, "model_type": name}))
    AutoConfig.register(name, type("RenamedConfig", (config_class,), {"model_type": name}))
    try:
        with pytest.raises(ValueError, match=f"model type '{name}' has no resampler encoder wrapper"):
            encoder_type(renamed)

        @register_encoder(name)
        class Renamed(wrapper_class):
            model_type = name

        assert encoder_type(renamed) == name
        encoder = load_encoder(renamed)
        assert type(encoder) is Renamed
        rng = np.random.default_rng(3)
        pictures = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(2)]
        texts = ["the dog is left of the car", "a car"]
        with torch.no_grad():  # the same weights as the checkpoint it was copied from
            torch.testing.assert_close(encoder.encode(pictures, texts), load_encoder(original).encode(
                pictures, texts), rtol=0, atol=0)  # fmt: skip
        cache = tmp_path / "cache"
        assert main(["resampler-probe", "extract", "--model", str(renamed), "--task", "vsr", "--data", str(inputs.vsr),
                     "--images", str(inputs.images), "--out", str(cache)]) == 0  # fmt: skip
        assert json.loads((cache / "index.json").read_text())["model_type"] == name
        assert FeatureCache(cache).index["shape"] == [3, 4, 32]
    finally:
        ENCODERS.pop(name, None)
        CONFIG_MAPPING._extra_content.pop(name, None)  # transformers has no unregister
    assert name not in ENCODERS and name not in CONFIG_MAPPING
