"""Scoring and ``agci probe`` on the tiny probe VLM shipped with agci (real LLaVA classes, real processor)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tiny_checkpoints import processed_families_here

from agci.bias.model_runs import (
    answer_logprob,
    generate_answers,
    load_probe_vlm,
    masked_copies,
    masked_tensors,
    occlusion_map,
    occlusion_map_by_generation,
    occlusion_maps,
    parse_answer,
    prefetched,
    score_yes_no,
    similarity,
)
from agci.bias.probe_sets import PROMPT, SetOptions, build, read_records
from agci.bias.runner import ProbeConfig, run_probe
from agci.bias.shipped import ASSET_DIR
from agci.vlm import chat_messages


@pytest.fixture(scope="module")
def vlm():
    return load_probe_vlm(ASSET_DIR)


@pytest.fixture(scope="module")
def probe_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe") / "set"
    build(folder, SetOptions(source="synthetic:12", seed=7), progress=False)
    return folder


def _samples(folder: Path, n: int, step: int = 1):
    from PIL import Image

    records = read_records(folder / "position.jsonl")[::step][:n]
    images = [Image.open(folder / r["image"]).convert("RGB") for r in records]
    return records, images, [PROMPT.format(caption=r["caption"]) for r in records]


def test_embedded_model_is_small_and_documents_its_training():
    size = sum(p.stat().st_size for p in ASSET_DIR.iterdir())
    assert size < 8e6, f"the embedded probe model should stay a few MB, is {size / 1e6:.1f} MB"
    record = json.loads((ASSET_DIR / "training.json").read_text())
    assert {"seed", "steps", "cell_weights", "held_out_accuracy_by_cell", "versions"} <= set(record)


def test_answer_words_and_parsing(vlm):
    tok = vlm.tokenizer
    assert tok.convert_tokens_to_ids("Yes") in vlm.yes_ids and tok.convert_tokens_to_ids("yes") in vlm.yes_ids
    assert tok.convert_tokens_to_ids("No") in vlm.no_ids and not set(vlm.yes_ids) & set(vlm.no_ids)
    for text, want in [("Yes", "Yes"), (" yes.", "Yes"), ("'No', because", "No"), ("**No**", "No"),
                       ("Nope", "Unknown"), ("", "Unknown"), ("The answer is yes", "Unknown")]:  # fmt: skip
        assert parse_answer(text) == want, text


def test_the_embedded_model_was_trained_it_names_objects():
    """Random weights name nothing; the shipped model names a lone object's colour and shape."""
    from agci.bias.synthetic import synthetic_pairs
    from agci.bias.training.model import WHOLE_IMAGE_QUESTION

    vlm = load_probe_vlm(ASSET_DIR)
    pairs = synthetic_pairs(30, seed=99)
    answers = generate_answers(vlm, [p.load_image() for p in pairs], [WHOLE_IMAGE_QUESTION] * 30, max_new_tokens=6)
    colour_right = sum(p.caption.split()[1] in a["generated"].split() for p, a in zip(pairs, answers, strict=True))
    assert colour_right >= 20, [a["generated"] for a in answers][:5]


def test_the_embedded_model_has_the_planted_centre_bias(vlm, probe_set):
    """Trained with 9/29 of its targets in the centre, the shipped model finds a target there far more often
    than elsewhere, and the probe's test calls the difference significant (random weights would not)."""
    from agci.bias.metrics import position_summary

    records, images, prompts = _samples(probe_set, 10_000)
    rows = [{**r, **s} for r, s in zip(records, score_yes_no(vlm, images, prompts), strict=True)]
    summary = position_summary(rows)
    assert summary["bias"]["best_cell"] == "center", summary["positive_accuracy_per_cell"]
    assert summary["bias"]["centre_minus_border"] > 0.3
    assert summary["position_test"]["pairs"] == 12 and summary["position_test"]["p_value"] < 1e-3


