"""Mid-layer referring segmentation: clustering on hand-made maps, metrics on known masks, the candidate
logic on known scores, the maps of tiny CLIP / SigLIP / SigLIP2, and `agci ris` end to end on a
synthetic REFER-format dataset."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from agci.cli import main
from agci.ris.encoders import Encoder
from agci.ris.evaluate import ground_truth
from agci.ris.pipeline import _relation_score, head_phrase, rerank, select_candidates
from agci.ris.spatial import spatial_map
from agci.runs import RunFolder

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


# the clustering and the metrics on hand-built tensors: tests/test_ris_spatial.py


def test_candidates_and_reranking_on_known_scores():
    scores = np.array([10.0, 30.0, 20.0, 25.0])
    overlaps = np.array([[0.1, 0.2, 0.9, 0.0], [0.0, 0.8, 0.1, 0.0]])  # region 1 matches mask 2, region 2 mask 1
    assert select_candidates(scores, overlaps, "full") == [1, 2]  # best global first, no duplicate of mask 1
    assert select_candidates(scores, overlaps, "global") == [1, 3, 2]
    assert select_candidates(scores, overlaps, "pmap") == [2, 1]
    with pytest.raises(ValueError, match="mode must be"):
        select_candidates(scores, overlaps, "best")
    assert rerank(scores, [1, 2], np.array([0.0, 0.0])) == 1
    assert rerank(scores, [1, 2], np.array([0.0, 1.0]), alpha=0.2) == 2  # the secondary score can win
    left = np.zeros((2, 4, 6), dtype=bool)
    left[0, :, :2] = True
    left[1, :, 4:] = True
    assert _relation_score("the cup on the left", left).tolist() == pytest.approx([1 - 0.5 / 5, 1 - 4.5 / 5])
    assert _relation_score("a red cup", left) is None


def test_head_phrase():
    assert head_phrase("the man in red on the left") == "the man"
    assert head_phrase("dog") == "dog"


def test_ground_truth_from_a_polygon():
    mask = ground_truth({"segmentation": [[2, 2, 6, 2, 6, 5, 2, 5]], "height": 8, "width": 10})
    assert mask.shape == (8, 10) and mask[3, 4] and not mask[0, 0] and 12 <= mask.sum() <= 20


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    from tiny_checkpoints import save_vision_language_encoder

    root = tmp_path_factory.mktemp("vle")
    return {kind: save_vision_language_encoder(kind, root / kind) for kind in ("clip", "siglip", "siglip2")}


@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip2"])
def test_spatial_maps_of_each_family(kind, encoders):
    from PIL import Image

    enc = Encoder.load(str(encoders[kind]))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(2)]
    tokens = enc.patch_tokens(images)
    assert len(tokens.layers) == 4
    text = enc.text_features(["the dog on the left", "a car"])
    channel = spatial_map(enc, tokens, text, layer=3, normalise="channel")
    patch = spatial_map(enc, tokens, text, layer=3, normalise="patch")
    grid = (3, 5) if kind == "siglip2" else (4, 4)  # SigLIP2 keeps the aspect ratio
    assert channel[0].shape == grid and patch[0].shape == grid
    assert patch[0].abs().max() <= 1 + 1e-5 and not torch.allclose(channel[0], patch[0])
    with pytest.raises(ValueError, match="layer 5 out of range"):
        spatial_map(enc, tokens, text, layer=5)


def _synthetic_refer(root: Path, n_images: int = 3):
    """RefCOCOg-style REFER files, COCO images with two coloured boxes each, and PNG mask proposals."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "refer" / "refcocog").mkdir(parents=True)
    images, anns, refs = [], [], []
    rng = np.random.default_rng(0)
    for k in range(n_images):
        name = f"COCO_train2014_{k:012d}.jpg"
        pixels = rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)
        pixels[8:24, 4:24] = (220, 30, 30)  # the target: a red box on the left
        pixels[20:40, 36:60] = (30, 30, 220)
        Image.fromarray(pixels).save(root / "images" / name)
        images.append({"id": k, "file_name": name, "height": 48, "width": 64})
        anns.append({"id": 100 + k, "image_id": k, "category_id": 1, "segmentation": [[4, 8, 24, 8, 24, 24, 4, 24]]})
        sentence = {"sent_id": k, "sent": "the red box on the left", "raw": "The red box."}
        refs.append({"ref_id": k, "ann_id": 100 + k, "image_id": k, "split": "val", "category_id": 1,
                     "sentences": [sentence]})  # fmt: skip
        masks = root / "masks" / Path(name).stem
        masks.mkdir(parents=True)
        for j, (ys, xs) in enumerate([(slice(8, 25), slice(4, 25)), (slice(20, 40), slice(36, 60)),
                                      (slice(0, 48), slice(0, 64))]):  # fmt: skip
            m = np.zeros((48, 64), dtype=np.uint8)
            m[ys, xs] = 255
            Image.fromarray(m).save(masks / f"{j}.png")
    (root / "refer" / "refcocog" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "box"}]})
    )
    with open(root / "refer" / "refcocog" / "refs(umd).p", "wb") as f:
        pickle.dump(refs, f)
    return root


