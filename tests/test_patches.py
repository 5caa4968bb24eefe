"""AGCI inside real transformers models (tiny random configs, CPU): class-level and instance-level patches."""

import inspect
import json
import re
import warnings

import pytest
import torch
from conftest import per_image_formula, relative_error
from family_cases import CASES
from vlm_cases import build, families_here, family_params

import agci
from agci import compat, grouping
from agci.patches import discovery, hooks
from agci.registry import FAMILIES as REGISTRY

FAMILIES = family_params()  # a family that transformers here has broken is skipped, naming the bug


@pytest.fixture(autouse=True)
def _clean(clean_patches):
    pass


def _inner(model):
    return discovery.inner_model(model)[0]


def _first_embeds_reaching_language_model(model, call):
    """The input embeddings the language model receives at its first call while ``call()`` runs (the prefill of a
    generate), captured by a pre-hook."""
    seen = {}

    def hook(module, args, kwargs):
        seen.setdefault("embeds", kwargs["inputs_embeds"].detach().clone())

    inner = _inner(model)
    language_model = getattr(inner, "language_model", None) or inner.text_model  # Idefics3: text_model
    handle = language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            result = call()
    finally:
        handle.remove()
    return seen["embeds"], result


def _embeds_reaching_language_model(model, inputs):
    """The input embeddings the language model receives, captured by a pre-hook."""
    return _first_embeds_reaching_language_model(model, lambda: model(**inputs))[0]