def test_generate_mode_gives_the_same_predictions(vlm, probe_set):
    records, images, prompts = _samples(probe_set, 48, step=3)
    scored = score_yes_no(vlm, images, prompts)
    generated = generate_answers(vlm, images, prompts, max_new_tokens=8)
    answered = [(s, g) for s, g in zip(scored, generated, strict=False) if g["prediction"] != "Unknown"]
    assert len(answered) >= 0.9 * len(records), [g["generated"] for g in generated][:5]
    assert all(s["prediction"] == g["prediction"] for s, g in answered)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_a_sample_alone_and_in_a_batch_score_the_same(vlm, probe_set, lam):
    _, images, prompts = _samples(probe_set, 6, step=5)
    vlm.model.global_context_broadcast_lambda = lam
    try:
        batched = score_yes_no(vlm, images, prompts)
        alone = [score_yes_no(vlm, [im], [p])[0] for im, p in zip(images, prompts, strict=False)]
    finally:
        vlm.model.global_context_broadcast_lambda = 0.0
    for a, b in zip(batched, alone, strict=False):
        assert a["prediction"] == b["prediction"]
        assert a["p_yes"] == pytest.approx(b["p_yes"], abs=1e-4)


def test_lambda_reaches_the_model(vlm, probe_set):
    _, images, prompts = _samples(probe_set, 4)
    vlm.model.global_context_broadcast_lambda = 0.0
    base = [s["p_yes"] for s in score_yes_no(vlm, images, prompts)]
    vlm.model.global_context_broadcast_lambda = 1.0
    try:
        agci = [s["p_yes"] for s in score_yes_no(vlm, images, prompts)]
    finally:
        vlm.model.global_context_broadcast_lambda = 0.0
    assert base != agci


def test_batched_occlusion_equals_a_generate_per_mask(vlm, probe_set):
    _, images, prompts = _samples(probe_set, 1)
    image = images[0].resize((168, 168))
    answer = generate_answers(vlm, [image], prompts, max_new_tokens=8)[0]["answer_ids"]
    base, fast = occlusion_map(vlm, image, prompts[0], answer, mask=56, batch_size=4)
    base_ref, slow = occlusion_map_by_generation(vlm, image, prompts[0], mask=56, max_new_tokens=8)
    assert fast.shape == (3, 3)
    assert base == pytest.approx(base_ref, abs=1e-4)
    torch.testing.assert_close(fast, slow.to(fast.dtype), atol=1e-4, rtol=1e-4)
    assert answer_logprob(vlm, [image], prompts[0], answer)[0].item() == pytest.approx(base, abs=1e-5)
    with pytest.raises(ValueError, match="must divide"):
        occlusion_map(vlm, image, prompts[0], answer, mask=50)