@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip2"])
def test_ris_evaluate_and_show_end_to_end(kind, tmp_path, encoders):
    root = _synthetic_refer(tmp_path)
    args = ["ris", "evaluate", "--model", str(encoders[kind]), "--refer", str(root / "refer"), "--dataset", "refcocog",
            "--split", "val", "--images", str(root / "images"), "--proposals", f"disk:{root / 'masks'}",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((tmp_path / "out" / "refcocog_val.json").read_text())
    assert summary["v"] == 0.85  # RefCOCOg's weight by default
    rows = [json.loads(r) for r in (tmp_path / "out" / "refcocog_val.jsonl").read_text().splitlines()]
    ious = [r["I"] / r["U"] for r in rows]
    # every choice is one of the three proposals: IoU with the target (polygon 21 x 17 px) is 1, 0 or 357/3072
    assert all(min(abs(i - x) for x in (1.0, 0.0, 357 / 3072)) < 1e-9 for i in ious)
    assert summary["n"] == 3 and summary["mIoU"] == pytest.approx(sum(ious) / 3)
    assert summary["oIoU"] == pytest.approx(sum(r["I"] for r in rows) / sum(r["U"] for r in rows))
    assert summary["Prec@0.5"] == pytest.approx(sum(i >= 0.5 for i in ious) / 3)
    assert main(args) == 0  # same inputs, same output folder: the rows are there, nothing rescored
    assert len((tmp_path / "out" / "refcocog_val.jsonl").read_text().splitlines()) == 3
    png = tmp_path / "show.png"
    image = root / "images" / "COCO_train2014_000000000000.jpg"
    show = ["ris", "show", "--model", str(encoders[kind]), "--image", str(image), "--text", "the red box on the left",
            "--proposals", f"disk:{root / 'masks'}", "--out", str(png)]  # fmt: skip
    assert main(show) == 0
    from PIL import Image

    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.size == (1540, 418)  # 14 x 3.8 inches at 110 dpi
        assert len(picture.convert("L").getcolors(maxcolors=1 << 20)) > 10  # the panels are drawn
    assert main([*args[:-1], str(tmp_path / "o2"), "--proposals", "slic:x"]) == 2  # unknown proposer: clear error
    assert not (tmp_path / "o2").exists()  # bad input creates nothing


def _files(folder: Path) -> dict[str, bytes]:
    """The results in a folder (not the lock), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}  # fmt: skip


def test_ris_rerun_resumes_other_inputs_are_refused_and_force_starts_over(tmp_path, encoders, capsys):
    root = _synthetic_refer(tmp_path / "data")
    out = tmp_path / "out"
    args = ["ris", "evaluate", "--model", str(encoders["clip"]), "--refer", str(root / "refer"), "--dataset",
            "refcocog", "--split", "val", "--images", str(root / "images"), "--proposals", f"disk:{root / 'masks'}",
            "--limit", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    first = _files(out)
    assert set(first) == {"agci-run.json", "refcocog_val.json", "refcocog_val.jsonl", "refcocog_val.md"}
    record = json.loads(first["agci-run.json"])["runs"]["refcocog_val"]
    assert record["finished"] and record["fingerprint"]["mode"] == "full" and record["fingerprint"]["v"] == 0.85
    assert main(args) == 0  # the same inputs resume: nothing rescored, the same summary
    again = _files(out)
    assert {k: v for k, v in again.items() if k != "agci-run.json"} == {
        k: v for k, v in first.items() if k != "agci-run.json"}  # fmt: skip
    assert json.loads(again["agci-run.json"])["runs"]["refcocog_val"]["runs"] == 2
    capsys.readouterr()
    for changed, field in ((["--mode", "global"], "mode"), (["--layer", "2"], "layer"), (["--v", "0.5"], "v")):
        assert main([*args, *changed]) == 2
        err = capsys.readouterr().err
        assert f"{field}: " in err and "other inputs" in err and "--force" in err, err
        assert _files(out) == again  # refused: every file as it was
    assert main([*args, "--mode", "global", "--force"]) == 0
    assert main([*args[:-1], str(tmp_path / "fresh"), "--mode", "global"]) == 0
    forced, fresh = _files(out), _files(tmp_path / "fresh")
    for name in ("refcocog_val.json", "refcocog_val.jsonl", "refcocog_val.md"):
        assert forced[name] == fresh[name]
    assert json.loads(forced["refcocog_val.json"])["mode"] == "global"
    rows_path = out / "refcocog_val.jsonl"
    rows_path.write_bytes(forced["refcocog_val.jsonl"][:-5])  # a run killed in the middle of its last row
    assert main([*args, "--mode", "global"]) == 0  # the cut row is dropped and scored again, not appended to
    assert rows_path.read_bytes() == forced["refcocog_val.jsonl"]
    (tmp_path / "a-file").write_text("not a folder")
    assert main([*args[:-1], str(tmp_path / "a-file")]) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert (tmp_path / "a-file").read_text() == "not a folder"
    # a second run into the folder while one holds it is refused at once, naming the holder
    with RunFolder(out, "refcocog_test", {}, outputs=()):
        result = subprocess.run([sys.executable, "-m", "agci", *args], capture_output=True, text=True,
                                env=dict(os.environ, TQDM_DISABLE="1"), timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0] and f"pid {os.getpid()}" in lines[0], result.stderr
    assert _files(out)["refcocog_val.jsonl"] == forced["refcocog_val.jsonl"]


def test_mask2former_proposals_at_image_size(tmp_path, encoders):
    from PIL import Image
    from tiny_checkpoints import save_mask2former

    from agci.ris.pipeline import load_proposer

    proposer = load_proposer(f"mask2former:{save_mask2former(tmp_path / 'm2f')}")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    masks = proposer(image, "x.jpg")
    assert masks.dtype == bool and masks.shape[1:] == (48, 64) and 1 <= len(masks) <= 5
    assert masks.reshape(len(masks), -1).any(1).all()  # empty masks are dropped
    root = _synthetic_refer(tmp_path / "data", n_images=1)
    args = ["ris", "evaluate", "--model", str(encoders["clip"]), "--refer", str(root / "refer"), "--dataset",
            "refcocog", "--split", "val", "--images", str(root / "images"), "--proposals",
            f"mask2former:{tmp_path / 'm2f'}", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0 and json.loads((tmp_path / "out" / "refcocog_val.json").read_text())["n"] == 1


def test_centroid_of_identical_languages_is_the_plain_feature(encoders):
    from agci.ris.multilingual import agreement_by_layer, centroid_features

    enc = Encoder.load(str(encoders["siglip"]))
    same = {"en": ["the red box on the left"], "de": ["the red box on the left"]}
    plain = enc.text_features(["the red box on the left"])
    for layer in (1, 2):  # averaging equal states and running the rest of the encoder gives the same feature
        feature, used = centroid_features(enc, same, layer)
        assert used == layer
        torch.testing.assert_close(feature, plain, rtol=1e-4, atol=1e-5)
    scores = agreement_by_layer(enc, {"en": ["the red box"], "de": ["die rote kiste links"], "fr": ["la boite"]})
    assert len(scores) == 2 and all(-1 <= s <= 1 for s in scores)
    assert agreement_by_layer(enc, same) == pytest.approx([1.0, 1.0], abs=1e-5)
    with pytest.raises(ValueError, match="SigLIP"):
        centroid_features(Encoder.load(str(encoders["clip"])), same)


def test_multilingual_evaluation_joins_translations_by_id(tmp_path, encoders):
    root = _synthetic_refer(tmp_path / "data")
    csv_path = tmp_path / "translations.csv"
    # rows in another order than the expressions, so joining by text or position would fail
    csv_path.write_text("sent_id,en,de\n2,the red box,die rote kiste\n0,the red box,die rote kiste\n"
                        "1,the red box,die rote kiste links\n")  # fmt: skip
    base = ["ris", "evaluate", "--model", str(encoders["siglip2"]), "--refer", str(root / "refer"), "--dataset",
            "refcocog", "--split", "val", "--images", str(root / "images"), "--proposals",
            f"disk:{root / 'masks'}", "--out", str(tmp_path / "out"),
            "--translations", str(csv_path)]  # fmt: skip
    for language in ("de", "centroid"):
        assert main([*base, "--language", language]) == 0
        summary = json.loads((tmp_path / "out" / f"refcocog_val_{language}.json").read_text())
        assert summary["language"] == language and summary["n"] == 3
    assert main([*base, "--language", "it"]) == 2  # not a column
    csv_path.write_text("sent_id,de\n0,die kiste\n")
    assert main([*base, "--language", "de"]) == 2  # sent_id 1 and 2 have no row


def test_sam_proposals_at_image_size(tmp_path):
    from PIL import Image
    from tiny_checkpoints import save_sam

    from agci.ris.pipeline import SamMasks, load_proposer

    path = save_sam(tmp_path / "sam")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    masks = SamMasks(str(path), pred_iou_thresh=0.0, stability_score_thresh=0.0)(image, "x.jpg")  # random weights
    assert masks.dtype == bool and masks.shape[1:] == (48, 64) and masks.reshape(len(masks), -1).any(1).all()
    assert isinstance(load_proposer(f"sam:{path}"), SamMasks)


# -- bad input: one line on stderr, exit code 2, nothing created ---------------------------------------------
@pytest.fixture(scope="module")
def refer_data(tmp_path_factory):
    return _synthetic_refer(tmp_path_factory.mktemp("refer-data"), n_images=1)


def _evaluate(root: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["ris", "evaluate", "--model", str(model), "--refer", str(root / "refer"), "--dataset", "refcocog",
            "--split", "val", "--images", str(root / "images"), "--proposals", f"disk:{root / 'masks'}",
            "--out", str(out), *extra]  # fmt: skip


def _refused(capsys, args: list[str], created: Path, *expected: str) -> str:
    """``agci ARGS`` exits with 2 and one stderr line holding ``expected``, and ``created`` does not exist."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"agci ris {args[1]}: "), err
    assert all(e in lines[0] for e in expected), err
    assert not created.exists()
    return lines[0]


def test_ris_refuses_refer_files_that_are_not_refer(tmp_path, refer_data, encoders, capsys):
    import shutil

    root = tmp_path / "data"
    for name in ("refer", "images", "masks"):
        shutil.copytree(refer_data / name, root / name)
    folder = root / "refer" / "refcocog"
    refs, instances = folder / "refs(umd).p", folder / "instances.json"
    good_refs, good_instances = refs.read_bytes(), instances.read_text()
    out = tmp_path / "out"
    args = _evaluate(root, encoders["clip"], out)

    refs.write_text("not a pickle")
    _refused(capsys, args, out, str(refs), "is not a readable pickle", "give a REFER refs pickle")
    refs.write_bytes(pickle.dumps({"refs": []}))
    _refused(capsys, args, out, str(refs), "holds a dict, not a list of refs")
    refs.write_bytes(pickle.dumps([{"ref_id": 0, "image_id": 0, "split": "val"}]))
    _refused(capsys, args, out, str(refs), "ref 0 lacks 'ann_id', 'sentences'")
    refs.write_bytes(pickle.dumps([{**pickle.loads(good_refs)[0], "ann_id": 999}]))
    _refused(capsys, args, out, "names annotation 999", str(instances), "of the same dataset")
    refs.write_bytes(good_refs)

    instances.write_text("{}")
    _refused(capsys, args, out, str(instances), "lacks 'images', 'annotations'", "instances.json")
    instances.write_text('{"images": [')
    _refused(capsys, args, out, str(instances), "is not valid JSON")
    coco = json.loads(good_instances)
    instances.write_text(json.dumps({**coco, "annotations": [{"id": 100, "image_id": 0}]}))
    _refused(capsys, args, out, "annotations[0] lacks 'segmentation'")
    instances.write_text(good_instances)
    assert main(args) == 0  # the same folder, repaired, runs


def test_ris_refuses_bad_numbers_and_models_before_creating_anything(tmp_path, refer_data, encoders, capsys):
    out = tmp_path / "out"
    model = encoders["clip"]
    _refused(capsys, _evaluate(refer_data, model, out, "--layer", "99"), out, "--layer 99 is out of range",
             "vision layers 1..4")  # fmt: skip
    _refused(capsys, _evaluate(refer_data, model, out, "--layer", "0"), out, "--layer 0", "1-based")
    _refused(capsys, _evaluate(refer_data, model, out, "--layer", "-2"), out, "--layer -2", "1-based")
    for limit in ("-3", "0"):
        _refused(capsys, _evaluate(refer_data, model, out, "--limit", limit), out, f"--limit {limit}", "at least 1")
    for v in ("-1", "1.5", "nan"):
        _refused(capsys, _evaluate(refer_data, model, out, "--v", v), out, "--v", "[0, 1]")
    _refused(capsys, _evaluate(refer_data, tmp_path / "no" / "model", out), out,
             f"{tmp_path / 'no' / 'model'} does not exist")  # fmt: skip
    _refused(capsys, _evaluate(refer_data, model, out, "--translations", str(tmp_path / "t.csv"), "--language", "de"),
             out, f"--translations {tmp_path / 't.csv'} does not exist")  # fmt: skip
    png = tmp_path / "show.png"
    image = refer_data / "images" / "COCO_train2014_000000000000.jpg"
    show = ["ris", "show", "--model", str(model), "--image", str(image), "--text", "the red box",
            "--proposals", f"disk:{refer_data / 'masks'}", "--out", str(png)]  # fmt: skip
    _refused(capsys, [*show, "--layer", "0"], png, "--layer 0", "1-based")
    _refused(capsys, [*show, "--layer", "5"], png, "--layer 5 is out of range")
    _refused(capsys, [*show[:5], str(tmp_path / "none.jpg"), *show[6:]], png, "--image", "does not exist")
    _refused(capsys, [*show[:3], str(tmp_path / "no-model"), *show[4:]], png, "does not exist")
    assert main(_evaluate(refer_data, model, out, "--layer", "4", "--limit", "1", "--v", "1")) == 0  # the edges run


class _StubEncoder:
    """Stands in for :class:`Encoder` with hand-chosen features: ``image_features`` returns ``features`` row
    by row (recording the images it was given), ``text_features`` a constant direction; 3 layers of a 2 x 2
    patch grid for the map."""

    num_layers = 3

    def __init__(self, features: torch.Tensor | None = None):
        self.features, self.seen = features, []

    def image_features(self, images):
        self.seen.append(list(images))
        if self.features is not None:
            return self.features
        return torch.nn.functional.normalize(torch.ones(len(images), 3), dim=-1)

    def text_features(self, texts):
        return torch.nn.functional.normalize(torch.tensor([[0.6, 0.8, 0.0]]).repeat(len(texts), 1), dim=-1)

    def patch_tokens(self, images):
        from agci.ris.encoders import PatchTokens

        tokens = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [2.0, 0.5, 1.0], [0.0, 0.0, 3.0]]])
        return PatchTokens([tokens.repeat(len(images), 1, 1)] * 3, [(2, 2)] * len(images))

    def project(self, hidden):
        return hidden