def _unpatched_features(case, inputs):
    return case.stock_features(inputs)


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_language_model_receives_the_per_image_formula(model_type, padding_side):
    case = build(model_type, global_context_broadcast_lambda=0.7)
    inputs = case.batch(padding_side)
    agci.patch()
    embeds = _embeds_reaching_language_model(case.model, inputs)
    features = case.per_image(_unpatched_features(case, inputs))
    lengths = [f.shape[0] for f in features]
    assert len(lengths) >= 2 and (len(set(lengths)) > 1 or CASES[model_type].fixed_size)
    assert torch.cat(features).abs().sum() > 0  # a vacuous case (all-zero features) would pass anything
    expected = per_image_formula(torch.cat(features), 0.7, lengths)
    assert relative_error(expected, torch.cat(features)) > 1e-4  # nor one where AGCI changes nothing (cos 1)
    got = embeds[inputs["input_ids"] == case.image_token]
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_lambda_zero_is_bitwise_the_stock_model(model_type):
    case = build(model_type)
    inputs = case.batch()
    with torch.no_grad():
        stock = case.model(**inputs).logits
        agci.patch()
        assert torch.equal(case.model(**inputs).logits, stock)
        case.model.global_context_broadcast_lambda = 0.5
        assert not torch.allclose(case.model(**inputs).logits, stock)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_sample_alone_and_in_a_batch_gets_the_same_logits(model_type):
    case = build(model_type, global_context_broadcast_lambda=1.0)
    agci.patch()
    batch = case.batch("left")
    with torch.no_grad():
        batched = case.model(**batch).logits[:, -1]
        for i, sample in enumerate(case.samples):
            if "mm_token_type_ids" in sample:
                sample = dict(sample, mm_token_type_ids=(sample["input_ids"] == case.image_token).int())
            alone = case.model(**sample).logits[0, -1]
            torch.testing.assert_close(batched[i], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_injection_runs_once_per_forward_and_once_per_generate(model_type, monkeypatch):
    case = build(model_type, global_context_broadcast_lambda=0.5)
    calls = []
    real_inject = hooks.inject
    monkeypatch.setattr(hooks, "inject", lambda *a, **k: calls.append(1) or real_inject(*a, **k))
    agci.patch()
    inputs = case.batch()
    with torch.no_grad():
        case.model(**inputs)
        assert len(calls) == 1
        out = case.model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=True)
    assert len(calls) == 2
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("model_type", FAMILIES)
def test_inputs_embeds_get_the_injection_that_input_ids_get(model_type, recwarn):
    """Soft prompts, serving stacks and ``generate(inputs_embeds=...)`` pass embeddings, not input_ids: the grouping
    rules then recover the image-token mask from them, so a forward and a generate give what input_ids give (two
    images of different sizes or crops in one sample, one in the other, left padding)."""
    case = build(model_type, global_context_broadcast_lambda=0.5)
    model, by_ids = case.model, case.batch("left")
    agci.patch()
    embeds = model.get_input_embeddings()(by_ids["input_ids"]).detach()
    by_embeds = {k: v for k, v in by_ids.items() if k != "input_ids"} | {"inputs_embeds": embeds}

    def run(inputs, generate=False):
        call = (lambda: model.generate(**inputs, max_new_tokens=3, do_sample=False)) if generate else (
            lambda: model(**inputs).logits)  # fmt: skip
        return _first_embeds_reaching_language_model(model, call)

    with agci.using_lambda(model, 0.0):
        (stock_lm, stock_ids) = run(by_ids)
        try:
            (stock_lm_embeds, stock_embeds) = run(by_embeds)
        except ValueError as stock_refusal:  # Llama 4 up to 5.6 takes pixel_values with input_ids only
            assert "inputs_embeds" in str(stock_refusal)
            with pytest.raises(ValueError, match=re.escape(str(stock_refusal))):
                run(by_embeds)  # refused the same way with agci on
            return
    (lm_ids, logits_ids), (lm_embeds, logits_embeds) = run(by_ids), run(by_embeds)
    # where the stock model's two paths agree: every image token (Gemma 3n embeds its <eoi> from input_ids only)
    same = (stock_lm == stock_lm_embeds).all(-1)
    assert same[by_ids["input_ids"] == case.image_token].all()
    torch.testing.assert_close(lm_embeds[same], lm_ids[same])  # transformers' test_inputs_embeds_matches_input_ids
    assert not torch.allclose(lm_ids, stock_lm)  # AGCI acted
    # the logits too, where the stock model's agree (Qwen-style rope and Gemma 3n's per-layer inputs read input_ids)
    stock_agrees = torch.allclose(stock_embeds, stock_ids, rtol=1.3e-6, atol=1e-5)
    if stock_agrees:
        torch.testing.assert_close(logits_embeds, logits_ids)
    if "inputs_embeds" not in inspect.signature(model.prepare_inputs_for_generation).parameters:
        with pytest.raises(ValueError, match="inputs_embeds"):  # Gemma 3, PaliGemma: the stock generate refuses
            model.generate(**by_embeds, max_new_tokens=1)
    else:
        (gen_lm_ids, tokens_ids), (gen_lm_embeds, tokens_embeds) = run(by_ids, True), run(by_embeds, True)
        torch.testing.assert_close(gen_lm_embeds[same], gen_lm_ids[same])
        torch.testing.assert_close(gen_lm_ids, lm_ids)
        if stock_agrees:
            assert torch.equal(tokens_embeds[:, -3:], tokens_ids[:, -3:])
    assert not [str(w.message) for w in recwarn if "agci" in str(w.message)]


def test_image_features_outside_a_forward_warn_and_group_by_the_ids_given():
    """get_image_features called alone has no input_ids to group tiles by: it says so, and
    ``grouping_input_ids`` gives it the ones the forward would have."""
    case = build("internvl", global_context_broadcast_lambda=0.5)
    inputs = case.batch("left")
    agci.patch()
    lm = _embeds_reaching_language_model(case.model, inputs)
    pixels = {"pixel_values": inputs["pixel_values"]}
    with torch.no_grad():
        with pytest.warns(UserWarning, match="without input_ids or inputs_embeds.*grouping_input_ids"):
            alone = compat.image_features_per_image(case.model.get_image_features(**pixels))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with hooks.grouping_input_ids(case.model, inputs["input_ids"]):
                grouped = compat.image_features_per_image(case.model.get_image_features(**pixels))
    mask = inputs["input_ids"] == case.image_token
    torch.testing.assert_close(torch.cat([f.reshape(-1, f.shape[-1]) for f in grouped]), lm[mask])
    assert not torch.allclose(torch.cat(alone), torch.cat(grouped))  # per tile is not per image