FAMILIES = processed_families_here()  # the families whose tiny checkpoints have a real processor


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_family_scores_batches_like_single_samples(tmp_path, model_type):
    """The probe scorers on each family's tiny checkpoint (its own processor and chat template): a batch of
    images of different sizes scores as each image alone, and the similarity probe runs."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_checkpoints import save_tiny

    vlm = load_probe_vlm(save_tiny(model_type, tmp_path / model_type, lam=0.5))
    images = [_samples_from_noise(w, h, seed) for seed, (w, h) in enumerate([(112, 84), (84, 112), (140, 140)])]
    prompts = ["Is there a red dog?", "Is there a cat?", "Is there a blue car?"]
    batched = score_yes_no(vlm, images, prompts)
    for image, prompt, together in zip(images, prompts, batched, strict=True):
        alone = score_yes_no(vlm, [image], [prompt])[0]
        assert alone["p_yes"] == pytest.approx(together["p_yes"], abs=1e-4), model_type
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = similarity(vlm, images, ["red dog", "cat", "blue car"])
    assert len(values) == 3 and all(-1 <= v <= 1 for v in values)
    assert not [w for w in caught if "without input_ids" in str(w.message)]  # tiles grouped as in the forward


@pytest.mark.parametrize("model_type", FAMILIES)
def test_agci_probe_runs_on_every_family(tmp_path, probe_set, model_type):
    """The whole probe (position, similarity, occlusion; a lambda sweep) on each family's tiny checkpoint."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_checkpoints import save_tiny

    model = save_tiny(model_type, tmp_path / model_type, lam=0.25)
    summary = run_probe(ProbeConfig(model=str(model), data=str(probe_set), out=str(tmp_path / "out"), limit=12,
                                    batch_size=5, occlusion_samples=1, mask=420, max_new_tokens=3,
                                    progress=False))  # fmt: skip
    assert set(summary["lambdas"]) == {"0", "0.25"}  # 0 and the checkpoint's own value
    for lam in ("0", "0.25"):
        tasks = summary["lambdas"][lam]
        assert tasks["position"]["scored"] == 12 and tasks["similarity"]["scored"] == 12, tasks
        assert tasks["occlusion"]["scored"] == 1, tasks["occlusion"]
    rows = [json.loads(x) for x in _lines(tmp_path / "out" / "lambda_0.25" / "occlusion.jsonl")]
    # up to 3 new tokens: an answer ends early at a special token (a random model may generate one)
    assert 1 <= len(rows[0]["answer_ids"]) <= 3 and len(rows[0]["drops"]) == 2 == len(rows[0]["drops"][0])