def test_global_score_weighs_the_crop_by_v_and_the_whole_image_by_1_minus_v():
    from PIL import Image

    from agci.ris.pipeline import global_scores

    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[:, :3] = (200, 0, 0)
    pixels[:, 3:] = (0, 0, 100)  # mean colour (100, 0, 50): what fills the outside of a mask
    masks = np.zeros((2, 4, 6), dtype=bool)
    masks[0, 0:2, 0:3] = True  # a 3 x 2 (w x h) crop, all red
    masks[1, 1:4, 4:6] = True  # a 2 x 3 crop, all blue
    text = torch.tensor([0.6, 0.8, 0.0])
    # rows: crop 0, crop 1, whole 0, whole 1; cosines with the text 0.6, 0, 0.8 and 1
    features = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    encoder = _StubEncoder(features)
    image = Image.fromarray(pixels)
    # 100 x (0.95 x 0.6 + 0.05 x 0.8) = 61 and 100 x (0.95 x 0 + 0.05 x 1) = 5
    assert global_scores(encoder, image, masks, text, v=0.95).tolist() == pytest.approx([61.0, 5.0], abs=1e-4)
    # 100 x (0.85 x 0.6 + 0.15 x 0.8) = 63 and 100 x (0.85 x 0 + 0.15 x 1) = 15; 0.85 is the default
    assert global_scores(encoder, image, masks, text, v=0.85).tolist() == pytest.approx([63.0, 15.0], abs=1e-4)
    assert global_scores(encoder, image, masks, text).tolist() == pytest.approx([63.0, 15.0], abs=1e-4)
    assert global_scores(encoder, image, masks, text, v=1.0).tolist() == pytest.approx([60.0, 0.0], abs=1e-4)
    # the images the scores came from: the crops first (each its mask's bounding box), then the whole images
    crops_and_wholes = encoder.seen[0]
    assert [im.size for im in crops_and_wholes] == [(3, 2), (2, 3), (6, 4), (6, 4)]
    assert (np.asarray(crops_and_wholes[0]) == (200, 0, 0)).all()
    assert (np.asarray(crops_and_wholes[1]) == (0, 0, 100)).all()
    whole = np.asarray(crops_and_wholes[2])
    assert (whole[0:2, 0:3] == (200, 0, 0)).all() and (whole[2:, :] == (100, 0, 50)).all()