def test_placeholder_ids_find_the_image_runs_and_the_markers_before_them():
    embedding = torch.nn.Embedding(16, 8)
    ids = torch.tensor([[0, 0, 3, 9, 9, 4, 3, 9, 9, 5], [3, 9, 4, 9, 9, 9, 3, 9, 1, 2]])
    got = grouping.placeholder_ids(embedding(ids), embedding, 9)
    assert torch.equal(got == 9, ids == 9)
    starts = [(r, c) for r in range(2) for c in range(1, 10) if ids[r, c] == 9 and ids[r, c - 1] != 9]
    for a in starts:  # the marker before a run equals another run's marker exactly when the tokens are equal
        for b in starts:
            assert (got[a[0], a[1] - 1] == got[b[0], b[1] - 1]) == (ids[a[0], a[1] - 1] == ids[b[0], b[1] - 1])
    assert (got[ids != 9] < 0).all()


def test_patch_is_idempotent_and_unpatch_restores_the_originals():
    classes = {t: discovery.family_classes(t) for t in families_here() if t in discovery.installed_families()}
    hooked = {t: hooks.hooked_method(t) for t in classes}  # get_image_features, or the projector's forward
    before = {t: dict(inner.__dict__) for t, (inner, _) in classes.items()}
    hooked_before = {t: cls.__dict__[name] for t, (cls, name) in hooked.items()}
    # apply_agci (earlier tests) leaves its plain lambda proxy on the class; patch/unpatch must not touch it
    proxy_before = {t: outer.__dict__.get(agci.LAMBDA_KEY) for t, (_, outer) in classes.items()}
    first = agci.patch()
    second = agci.patch()
    assert first.model_types == sorted(discovery.installed_families()) and second.model_types == []
    for t, (_, outer) in classes.items():
        cls, name = hooked[t]
        wrapped = cls.__dict__[name]
        assert wrapped.__agci_original__ is hooked_before[t]
        assert not hasattr(wrapped.__agci_original__, "__agci_original__")  # wrapped once
        assert isinstance(outer.__dict__[agci.LAMBDA_KEY], property)
    agci.unpatch()
    for t, (inner, outer) in classes.items():
        cls, name = hooked[t]
        assert cls.__dict__[name] is hooked_before[t]
        assert inner.__dict__["__init__"] is before[t]["__init__"]
        assert inner.__dict__.get("forward") is before[t].get("forward")
        assert outer.__dict__.get(agci.LAMBDA_KEY) is proxy_before[t]


def test_patch_handle_undoes_only_its_own_changes_and_works_as_a_context_manager():
    with agci.patch("llava") as handle:
        assert handle.model_types == ["llava"]
        inner, _ = discovery.family_classes("llava")
        assert hasattr(inner.__dict__["get_image_features"], "__agci_original__")
        qwen_inner, _ = discovery.family_classes("qwen2_5_vl")
        assert not hasattr(qwen_inner.__dict__["get_image_features"], "__agci_original__")
    assert not hasattr(inner.__dict__["get_image_features"], "__agci_original__")


@pytest.mark.parametrize("model_type", FAMILIES)
def test_apply_agci_patches_one_instance_and_revert_removes_it(model_type):
    case = build(model_type)
    other = build(model_type)
    inputs = case.batch()
    with torch.no_grad():
        stock = case.model(**inputs).logits
        other_stock = other.model(**inputs).logits
        agci.apply_agci(case.model, global_context_broadcast_lambda=0.8)
        assert case.model.global_context_broadcast_lambda == 0.8
        assert case.model.config.global_context_broadcast_lambda == 0.8
        patched = case.model(**inputs).logits
        assert not torch.allclose(patched, stock)
        agci.apply_agci(case.model)  # again: no second wrapper
        assert torch.equal(case.model(**inputs).logits, patched)
        # The other instance, with the same key in its config, still gives its stock logits: the patch did
        # not reach it (as it would through the class), whatever its own config says.
        other.model.config.global_context_broadcast_lambda = 0.8
        assert torch.equal(other.model(**inputs).logits, other_stock), "apply_agci changed another instance"
        hooked, method = hooks.hooked_method(model_type)
        assert not any(method in m.__dict__ for m in other.model.modules() if isinstance(m, hooked))
        agci.revert_agci(case.model)
        assert torch.equal(case.model(**inputs).logits, stock)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_save_and_auto_load_keep_the_key_and_the_patched_logits(model_type, tmp_path):
    case = build(model_type, global_context_broadcast_lambda=0.6)
    inputs = case.batch()
    agci.apply_agci(case.model)
    with torch.no_grad():
        patched = case.model(**inputs).logits
    case.model.save_pretrained(tmp_path / "ckpt")
    agci.revert_agci(case.model)
    loaded = agci.AutoAGCIModelForImageTextToText.from_pretrained(tmp_path / "ckpt").eval()
    assert type(loaded) is type(case.model) and loaded.config.global_context_broadcast_lambda == 0.6
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, patched, rtol=1e-5, atol=1e-6)