@pytest.mark.parametrize("model_type", FAMILIES)
def test_masked_tensors_reach_the_model_as_the_reference_pil_copies_do(tmp_path, model_type):
    """agci masks uint8 tensors instead of PIL images; every family's processor must see no difference."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_checkpoints import save_tiny
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(save_tiny(model_type, tmp_path / model_type))
    image = _samples_from_noise(112, 84)
    fast, slow = list(masked_tensors(image, 28)), list(masked_copies(image, 28))
    assert len(fast) == len(slow) == 12
    assert all(f.dtype == torch.uint8 and f.shape == (3, 84, 112) for f in fast)
    chosen = [0, 5, 11]
    text = [processor.apply_chat_template(chat_messages("Is it red?"), add_generation_prompt=True)] * len(chosen)
    a = processor(images=[[fast[i]] for i in chosen], text=text, return_tensors="pt", padding=True)
    b = processor(images=[[slow[i]] for i in chosen], text=text, return_tensors="pt", padding=True)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    unmasked = processor(images=[[image]] * len(chosen), text=text, return_tensors="pt", padding=True)
    assert not torch.equal(a["pixel_values"], unmasked["pixel_values"])  # the masks are there


def _samples_from_noise(width: int, height: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_occlusion_maps_of_a_sweep_equal_one_lambda_at_a_time(vlm, probe_set):
    _, images, prompts = _samples(probe_set, 1)
    image = images[0].resize((168, 168))
    answers = {}
    for lam in (0.0, 1.0):
        vlm.model.global_context_broadcast_lambda = lam
        answers[lam] = generate_answers(vlm, [image], prompts, max_new_tokens=8)[0]["answer_ids"]
    alone = {}
    for lam, ids in answers.items():
        vlm.model.global_context_broadcast_lambda = lam
        alone[lam] = occlusion_map(vlm, image, prompts[0], ids, mask=56, batch_size=4)
    vlm.model.global_context_broadcast_lambda = 0.25
    try:
        swept = occlusion_maps(vlm, image, prompts[0], answers, mask=56, batch_size=4)
        assert vlm.model.global_context_broadcast_lambda == 0.25  # left as it was
    finally:
        vlm.model.global_context_broadcast_lambda = 0.0
    assert not torch.allclose(alone[0.0][1], alone[1.0][1])
    for lam in answers:
        assert swept[lam][0] == pytest.approx(alone[lam][0], abs=1e-6)
        torch.testing.assert_close(swept[lam][1], alone[lam][1])


def test_similarity_pooling_and_lambda(vlm, probe_set):
    from PIL import Image

    records = read_records(probe_set / "similarity.jsonl")[:3]
    images = [Image.open(probe_set / r["image"]).convert("RGB") for r in records]
    captions = [r["caption"] for r in records]
    # by hand at lambda 0 (AGCI adds nothing): the projector's output for each image, the caption's input
    # embeddings; each pooled over its tokens, then dot / (|a| |b|)
    projected = []
    hook = vlm.model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: projected.append(o.float()))
    try:
        top = similarity(vlm, images, captions, "max")
    finally:
        hook.remove()
    mean = similarity(vlm, images, captions, "mean")
    feats = torch.cat(projected).reshape(len(images), -1, projected[0].shape[-1])
    table = vlm.model.get_input_embeddings().weight.float()
    for k, caption in enumerate(captions):
        text = table[vlm.tokenizer.encode(caption, add_special_tokens=False)]
        for pooled, got in (((feats[k].max(0).values, text.max(0).values), top[k]),
                            ((feats[k].mean(0), text.mean(0)), mean[k])):  # fmt: skip
            a, b = pooled
            want = (a @ b / (a.norm() * b.norm())).item()
            assert got == pytest.approx(want, abs=1e-5), caption
    assert top != mean
    vlm.model.global_context_broadcast_lambda = 1.0
    try:
        assert similarity(vlm, images, captions, "max") != top
    finally:
        vlm.model.global_context_broadcast_lambda = 0.0
    with pytest.raises(ValueError, match="pooling"):
        similarity(vlm, images, captions, "median")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_an_interrupted_run_resumes_without_rescoring(tmp_path, probe_set):
    cfg = ProbeConfig(data=str(probe_set), out=str(tmp_path / "run"), lambdas=[0.0, 0.5], tasks=("position",),
                      adapters=(), limit=30, batch_size=8, progress=False)  # fmt: skip
    first = run_probe(cfg)
    results = tmp_path / "run" / "lambda_0.5" / "position.jsonl"
    lines = _lines(results)
    assert len(lines) == 30
    # interrupt: keep 11 rows and a row cut in half
    results.write_text("\n".join(lines[:11]) + "\n" + lines[11][: len(lines[11]) // 2])
    again = run_probe(cfg)
    rows = [json.loads(x) for x in _lines(results)]  # every line whole again
    assert _lines(results)[:11] == lines[:11]  # what was scored is kept as it was
    assert sorted(r["id"] for r in rows) == sorted(json.loads(x)["id"] for x in lines)
    assert again["lambdas"]["0.5"]["position"]["accuracy"] == first["lambdas"]["0.5"]["position"]["accuracy"]


def test_a_sweep_encodes_each_batch_once_and_scores_like_single_lambda_runs(tmp_path, probe_set, monkeypatch):
    import agci.bias.model_runs as model_runs

    calls = []
    real_encode = model_runs.encode
    monkeypatch.setattr(model_runs, "encode", lambda vlm, images, prompts: calls.append(len(images)) or
                        real_encode(vlm, images, prompts))  # fmt: skip
    options = dict(adapters=(), data=str(probe_set), tasks=("position", "occlusion"), limit=12, batch_size=8,
                   occlusion_samples=1, mask=168, progress=False)  # fmt: skip
    run_probe(ProbeConfig(out=str(tmp_path / "sweep"), lambdas=[0.0, 1.0], **options))
    # position: 12 images in batches of 8; occlusion: the image (to generate, and as the map's base), then its
    # 25 masked copies in batches of 8; never again for the second lambda
    assert calls == [8, 4, 1, 8, 8, 8, 1]
    for lam in ("0", "1"):
        run_probe(ProbeConfig(out=str(tmp_path / lam), lambdas=[float(lam)], **options))
        for task in ("position", "occlusion"):
            swept = [json.loads(x) for x in _lines(tmp_path / "sweep" / f"lambda_{lam}" / f"{task}.jsonl")]
            alone = [json.loads(x) for x in _lines(tmp_path / lam / f"lambda_{lam}" / f"{task}.jsonl")]
            assert [r["id"] for r in swept] == [r["id"] for r in alone]
            for a, b in zip(swept, alone, strict=True):
                if task == "position":
                    assert a["prediction"] == b["prediction"] and a["p_yes"] == pytest.approx(b["p_yes"], abs=1e-5)
                else:
                    assert a["answer_ids"] == b["answer_ids"]
                    torch.testing.assert_close(torch.tensor(a["drops"]), torch.tensor(b["drops"]), atol=2e-5, rtol=0)


def test_generate_mode_of_a_sweep_agrees_with_the_default_scoring(tmp_path, probe_set):
    options = dict(adapters=(), data=str(probe_set), tasks=("position",), limit=24, batch_size=8, lambdas=[0.0, 0.5],
                   max_new_tokens=4, progress=False)  # fmt: skip
    summary = run_probe(ProbeConfig(out=str(tmp_path / "generate"), generate=True, **options))
    run_probe(ProbeConfig(out=str(tmp_path / "scores"), **options))
    assert summary["scoring"] == "generate-and-parse"
    for lam in ("0", "0.5"):
        generated = [json.loads(x) for x in _lines(tmp_path / "generate" / f"lambda_{lam}" / "position.jsonl")]
        scored = {r["id"]: r for r in map(json.loads, _lines(tmp_path / "scores" / f"lambda_{lam}" / "position.jsonl"))}
        assert len(generated) == 24 and all("generated" in r and "answer_ids" not in r for r in generated)
        answered = [r for r in generated if r["prediction"] != "Unknown"]
        assert len(answered) >= 20
        assert all(r["prediction"] == scored[r["id"]]["prediction"] for r in answered)


def test_prefetched_prepares_the_next_item_while_the_caller_works_keeps_order_and_raises():
    import threading

    started = [threading.Event() for _ in range(4)]

    def prepare(i):
        started[i].set()
        if i == 3:
            raise ValueError("item 3 is bad")
        return i * 10

    items = prefetched(prepare, range(4), ahead=1)
    assert next(items) == 0
    assert started[1].wait(10)  # being prepared while the caller holds item 0
    assert [next(items), next(items)] == [10, 20]
    with pytest.raises(ValueError, match="item 3"):
        next(items)
    started = [threading.Event() for _ in range(4)]
    items = prefetched(prepare, range(3), ahead=0)
    assert next(items) == 0 and not started[1].is_set()  # no prefetching: nothing ahead
    assert list(items) == [10, 20]


def test_prefetching_does_not_change_the_results(tmp_path, probe_set):
    options = dict(data=str(probe_set), tasks=("position", "similarity", "occlusion"), limit=10, batch_size=4,
                   adapters=(), lambdas=[0.5], occlusion_samples=1, mask=280, progress=False)  # fmt: skip
    for prefetch in (0, 2):
        run_probe(ProbeConfig(out=str(tmp_path / str(prefetch)), prefetch=prefetch, **options))
    for task in ("position", "similarity", "occlusion"):
        rows = [_lines(tmp_path / str(n) / "lambda_0.5" / f"{task}.jsonl") for n in (0, 2)]
        assert rows[0] == rows[1] and len(rows[0]) == (1 if task == "occlusion" else 10)
    with pytest.raises(ValueError, match="prefetch must be >= 0"):
        ProbeConfig(prefetch=-1)


def test_bad_records_are_skipped_and_counted(tmp_path, probe_set):
    records = read_records(probe_set / "position.jsonl")[:6]
    records[1]["image"] = "images/does_not_exist.jpg"
    records[2]["caption"] = ""
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    records[3]["image"] = str(tmp_path / "broken.jpg")
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = run_probe(ProbeConfig(adapters=(), data=str(data), image_root=str(probe_set), out=str(tmp_path / "out"),
                                    lambdas=[0.0], tasks=("position",), progress=False))  # fmt: skip
    pos = summary["lambdas"]["0"]["position"]
    assert (pos["scored"], pos["skipped"]) == (3, 3)
    assert pos["skipped_reasons"] == {"unreadable image": 2, "empty caption": 1}


def test_unsupported_model_and_missing_chat_template_are_refused_before_loading(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(ValueError, match="not supported; supported: .*llava"):
        load_probe_vlm(tmp_path / "bert")
    copy = tmp_path / "no-template"
    shutil.copytree(ASSET_DIR, copy)
    for f in copy.glob("chat_template*"):
        f.unlink()
    for name in ("processor_config.json", "tokenizer_config.json"):
        if (copy / name).is_file():
            cfg = json.loads((copy / name).read_text())
            cfg.pop("chat_template", None)
            (copy / name).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no chat template"):
        load_probe_vlm(copy)


def _agci(*args, cwd, env=None):
    full_env = dict(os.environ, TQDM_DISABLE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "agci", *args], cwd=cwd, capture_output=True, text=True, env=full_env)


def test_cli_probe_on_the_embedded_default(tmp_path):
    """`agci probe` with no model and no adapters: the embedded VLM's lambda sweep on a fresh synthetic set, every
    output written (the shipped adapters: tests/test_probe_adapters.py)."""
    result = _agci("probe", "--out", "out", "--source", "synthetic:18", "--occlusion-samples", "9", "--adapter", "none",
                   cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["lambdas"]) == {"0", "0.5"}
    for lam in ("0", "0.5"):
        pos = summary["lambdas"][lam]["position"]
        assert pos["scored"] == 18 * 9 + 18 * 3 and pos["skipped"] == 0
        assert len(pos["positive_accuracy_per_cell"]) == 9 and pos["bias"]["spread"] is not None
        # the embedded model's planted centre bias: found far more often in the centre, and significantly so
        assert pos["position_test"]["pairs"] == 18 and pos["position_test"]["p_value"] < 1e-3, pos["position_test"]
        assert pos["bias"]["best_cell"] == "center" and pos["bias"]["centre_minus_border"] > 0.3, pos["bias"]
        assert summary["lambdas"][lam]["similarity"]["scored"] == 18 * 9
        assert summary["lambdas"][lam]["occlusion"]["scored"] == 9
        assert len(_lines(out / f"lambda_{lam}" / "position.jsonl")) == 18 * 12
        rows = [json.loads(x) for x in _lines(out / f"lambda_{lam}" / "position.jsonl")]
        assert pos["accuracy"] == pytest.approx(sum(r["prediction"] == r["answer"] for r in rows) / len(rows))
    from PIL import Image

    for name in ("position_accuracy", "yes_rate", "similarity", "occlusion_share", "occlusion_maps"):
        with Image.open(tmp_path / summary["figures"][name]) as png:
            assert png.format == "PNG" and min(png.size) > 200, (name, png.size)  # a 3 x 3 map per lambda at least
            assert len(png.convert("L").getcolors(maxcolors=1 << 20)) > 10, name  # drawn, not a blank canvas
    assert "lambda 0:" in result.stdout and "position spread" in result.stdout and "Cochran's Q" in result.stdout
    assert (out / "probe_set" / "manifest.json").is_file()


def test_cli_probe_errors_are_clear(tmp_path):
    result = _agci("probe", "--data", str(tmp_path / "nowhere"), "--out", "o", cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = _agci("probe", "--tasks", "position,colour", cwd=tmp_path)
    assert result.returncode == 2 and "unknown probe task" in result.stderr
    result = _agci("probe-set", "s", "--source", "synthetic:4", cwd=tmp_path)
    assert result.returncode == 2 and "at least 9" in result.stderr


def test_distributed_launch_shards_the_samples(tmp_path, probe_set):
    """Two CPU processes under torchrun, as `accelerate launch` runs them on GPUs: each scores its share."""
    launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("the torchrun command is not installed next to this Python")
    args = ["--data", str(probe_set), "--out", "out", "--lambda", "0", "--tasks", "position", "--limit", "20",
            "--adapter", "none"]  # fmt: skip
    result = subprocess.run(
        [launcher, "--nproc_per_node", "2", "--master_port", "29517", "-m", "agci", "probe", *args],
        cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1"),
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted((tmp_path / "out" / "lambda_0").glob("position*.jsonl"))
    assert [f.name for f in files] == ["position.rank0-of-2.jsonl", "position.rank1-of-2.jsonl"]
    ids = [json.loads(x)["id"] for f in files for x in _lines(f)]
    assert len(ids) == 20 and len(set(ids)) == 20
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["lambdas"]["0"]["position"]["scored"] == 20


def test_a_lambda_is_written_exactly_into_folder_names_and_the_summary(tmp_path, probe_set, monkeypatch):
    from agci.patches import hooks

    seen = []
    real_inject = hooks.inject
    monkeypatch.setattr(hooks, "inject", lambda features, lam, *a, **k: seen.append(lam) or real_inject(
        features, lam, *a, **k))  # fmt: skip
    summary = run_probe(ProbeConfig(adapters=(), data=str(probe_set), out=str(tmp_path / "out"), lambdas=[0.1234567],
                                    tasks=("position",), limit=4, batch_size=4, progress=False))  # fmt: skip
    assert list(summary["lambdas"]) == ["0.1234567"]  # {:g} would have written 0.123457
    assert len(_lines(tmp_path / "out" / "lambda_0.1234567" / "position.jsonl")) == 4
    assert set(seen) == {0.1234567}


def test_generate_scores_a_tokenizer_without_single_yes_no_tokens(tmp_path, probe_set):
    """The Yes/No token check is for next-token scoring; --generate is the way around it, so it must not run."""
    model = tmp_path / "no-yes-no"
    shutil.copytree(ASSET_DIR, model)
    tok = json.loads((model / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    for word in ("Yes", "yes", "YES", "No", "no", "NO"):
        vocab[f"x{word}x"] = vocab.pop(word)  # same ids, other words: "Yes" is now <unk>
    (model / "tokenizer.json").write_text(json.dumps(tok))
    args = ["probe", "--model", str(model), "--data", str(probe_set), "--tasks", "position", "--lambda", "0",
            "--limit", "4", "--max-new-tokens", "3"]  # fmt: skip
    refused = _agci(*args, "--out", "a", cwd=tmp_path)
    assert refused.returncode == 2 and "use --generate" in refused.stderr, refused.stderr[-2000:]
    result = _agci(*args, "--out", "b", "--generate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(x) for x in _lines(tmp_path / "b" / "lambda_0" / "position.jsonl")]
    assert len(rows) == 4 and all("generated" in r and r["prediction"] in ("Yes", "No", "Unknown") for r in rows)


def test_a_malformed_records_line_is_named_skipped_and_counted(tmp_path, probe_set, caplog):
    lines = (probe_set / "position.jsonl").read_text().splitlines()[:5]
    lines.insert(2, '{"image": "images/x.jpg", "caption": "a red')  # cut short
    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        summary = run_probe(ProbeConfig(data=str(data), image_root=str(probe_set), out=str(tmp_path / "out"),
                                        adapters=(), lambdas=[0.0], tasks=("position",), progress=False))  # fmt: skip
    assert f"{data}:3 is not valid JSON" in caplog.text
    pos = summary["lambdas"]["0"]["position"]
    assert (pos["scored"], pos["skipped"], pos["skipped_reasons"]) == (5, 1, {"malformed record": 1})
    (tmp_path / "twice.jsonl").write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(ValueError, match="record ids must be unique"):
        read_records(tmp_path / "twice.jsonl")


def test_a_missing_model_path_or_an_out_that_is_a_file_is_refused_and_creates_nothing(tmp_path):
    result = _agci("probe", "--model", str(tmp_path / "nonexistent"), "--out", "out", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").write_text("a file")
    result = _agci("probe", "--out", "taken", "--limit", "1", cwd=tmp_path)
    assert result.returncode == 2 and "is an existing file, not a folder" in result.stderr, result.stderr
    assert "Errno" not in result.stderr and (tmp_path / "taken").read_text() == "a file"


def test_p_yes_and_the_yes_no_mass_are_read_from_the_models_own_next_token_distribution(vlm, probe_set):
    """One forward done here, without the scorer: P(Yes) and P(No) are the softmax summed over every Yes and
    No token id; p_yes = P(Yes) / (P(Yes) + P(No)) and the mass is P(Yes) + P(No)."""
    from agci.bias.model_runs import encode, yes_no_from_inputs

    records, images, prompts = _samples(probe_set, 12, step=7)
    inputs = encode(vlm, images, prompts)
    with torch.no_grad():
        probs = vlm.model(**inputs).logits[:, -1].float().softmax(-1)
    p_yes_token = probs[:, vlm.yes_ids].sum(1)
    p_no_token = probs[:, vlm.no_ids].sum(1)
    want_p_yes = (p_yes_token / (p_yes_token + p_no_token)).tolist()
    want_mass = (p_yes_token + p_no_token).tolist()
    best_yes, best_no = probs[:, vlm.yes_ids].max(1).values, probs[:, vlm.no_ids].max(1).values
    want_prediction = ["Yes" if a > b else "No" for a, b in zip(best_yes, best_no, strict=True)]
    # the samples are informative: the model says Yes to some and No to others, with most mass on Yes/No
    assert min(want_p_yes) < 0.4 and max(want_p_yes) > 0.6, want_p_yes
    assert min(want_mass) > 0.5 and max(want_mass) < 1 - 3e-5, want_mass  # a mass of 1 would show
    from_inputs = yes_no_from_inputs(vlm, inputs)
    scored = score_yes_no(vlm, images, prompts)
    for rows in (from_inputs, scored):
        assert [r["p_yes"] for r in rows] == pytest.approx(want_p_yes, abs=1e-5)
        assert [r["yes_no_mass"] for r in rows] == pytest.approx(want_mass, abs=1e-5)
        assert [r["prediction"] for r in rows] == want_prediction


def test_yes_no_scores_from_hand_made_next_token_probabilities():
    """A stand-in model whose next-token probabilities are chosen by hand: Yes has two token ids (1, 2), No
    one (3). p_yes sums the Yes variants; the prediction compares the best Yes token with the best No token."""
    from types import SimpleNamespace

    from agci.bias.model_runs import yes_no_from_inputs

    probs = torch.tensor([[0.1, 0.3, 0.2, 0.25, 0.05, 0.1],  # P(Yes) 0.5, P(No) 0.25: p_yes 2/3, mass 0.75
                          [0.1, 0.2, 0.2, 0.3, 0.1, 0.1],  # P(Yes) 0.4 > P(No) 0.3, yet no Yes token beats No
                          # P(Yes) 0.02, P(No) 0.06: p_yes 1/4, mass 0.08
                          [0.02, 0.01, 0.01, 0.06, 0.5, 0.4]])  # fmt: skip
    logits = (probs.log() + 3.0).unsqueeze(1)  # any shift gives the same softmax

    class Model:
        def __call__(self, logits_to_keep=None, **inputs):
            return SimpleNamespace(logits=logits)

    vlm = SimpleNamespace(model=Model(), yes_ids=[1, 2], no_ids=[3])
    rows = yes_no_from_inputs(vlm, {"input_ids": torch.zeros(3, 1, dtype=torch.long)})
    assert [r["prediction"] for r in rows] == ["Yes", "No", "No"]
    assert [r["p_yes"] for r in rows] == pytest.approx([2 / 3, 4 / 7, 1 / 4], abs=1e-6)
    assert [r["yes_no_mass"] for r in rows] == pytest.approx([0.75, 0.7, 0.08], abs=1e-6)