@pytest.mark.parametrize(("dataset", "split_by", "v"), [("refcoco", "unc", 0.95), ("refcoco+", "unc", 0.95),
                                                        ("refcocog", "umd", 0.85)])  # fmt: skip
def test_ris_evaluate_weighs_the_crop_by_each_datasets_default_v(tmp_path, monkeypatch, dataset, split_by, v):
    """The reference's weights when ``--v`` is not given: 0.95 for RefCOCO and RefCOCO+, 0.85 for RefCOCOg;
    the weight reaches the global score (a stand-in encoder, so no model is loaded)."""
    import inspect
    import shutil

    import agci.ris.evaluate as ris_evaluate
    import agci.ris.pipeline as pipeline

    root = _synthetic_refer(tmp_path / "data", n_images=2)
    if dataset != "refcocog":
        shutil.copytree(root / "refer" / "refcocog", root / "refer" / dataset)
        (root / "refer" / dataset / "refs(umd).p").rename(root / "refer" / dataset / f"refs({split_by}).p")
    monkeypatch.setattr(ris_evaluate, "check_model", lambda model, layer: None)
    monkeypatch.setattr(Encoder, "load", classmethod(lambda cls, path, device="cpu": _StubEncoder()))
    weights = []
    real = pipeline.global_scores

    def spy(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs)
        bound.apply_defaults()
        weights.append(bound.arguments["v"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "global_scores", spy)
    out = tmp_path / "out"
    args = ["ris", "evaluate", "--model", str(tmp_path / "stub-model"), "--refer", str(root / "refer"), "--dataset",
            dataset, "--split", "val", "--images", str(root / "images"), "--proposals", f"disk:{root / 'masks'}",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert weights == [v, v]  # one global score per expression
    summary = json.loads((out / f"{dataset}_val.json").read_text())
    assert summary["v"] == v and summary["n"] == 2
    record = json.loads((out / "agci-run.json").read_text())["runs"][f"{dataset}_val"]
    assert record["fingerprint"]["v"] == v
    weights.clear()
    assert main([*args[:-1], str(tmp_path / "given"), "--v", "0.5"]) == 0
    assert weights == [0.5, 0.5]  # a given --v wins over the default


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_tokenizer_without_a_length_still_cuts_to_the_text_models_positions(kind, encoders):
    """A tokenizer saved without model_max_length reports a huge one; the cut then comes from the model."""
    enc = Encoder.load(str(encoders[kind]))
    enc.processor.tokenizer.model_max_length = int(1e30)  # what transformers sets when the file has none
    assert enc.text_length == 16
    feature = enc.text_features([" ".join(["dog"] * 40)])
    assert feature.shape[0] == 1 and torch.isfinite(feature).all()


@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip2"])
def test_long_expressions_are_cut_to_the_text_models_length(kind, encoders, monkeypatch):
    """An expression longer than the text model's positions (16 in the tiny models) is cut to its first 16
    tokens, not refused with an index error: the model gets those tokens and the feature is the prefix's."""
    from agci.ris.pipeline import text_feature

    enc = Encoder.load(str(encoders[kind]))
    assert enc.model.config.text_config.max_position_embeddings == 16
    words = ("the red dog on the left of the blue car with the man and the woman in the picture " * 3).split()
    long, prefix = " ".join(words), " ".join(words[:16])  # 57 words; one token each (CLIP, SigLIP)
    seen = []
    get_text_features = enc.model.get_text_features

    def recording(**kw):
        seen.append(kw["input_ids"].tolist())
        return get_text_features(**kw)

    monkeypatch.setattr(enc.model, "get_text_features", recording)
    feature = enc.text_features([long])
    tokens = enc.processor.tokenizer([long], truncation=False)["input_ids"][0]
    assert len(tokens) > 16 and seen == [[tokens[:16]]]  # the first 16 tokens, nothing else
    assert feature.shape == (1, enc.text_features(["a car"]).shape[1]) and torch.isfinite(feature).all()
    assert feature.norm().item() == pytest.approx(1.0, abs=1e-5)
    if kind == "siglip2":  # the tiny SigLIP2's tokenizer class does not split text into the fixture's words
        return
    assert tokens[:16] == enc.processor.tokenizer.convert_tokens_to_ids(words[:16])
    torch.testing.assert_close(feature, enc.text_features([prefix]), rtol=0, atol=0)
    # the pipeline's feature (sentence and head phrase "the red dog") too, in a batch with a short expression
    both = text_feature(enc, [long, "a car"])
    torch.testing.assert_close(both, text_feature(enc, [prefix, "a car"]), rtol=1e-5, atol=1e-6)


class _FakeSpacy:
    """A stand-in for spaCy: ``load`` records the pipeline asked for; the parse has the noun chunks given."""

    def __init__(self, chunks: dict[str, list[str]], missing_model: bool = False):
        self.chunks, self.missing_model, self.loaded, self.parsed = chunks, missing_model, [], []

    def load(self, name):
        self.loaded.append(name)
        if self.missing_model:
            raise OSError(f"[E050] Can't find model '{name}'")
        return self._parse

    def _parse(self, text):
        from types import SimpleNamespace

        self.parsed.append(text)
        return SimpleNamespace(noun_chunks=iter(SimpleNamespace(text=c) for c in self.chunks.get(text, [])))


@contextlib.contextmanager
def _spacy(monkeypatch, fake: _FakeSpacy):
    """``import spacy`` gives the stand-in within the block; head_phrase's cached pipeline is put back after."""
    module = types.ModuleType("spacy")
    module.load = fake.load
    monkeypatch.setitem(sys.modules, "spacy", module)
    saved = head_phrase.__dict__.pop("nlp", None)  # head_phrase keeps the loaded pipeline on itself
    try:
        yield fake
    finally:
        head_phrase.__dict__.pop("nlp", None)
        if saved is not None:
            head_phrase.nlp = saved
        monkeypatch.delitem(sys.modules, "spacy")


def test_head_phrase_is_spacys_first_noun_chunk_when_spacy_can_parse(monkeypatch, encoders):
    """With spaCy and en_core_web_sm importable, the head phrase is the first noun chunk of spaCy's parse (here
    a stand-in parse, so that this runs without spaCy); the fallback rule would give "a small dog lying"."""
    from agci.ris.pipeline import text_feature

    text = "a small dog lying next to the sofa"
    with _spacy(monkeypatch, _FakeSpacy({text: ["a small dog", "the sofa"]})) as fake:
        assert head_phrase(text) == "a small dog"
        assert [head_phrase(text), head_phrase(text)] == ["a small dog"] * 2
    assert fake.loaded == ["en_core_web_sm"] and fake.parsed == [text] * 3  # the pipeline is loaded once
    # no noun chunk in the parse, or spaCy without its English pipeline: the words before the first break word
    with _spacy(monkeypatch, _FakeSpacy({})):
        assert head_phrase(text) == "a small dog lying"
    with _spacy(monkeypatch, _FakeSpacy({text: ["a small dog"]}, missing_model=True)):
        assert head_phrase(text) == "a small dog lying"
    # the spaCy phrase is what the text feature mixes in: 0.5 x sentence + 0.5 x head phrase, normalised
    enc = Encoder.load(str(encoders["clip"]))
    sentence, head, fallback = enc.text_features([text, "a small dog", "a small dog lying"])
    with _spacy(monkeypatch, _FakeSpacy({text: ["a small dog", "the sofa"]})):
        got = text_feature(enc, [text])[0]
    torch.testing.assert_close(got, torch.nn.functional.normalize(0.5 * sentence + 0.5 * head, dim=-1), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    assert not torch.allclose(got, torch.nn.functional.normalize(0.5 * sentence + 0.5 * fallback, dim=-1), atol=1e-3)


def test_head_phrase_with_the_real_spacy():
    """The same with spaCy itself, where it and its English pipeline are installed (the README's optional
    dependency); skipped, saying which is missing, otherwise."""
    try:
        import spacy
    except ImportError:
        pytest.skip("spaCy is not installed: head_phrase uses the fallback rule (pip install spacy)")
    try:
        nlp = spacy.load("en_core_web_sm")
    except OSError:
        pytest.skip("spaCy's English pipeline is not installed: python -m spacy download en_core_web_sm")
    text = "a small dog lying next to the sofa"
    assert [c.text for c in nlp(text).noun_chunks][0] == "a small dog"
    assert head_phrase(text) == "a small dog"  # the fallback rule would give "a small dog lying"