def test_apply_agci_reaches_the_model_inside_a_wrapper():
    case = build("llava")
    wrapper = torch.nn.Sequential(case.model)  # stands for DDP / PEFT: the VLM is a submodule
    agci.apply_agci(wrapper, 0.5)
    assert "get_image_features" in _inner(case.model).__dict__
    with pytest.raises(ValueError, match="no supported VLM"):
        agci.apply_agci(torch.nn.Linear(2, 2))


def test_lambda_is_read_at_call_time_and_bad_values_are_refused():
    case = build("llava")
    agci.patch()
    inputs = case.batch()
    model = case.model
    with torch.no_grad():
        model.global_context_broadcast_lambda = 0.25
        a = model(**inputs).logits
        model.config.global_context_broadcast_lambda = 1.0
        b = model(**inputs).logits
    assert not torch.allclose(a, b)
    for bad, exc in [(-1, ValueError), (float("nan"), ValueError), ("0.5", TypeError)]:
        with pytest.raises(exc, match="global_context_broadcast_lambda"):
            model.global_context_broadcast_lambda = bad


def test_save_load_round_trip_keeps_the_key_and_bad_config_values_fail_at_load(tmp_path):
    case = build("qwen2_5_vl", global_context_broadcast_lambda=0.6)
    case.model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved[agci.LAMBDA_KEY] == 0.6 and agci.LAMBDA_KEY not in saved.get("text_config", {})
    loaded = agci.AutoAGCIModelForImageTextToText.from_pretrained(tmp_path / "ckpt")
    assert loaded.global_context_broadcast_lambda == 0.6
    inputs = case.batch()
    agci.apply_agci(case.model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, case.model(**inputs).logits)
    override = agci.AutoAGCIModelForImageTextToText.from_pretrained(
        tmp_path / "ckpt", global_context_broadcast_lambda=0
    )
    assert override.global_context_broadcast_lambda == 0.0

    saved[agci.LAMBDA_KEY] = -0.5
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="global_context_broadcast_lambda must be >= 0"):
        agci.AutoAGCIModelForImageTextToText.from_pretrained(tmp_path / "ckpt")
    agci.patch()
    from transformers import Qwen2_5_VLForConditionalGeneration

    with pytest.raises(ValueError, match="global_context_broadcast_lambda must be >= 0"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "ckpt")


def test_from_config_and_unsupported_types_are_named():
    from transformers import LlavaConfig

    config = LlavaConfig(**build("llava").model.config.to_dict())
    model = agci.AutoAGCIModelForImageTextToText.from_config(config, global_context_broadcast_lambda=0.3)
    assert model.global_context_broadcast_lambda == 0.3
    with pytest.raises(ValueError, match="supported: llava"):
        agci.patch("blip-2")
    with pytest.raises(OSError, match="from_pretrained"):
        agci.AutoAGCIModelForImageTextToText()


def test_qwen3_vl_videos_are_left_alone():
    case = build("qwen3_vl", global_context_broadcast_lambda=1.0)
    inner = _inner(case.model)
    video = case.samples[1]
    with torch.no_grad():
        stock = compat.image_features_per_image(
            inner.get_video_features(video["pixel_values"], video["image_grid_thw"])
        )
        agci.patch()
        after = compat.image_features_per_image(
            inner.get_video_features(video["pixel_values"], video["image_grid_thw"])
        )
        images = compat.image_features_per_image(
            inner.get_image_features(video["pixel_values"], video["image_grid_thw"])
        )
    assert all(torch.equal(a, b) for a, b in zip(after, stock, strict=True))
    assert not torch.allclose(images[0], stock[0])


@pytest.mark.parametrize("model_type", FAMILIES)
def test_scope_reference_follows_the_authors_code_of_each_family(model_type):
    mixes = CASES[model_type].reference_mixes_batch  # read from the authors' code, not from the registry
    assert (REGISTRY[model_type].reference_mean == "batch") == mixes
    case = build(model_type, global_context_broadcast_lambda=0.5, global_context_broadcast_scope="reference")
    inputs = case.batch()
    agci.patch()
    reference = _embeds_reaching_language_model(case.model, inputs)
    case.model.config.global_context_broadcast_scope = "image"
    per_image = _embeds_reaching_language_model(case.model, inputs)
    features = case.per_image(_unpatched_features(case, inputs))
    lengths = [f.shape[0] for f in features]
    assert len(lengths) >= 2
    expected = per_image_formula(torch.cat(features), 0.5, [sum(lengths)] if mixes else lengths)  # one g or two
    images = inputs["input_ids"] == case.image_token
    torch.testing.assert_close(reference[images].double(), expected, rtol=1e-5, atol=1e-5)
    if mixes:
        assert not torch.allclose(reference, per_image)
    else:  # gemma3n, llava and the families without reference code: the per-image mode, bit for bit
        assert torch.equal(reference, per_image)


def test_scope_batch_is_refused_naming_reference_and_unknown_scopes_are_refused():
    case = build("llava_next", global_context_broadcast_lambda=0.5)
    inputs = case.batch()
    agci.patch()
    case.model.config.global_context_broadcast_scope = "batch"
    with pytest.raises(ValueError, match='"batch" was renamed "reference".*set it to "reference" or "image"'):
        case.model(**inputs)
    case.model.config.global_context_broadcast_scope = "video"
    with pytest.raises(ValueError, match="global_context_broadcast_scope must be one of"):
        case.model(**inputs)


def test_internvl_tiles_are_grouped_into_images_from_input_ids():
    ids = torch.tensor([[1, 121, *[120] * 12, 122, 5, 121, *[120] * 4, 122], [1, 121, *[120] * 8, 122, *[0] * 11]])
    assert grouping.tiles_per_image(ids, 120, 4, 6) == [3, 1, 2]
    assert grouping.tiles_per_image(None, 120, 4, 6) == [1] * 6
    with pytest.warns(UserWarning, match="do not match"):
        assert grouping.tiles_per_image(ids, 120, 4, 5) == [1] * 5


def test_internvl_runs_that_are_not_whole_tiles_fall_back_to_one_image_per_tile():
    # Tiles of 4 tokens, 3 tiles (12 tokens) in all, as two runs of 6: the total matches, but 6 tokens
    # are 1.5 tiles, so the runs are not images of whole tiles. Reading them as 6 // 4 = 1 tile each
    # would give [1, 1]: two images for three tiles.
    ids = torch.tensor([[1, 121, *[120] * 6, 122, 5, 121, *[120] * 6, 122]])
    with pytest.warns(UserWarning, match=r"\[6, 6\].* do not match 3 tiles of 4 tokens"):
        assert grouping.tiles_per_image(ids, 120, 4, 3) == [1, 1, 1]


def test_internvl_runs_at_the_end_of_one_row_and_the_start_of_the_next_are_two_images():
    # Row 0 ends with an image's 4 tokens and row 1 starts with another's: each row is its own sequence,
    # so these are two images of one tile, not one image of two (as the flattened batch would read).
    ids = torch.tensor([[1, 5, 121, 120, 120, 120, 120], [120, 120, 120, 120, 122, 5, 6]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the runs match the tiles: no fallback warning
        assert grouping.tiles_per_image(ids, 120, 4, 2) == [1, 1]
        one_row = torch.tensor([[1, 5, 121, *[120] * 8, 122, 5, 6]])
        assert grouping.tiles_per_image(one_row, 120, 4, 2) == [2]  # the same 8 tokens in one row: one image


@pytest.mark.parametrize("how", ["patch", "apply_agci"])
def test_internvl_generate_groups_tiles_like_forward(how):
    case = build("internvl", global_context_broadcast_lambda=0.7)
    inputs = case.batch("left")
    agci.patch() if how == "patch" else agci.apply_agci(case.model)
    seen = []
    hook = _inner(case.model).language_model.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["inputs_embeds"].detach().clone()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            case.model.generate(**inputs, max_new_tokens=2, do_sample=False)
    finally:
        hook.remove()
    prefill = seen[0]
    features = case.per_image(_unpatched_features(case, inputs))
    expected = per_image_formula(torch.cat(features), 0.7, [f.shape[0] for f in features])
    got = prefill[inputs["input_ids"] == case.image_token]
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert _inner(case.model).__dict__.get("_agci_input_ids") is None  # nothing stale left behind
    agci.revert_agci(case.model)
    assert not any("generate" in m.__dict__ or "forward" in m.__dict__ for m in case.model.modules())


def test_apply_agci_through_distributed_data_parallel(tmp_path):
    import torch.distributed as dist

    case = build("qwen2_5_vl", global_context_broadcast_lambda=0.5)
    inputs = case.batch()
    with torch.no_grad():
        reference_logits = agci.apply_agci(build("qwen2_5_vl", global_context_broadcast_lambda=0.5).model)(
            **inputs
        ).logits
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(case.model)
        agci.apply_agci(ddp)
        assert "get_image_features" in _inner(case.model).__dict__
        with torch.no_grad():
            torch.testing.assert_close(ddp(**inputs).logits, reference_logits)
    finally:
        dist.destroy_process_group()


def test_an_unsupported_transformers_version_is_named(monkeypatch):
    monkeypatch.setattr(compat, "transformers_version", lambda: (4, 50))
    with pytest.raises(RuntimeError, match=r"transformers >=4.57,<6"):
        agci.patch("llava")


def test_the_key_in_text_config_alone_does_not_turn_agci_on():
    case = build("llava")
    inputs = case.batch()
    agci.patch()
    with torch.no_grad():
        stock = case.model(**inputs).logits
        case.model.config.text_config.global_context_broadcast_lambda = 0.9
        assert torch.equal(case.model(**inputs).logits, stock)


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_videos_get_one_context_each_only_when_asked(model_type):
    case = build(model_type, global_context_broadcast_lambda=0.6)
    inner = _inner(case.model)
    pixels = torch.cat([s["pixel_values"] for s in case.samples])
    grid = torch.cat([s["image_grid_thw"] for s in case.samples])  # two "videos" of one frame each
    with torch.no_grad():
        stock = compat.image_features_per_image(inner.get_video_features(pixels, grid))
        agci.patch()
        untouched = compat.image_features_per_image(inner.get_video_features(pixels, grid))
        case.model.config.global_context_broadcast_videos = True
        injected = compat.image_features_per_image(inner.get_video_features(pixels, grid))
        case.model.config.global_context_broadcast_scope = "reference"  # the reference has no video path
        in_reference_scope = compat.image_features_per_image(inner.get_video_features(pixels, grid))
    assert all(torch.equal(a, b) for a, b in zip(in_reference_scope, injected, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(untouched, stock, strict=True))
    expected = per_image_formula(torch.cat(stock), 0.6, [v.shape[0] for v in stock])
    torch.testing.assert_close(torch.cat(injected).double(), expected, rtol=1e-5, atol=1e-5)
    case.model.config.global_context_broadcast_videos = "yes"
    with pytest.raises(ValueError, match="global_context_broadcast_videos must be true or false"):
        inner.get_video_features(pixels, grid)


@pytest.mark.parametrize("model_type", ["llava", "qwen2_5_vl"])
def test_return_dict_false_keeps_the_tuple_and_injects_its_features(model_type):
    if not compat.returns_output_dataclass():
        pytest.skip("transformers 4.57's get_image_features takes no return_dict (it returns the features)")
    case = build(model_type, global_context_broadcast_lambda=0.5)
    inner = _inner(case.model)
    inputs = case.batch()
    kwargs = {k: v for k, v in inputs.items() if k in ("image_grid_thw", "image_sizes")}
    with torch.no_grad():
        stock = inner.get_image_features(inputs["pixel_values"], return_dict=False, **kwargs)
        agci.patch()
        patched = inner.get_image_features(inputs["pixel_values"], return_dict=False, **kwargs)
    assert type(patched) is type(stock) and len(patched) == len(stock)
    index = next(i for i, v in enumerate(stock) if isinstance(v, list | tuple))  # the per-image features
    features = list(stock[index])
    expected = per_image_formula(torch.cat(features), 0.5, [f.shape[0] for f in features])
    torch.testing.assert_close(torch.cat(list(patched[index])).double(), expected, rtol=1e-5, atol=1e-5)


def test_apply_agci_after_accelerate_prepare():
    accelerate = pytest.importorskip("accelerate", reason="accelerate comes with peft in the dev extra")
    case = build("llava", global_context_broadcast_lambda=0.5)
    inputs = case.batch()
    with torch.no_grad():
        expected = agci.apply_agci(build("llava", global_context_broadcast_lambda=0.5).model)(**inputs).logits
    prepared = accelerate.Accelerator(cpu=True).prepare(case.model)
    agci.apply_agci(prepared)
    with torch.no_grad():
        torch.testing.assert_close(prepared(**inputs).logits, expected)


def test_using_lambda_on_a_patched_model_inside_a_wrapper_and_restores_it():
    case = build("llava")
    inputs = case.batch()
    agci.apply_agci(case.model, global_context_broadcast_lambda=0.25)
    wrapper = torch.nn.Sequential(case.model)
    wrapper.config = case.model.config  # as PEFT and accelerate wrappers forward it
    with torch.no_grad():
        before = case.model(**inputs).logits
        with agci.using_lambda(wrapper, 1.0):
            assert case.model.global_context_broadcast_lambda == 1.0
            swept = case.model(**inputs).logits
        case.model.global_context_broadcast_lambda = 1.0
        direct = case.model(**inputs).logits
        case.model.global_context_broadcast_lambda = 0.25
        assert torch.equal(case.model(**inputs).logits, before)
    assert torch.equal(swept, direct) and not torch.equal(swept, before)


def test_revert_agci_of_the_last_patched_instance_removes_the_class_property():
    import gc

    gc.collect()  # patched models of earlier tests are gone, and with them their class's property
    first, second = build("llava"), build("llava")
    outer = type(first.model)
    assert not hasattr(outer, agci.LAMBDA_KEY)
    agci.apply_agci(first.model, 0.5)
    agci.apply_agci(second.model, 0.5)
    agci.revert_agci(first.model)
    assert second.model.global_context_broadcast_lambda == 0.5  # still patched: the property stays
    agci.revert_agci(second.model)
    assert agci.LAMBDA_KEY not in outer.__dict__
    assert second.model.config.global_context_broadcast_lambda == 0.5  # the config keeps its value
    agci.apply_agci(first.model)
    with agci.patch("llava"):  # a class patch over an instance patch, undone: the instance's property is back
        pass
    assert first.model.global_context_broadcast_lambda == 0.5
    agci.revert_agci(first.model)
    assert agci.LAMBDA_KEY not in outer.__dict__
    agci.apply_agci(second.model)
    del second
    gc.collect()
    assert agci.LAMBDA_KEY not in outer.__dict__


@pytest.mark.skipif("llama4" not in families_here(), reason="llama4's tests do not run on this transformers")
def test_llama4_images_group_as_its_processor_writes_them():
    """The real Llama4Processor's input_ids (crops row by row, then <|image|> and the global view; a one-crop image
    is its global view alone) group into images by global_view, and match the hand-written cases."""
    import transformers as tf
    from PIL import Image
    from tiny_checkpoints import llama4_processor_only
    from vlm_cases import _llama4_ids

    processor = llama4_processor_only(tf)  # the processor of the vLLM tests' checkpoint
    images = [Image.new("RGB", (64, 32)), Image.new("RGB", (20, 20)), Image.new("RGB", (32, 70))]
    out = processor(images=images, text=["a <|image|> b <|image|> c", "<|image|> what"], return_tensors="pt",
                    padding=True)  # fmt: skip
    assert out["pixel_values"].shape[0] == 3 + 1 + 4  # 1 x 2 crops + global, one tile, 3 x 1 crops + global
    per_row = (out["input_ids"] == 120).sum(1).tolist()
    assert grouping.global_view_lengths(out["input_ids"], 120, per_row) == [12, 4, 16]
    rows = out["input_ids"].tolist()
    assert rows[0][1:18] == _llama4_ids([(1, 2)], 4) and rows[1][4:26] == _llama4_ids([(3, 1)], 4)
