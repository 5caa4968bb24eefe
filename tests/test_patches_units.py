"""The patch pieces (agci.grouping, agci.patches) one by one: the pure helpers with hand-worked inputs, and the
patch bookkeeping on tiny models (kills the mutants tests/test_patches.py leaves alive)."""

import gc
import sys
import types
import warnings

import pytest
import torch
from conftest import per_image_formula
from vlm_cases import CONFIGS, build

import agci
from agci import compat, grouping
from agci.patches import core, discovery, hooks, lifecycle
from agci.patches.families import FAMILIES, Family

TOKEN = 9  # the image token of the hand-made input_ids
CROP, GLOBAL = 50, 60  # markers before a crop run and before the global view run


@pytest.fixture(autouse=True)
def _clean(clean_patches):
    pass


def _inner(model):
    return discovery.inner_model(model)[0]


def _close(got, expected):
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


# inject


def test_inject_on_tensors_one_image_per_row_or_by_lengths_or_batch_wide():
    torch.manual_seed(0)
    one = torch.randn(5, 4)
    _close(grouping.inject(one, 0.7), per_image_formula(one, 0.7, [5]))
    rows = torch.randn(3, 2, 4)
    flat = rows.reshape(6, 4)
    _close(grouping.inject(rows, 0.7).reshape(6, 4), per_image_formula(flat, 0.7, [2, 2, 2]))
    by_lengths = grouping.inject(rows, 0.7, lengths=[4, 2])
    assert by_lengths.shape == (3, 2, 4)
    _close(by_lengths.reshape(6, 4), per_image_formula(flat, 0.7, [4, 2]))
    wide = grouping.inject(rows, 0.7, batch_wide=True)
    assert wide.shape == (3, 2, 4)
    _close(wide.reshape(6, 4), per_image_formula(flat, 0.7, [6]))
    # [n, H, W, D] (Aya Vision on 4.57) without lengths: one image per row, as [n, H * W, D]
    grid = torch.randn(3, 2, 2, 4)
    out = grouping.inject(grid, 0.7)
    assert out.shape == (3, 2, 2, 4)
    _close(out.reshape(12, 4), per_image_formula(grid.reshape(12, 4), 0.7, [4, 4, 4]))


def test_inject_on_lists_and_tuples_keeps_the_container_and_the_sizes():
    torch.manual_seed(1)
    parts = [torch.randn(3, 4), torch.randn(2, 4)]
    flat = torch.cat(parts)
    out = grouping.inject(parts, 0.5)
    assert type(out) is list and [p.shape[0] for p in out] == [3, 2]
    _close(torch.cat(out), per_image_formula(flat, 0.5, [3, 2]))
    out = grouping.inject(tuple(parts), 0.5)
    assert type(out) is tuple and [p.shape[0] for p in out] == [3, 2]
    _close(torch.cat(out), per_image_formula(flat, 0.5, [3, 2]))
    out = grouping.inject(parts, 0.5, lengths=[1, 4])  # images that straddle the entries
    assert [p.shape[0] for p in out] == [3, 2]
    _close(torch.cat(out), per_image_formula(flat, 0.5, [1, 4]))
    out = grouping.inject(tuple(parts), 0.5, batch_wide=True)
    assert type(out) is tuple and [p.shape[0] for p in out] == [3, 2]
    _close(torch.cat(out), per_image_formula(flat, 0.5, [5]))
    empty = []
    assert grouping.inject(empty, 0.5) is empty


def test_inject_batch_wide_keeps_a_half_precision_dtype():
    torch.manual_seed(2)
    parts = [torch.randn(3, 4, dtype=torch.bfloat16), torch.randn(2, 4, dtype=torch.bfloat16)]
    out = grouping.inject(parts, 0.5, batch_wide=True)
    assert all(p.dtype == torch.bfloat16 for p in out)
    torch.testing.assert_close(
        torch.cat(out).double(), per_image_formula(torch.cat(parts), 0.5, [5]), rtol=2e-2, atol=2e-2
    )


# runs of the image token


def test_token_runs_gives_start_and_length_of_each_unbroken_run_per_row():
    def runs(*rows):
        return grouping.token_runs(torch.tensor(rows, dtype=torch.long).view(len(rows), -1), TOKEN)

    assert runs([]) == [[]]
    assert runs([5, 6]) == [[]]
    assert runs([TOKEN, TOKEN, 5]) == [[(0, 2)]]
    assert runs([5, TOKEN, TOKEN, TOKEN, 5, TOKEN, 7, TOKEN, TOKEN]) == [[(1, 3), (5, 1), (7, 2)]]
    # a run at the end of one row and one at the start of the next stay two runs
    assert runs([5, TOKEN, TOKEN], [TOKEN, 5, 5]) == [[(1, 2)], [(0, 1)]]


def test_the_patches_core_namespace_still_offers_what_it_offered():
    """``agci.patches.core`` was split by idea; the names people imported from it still work."""
    for name in ("inject", "global_view_lengths", "tiles_per_image", "image_lengths", "pooled_patch_lengths",
                 "patch", "unpatch", "apply_agci", "revert_agci", "PatchHandle", "family_classes", "hooked_method",
                 "installed_families", "present_families", "check_model_type", "check_runs", "FAMILIES",
                 "SUPPORTED_MODEL_TYPES"):  # fmt: skip
        assert getattr(core, name) is not None, name
    assert core.patch is agci.patch and core.inject is grouping.inject


def test_tiles_per_image_counts_a_run_that_starts_the_batch():
    ids = torch.tensor([[TOKEN] * 4 + [5, 5], [5, TOKEN, TOKEN, TOKEN, TOKEN, 5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert grouping.tiles_per_image(ids, TOKEN, 2, 4) == [2, 2]
        assert grouping.tiles_per_image(torch.tensor([[TOKEN] * 6]), TOKEN, 2, 3) == [3]


def test_tiles_per_image_warns_naming_the_runs_and_the_tiles():
    ids = torch.tensor([[5, TOKEN, TOKEN, TOKEN, 5]])
    with pytest.warns(UserWarning, match=r"runs in input_ids \(\[3\]\) do not match 2 tiles of 2 tokens; each tile"):
        assert grouping.tiles_per_image(ids, TOKEN, 2, 2) == [1, 1]


def _idefics_row(*images, pad=0):
    """A row of ``pad`` pad tokens, then each image as crop runs (marker CROP) and its global view (GLOBAL)."""
    row = [0] * pad + [1]
    for crops, global_view in images:
        for c in crops:
            row += [CROP] + [TOKEN] * c
        row += [GLOBAL] + [TOKEN] * global_view
    return row + [2]


def test_global_view_lengths_splits_each_row_after_its_global_views():
    rows = [_idefics_row(([2, 2], 3), ([1], 2)), _idefics_row(([4], 1), pad=8)]
    assert len(rows[0]) == len(rows[1])
    ids = torch.tensor(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert grouping.global_view_lengths(ids, TOKEN, [10, 5]) == [7, 3, 5]
        # a sample without an image: skipped, and the next one read
        no_image = torch.tensor([[1] + [5] * 6, _idefics_row(([2], 1))])
        assert grouping.global_view_lengths(no_image, TOKEN, [0, 3]) == [3]
        # the last run right after the row's first token, which is its marker
        assert grouping.global_view_lengths(torch.tensor([[GLOBAL, TOKEN, TOKEN]]), TOKEN, [2]) == [2]
        # a run at the start of a row that ends with the marker: not closed by the row's last token
        assert grouping.global_view_lengths(torch.tensor([[TOKEN, GLOBAL, TOKEN, GLOBAL]]), TOKEN, [2]) == [2]
        # an image alone, its global view only, after no crop marker
        assert grouping.global_view_lengths(torch.tensor([_idefics_row(([], 4))]), TOKEN, [4]) == [4]


def test_global_view_lengths_without_input_ids_or_rows_counts_each_sample_as_one_image():
    assert grouping.global_view_lengths(None, TOKEN, [6, 0, 4]) == [6, 4]
    one_row = torch.tensor([_idefics_row(([2], 1))])
    assert grouping.global_view_lengths(one_row, TOKEN, [3, 3]) == [3, 3]  # 1 row for 2 samples


def test_global_view_lengths_warns_and_keeps_the_sample_whole_when_the_runs_do_not_add_up():
    rows = torch.tensor([_idefics_row(([2], 3)), _idefics_row(([2], 3))])
    with pytest.warns(
        UserWarning, match=r"image-token runs of a sample \(\[2, 3\]\) .* its 6 image tokens; the sample"
    ):
        assert grouping.global_view_lengths(rows, TOKEN, [5, 6]) == [5, 6]
    # the last run starts the row: no marker, so nothing closes an image
    starts = torch.tensor([[TOKEN, TOKEN, 5]])
    with pytest.warns(UserWarning, match="do not end in global views"):
        assert grouping.global_view_lengths(starts, TOKEN, [2]) == [2]
    # image tokens in the row of a sample said to have none
    rows = torch.tensor([_idefics_row(([2], 1)), _idefics_row(([], 3), pad=1)])
    with pytest.warns(UserWarning, match=r"\(\[3\]\) do not end in global views that add up to its 0 image tokens"):
        assert grouping.global_view_lengths(rows, TOKEN, [3, 0]) == [3, 0]
    # a sample with image tokens but none in its row
    with pytest.warns(UserWarning, match="do not end in global views"):
        assert grouping.global_view_lengths(torch.tensor([[1, 5, 6]]), TOKEN, [4]) == [4]


def test_image_lengths_follows_the_family_grouping():
    config = types.SimpleNamespace(image_token_id=TOKEN)
    tiles = torch.zeros(3, 2, 4)  # 3 tiles of 2 tokens
    ids = torch.tensor([[5, TOKEN, TOKEN, TOKEN, TOKEN, 5, TOKEN, TOKEN]])
    assert grouping.image_lengths(FAMILIES["internvl"], config, tiles, ids) == [4, 2]
    assert grouping.image_lengths(FAMILIES["internvl"], config, list(tiles), ids) is None  # not stacked
    assert grouping.image_lengths(FAMILIES["internvl"], config, torch.zeros(6, 4), ids) is None  # not [n, T, D]
    assert grouping.image_lengths(FAMILIES["llava"], config, tiles, ids) is None
    idefics = Family("idefics_like", "Idefics-like", "A", "B", since="4.57", grouping="global_view")
    samples = [torch.zeros(10, 4)]
    row = torch.tensor([_idefics_row(([2, 2], 3), ([1], 2))])
    assert grouping.image_lengths(idefics, config, samples, row) == [7, 3]
    assert grouping.image_lengths(idefics, config, tuple(samples), row) == [7, 3]
    # the batch's views stacked in one tensor (Aya Vision; Idefics3 up to 5.6), 3-D or 4-D
    assert grouping.image_lengths(idefics, config, torch.zeros(1, 10, 4), row) == [7, 3]
    assert grouping.image_lengths(idefics, config, torch.zeros(5, 1, 2, 4), row) == [7, 3]
    assert grouping.image_lengths(idefics, config, torch.zeros(1, 9, 4), row) is None  # not the row's 10 tokens
    with pytest.warns(UserWarning) as caught:
        assert grouping.image_lengths(idefics, config, torch.zeros(1, 10, 4), None) is None
        assert grouping.image_lengths(FAMILIES["internvl"], config, tiles, None) == [2, 2, 2]  # per tile
    fix = "to group them into images as the forward does, call inside `with "
    fix += "agci.patches.hooks.grouping_input_ids(model, input_ids):`"
    assert [str(w.message) for w in caught] == [
        f"agci: {name} image features were computed without input_ids or inputs_embeds (outside the model's forward "
        f"and generate), so each {entry} gets its own global context; {fix}"
        for name, entry in (("Idefics-like", "sample or tile"), ("InternVL", "tile"))
    ]


def test_input_ids_are_found_by_keyword_or_first_argument_else_recovered_from_inputs_embeds():
    family = FAMILIES["internvl"]
    model = types.SimpleNamespace(config=types.SimpleNamespace(image_token_id=3))
    model.get_input_embeddings = lambda: embedding
    embedding = torch.nn.Embedding(8, 4)
    ids = torch.tensor([[1, 3, 3, 2]])
    assert hooks._grouping_ids_of(model, family, (ids,), {}).get() is ids
    assert hooks._grouping_ids_of(model, family, (ids, "other"), {}).get() is ids
    assert hooks._grouping_ids_of(model, family, (), {"input_ids": ids}).get() is ids
    assert hooks._grouping_ids_of(model, family, (), {}).get() is None
    assert hooks._grouping_ids_of(model, family, ([1, 2],), {}).get() is None  # not a tensor
    # generate given inputs_embeds passes an empty [B, 0] input_ids: the embeddings are read
    recovered = hooks._grouping_ids_of(model, family, (ids[:, :0],), {"inputs_embeds": embedding(ids)}).get()
    assert torch.equal(recovered == 3, ids == 3)


# registry, checks and handles


def test_check_model_type_names_the_supported_types_after_the_prefix():
    discovery.check_model_type("llava")
    with pytest.raises(ValueError, match=r"^model type 'blip-2' is not supported; supported: llava, llava_next, "):
        discovery.check_model_type("blip-2")
    with pytest.raises(ValueError, match=r"^--model: model type None is not supported"):
        discovery.check_model_type(None, where="--model: ")


def test_family_classes_and_installed_families(monkeypatch):
    import transformers

    assert discovery.family_classes("llava") == (transformers.LlavaModel, transformers.LlavaForConditionalGeneration)
    assert discovery.present_families() == tuple(FAMILIES)  # every family is in the installed transformers
    runs = tuple(t for t in FAMILIES if not FAMILIES[t].broken_in(transformers.__version__))
    assert discovery.installed_families() == runs  # and patch() takes those whose own model runs here
    with pytest.raises(ValueError, match="not supported"):
        discovery.family_classes("blip-2")
    monkeypatch.setattr(compat, "transformers_version", lambda: (5, 1))  # before Qwen3.5 (5.2)
    assert "qwen3_5" not in discovery.installed_families() and "llava" in discovery.installed_families()
    found = transformers.__version__
    with pytest.raises(
        ValueError,
        match=rf"'qwen3_5' \(Qwen3.5\) needs transformers >= 5.2, found {found}: pip install -U "
        r"'transformers>=5.2'",
    ):
        discovery.family_classes("qwen3_5")


class _Target:
    kept = "original"


def test_patch_handle_puts_back_and_removes_in_reverse_order():
    handle = lifecycle.PatchHandle()
    handle._set(_Target, "kept", "first")
    handle._set(_Target, "kept", "second")
    handle._set(_Target, "added", "new")
    assert (_Target.kept, _Target.added) == ("second", "new")
    assert handle.model_types == []
    with handle:
        pass
    assert _Target.kept == "original" and "added" not in _Target.__dict__
    assert handle.changes == []


def test_the_lambda_property_reads_and_writes_the_config_and_documents_it():
    prop = lifecycle._lambda_property()
    assert "model.config" in prop.__doc__
    owner = types.SimpleNamespace(config=types.SimpleNamespace())
    assert prop.fget(owner) == 0.0
    prop.fset(owner, 0.25)
    assert owner.config.global_context_broadcast_lambda == 0.25 and prop.fget(owner) == 0.25
    with pytest.raises(ValueError, match="global_context_broadcast_lambda"):
        prop.fset(owner, -1)


# patch / unpatch


def test_patch_skips_a_patched_type_and_goes_on_with_the_next():
    with agci.patch("llava"):
        with agci.patch(["llava", "internvl"]) as second:
            assert second.model_types == ["internvl"]
            inner, _ = discovery.family_classes("internvl")
            assert hasattr(inner.__dict__["get_image_features"], "__agci_original__")


def test_patch_wrappers_link_to_the_originals_and_a_patched_class_still_builds():
    internvl_inner, internvl_outer = discovery.family_classes("internvl")
    qwen_inner, _ = discovery.family_classes("qwen2_5_vl")
    before = {
        "forward": internvl_inner.__dict__["forward"],
        "generate": internvl_outer.generate,
        "__init__": internvl_inner.__dict__["__init__"],
        "get_video_features": qwen_inner.__dict__["get_video_features"],
    }
    with agci.patch(["internvl", "qwen2_5_vl"]):
        assert internvl_inner.__dict__["forward"].__agci_original__ is before["forward"]
        assert internvl_outer.__dict__["generate"].__agci_original__ is before["generate"]
        assert internvl_inner.__dict__["__init__"].__agci_original__ is before["__init__"]
        assert qwen_inner.__dict__["get_video_features"].__agci_original__ is before["get_video_features"]
        case = build("internvl", global_context_broadcast_lambda=0.5)  # the wrapped __init__ builds it
        assert case.model.global_context_broadcast_lambda == 0.5
        with pytest.raises(ValueError, match="global_context_broadcast_lambda must be >= 0"):
            build("internvl", global_context_broadcast_lambda=-1.0)


# apply_agci / revert_agci


def test_apply_agci_on_a_class_patched_model_does_not_inject_twice():
    case = build("llava", global_context_broadcast_lambda=0.5)
    inputs = case.batch()
    with agci.patch("llava"), torch.no_grad():
        once = case.model(**inputs).logits
        agci.apply_agci(case.model)
        assert "get_image_features" not in _inner(case.model).__dict__
        assert torch.equal(case.model(**inputs).logits, once)


def test_apply_agci_twice_keeps_the_first_wrapper():
    case = build("llava")
    agci.apply_agci(case.model, 0.5)
    first = _inner(case.model).__dict__["get_image_features"]
    agci.apply_agci(case.model, 0.25)
    assert _inner(case.model).__dict__["get_image_features"] is first
    assert case.model.config.global_context_broadcast_lambda == 0.25


def test_apply_agci_refuses_a_bad_lambda_already_in_the_config():
    case = build("llava")
    case.model.config.global_context_broadcast_lambda = -2.0
    with pytest.raises(ValueError, match="global_context_broadcast_lambda must be >= 0"):
        agci.apply_agci(case.model)


def test_apply_agci_on_the_inner_model_alone():
    case = build("llava", global_context_broadcast_lambda=0.6)
    inner = case.model.model
    pixels = case.batch()["pixel_values"]
    with torch.no_grad():
        stock = compat.image_features_per_image(inner.get_image_features(pixel_values=pixels))
        assert agci.apply_agci(inner) is inner
        injected = compat.image_features_per_image(inner.get_image_features(pixel_values=pixels))
    _close(torch.cat(list(injected)), per_image_formula(torch.cat(list(stock)), 0.6, [s.shape[0] for s in stock]))
    agci.revert_agci(inner)
    assert "get_image_features" not in inner.__dict__


def test_apply_agci_patches_the_video_features_of_the_instance_and_revert_removes_them():
    case = build("qwen2_5_vl", global_context_broadcast_lambda=0.6, global_context_broadcast_videos=True)
    inner = _inner(case.model)
    pixels = torch.cat([s["pixel_values"] for s in case.samples])
    grid = torch.cat([s["image_grid_thw"] for s in case.samples])
    with torch.no_grad():
        stock = compat.image_features_per_image(inner.get_video_features(pixels, grid))
        agci.apply_agci(case.model)
        assert "get_video_features" in inner.__dict__
        injected = compat.image_features_per_image(inner.get_video_features(pixels, grid))
    _close(torch.cat(list(injected)), per_image_formula(torch.cat(list(stock)), 0.6, [v.shape[0] for v in stock]))
    agci.revert_agci(case.model)
    assert not {"get_image_features", "get_video_features"} & set(inner.__dict__)


def test_the_class_property_stays_while_any_instance_is_patched():
    gc.collect()
    first, second = build("llava"), build("llava")
    outer = type(first.model)
    agci.apply_agci(first.model, 0.5)
    agci.apply_agci(second.model, 0.25)
    agci.revert_agci(second.model)  # the later one goes first
    assert first.model.global_context_broadcast_lambda == 0.5
    agci.revert_agci(first.model)
    assert agci.LAMBDA_KEY not in outer.__dict__


def test_no_supported_model_is_named_with_its_modules():
    with pytest.raises(ValueError, match=r"inside Linear \(modules include \['Linear'\]\); agci supports model "
                       r"types llava, llava_next, "):  # fmt: skip
        agci.apply_agci(torch.nn.Linear(2, 2))
    layers = [torch.nn.Linear(1, 1), torch.nn.ReLU(), torch.nn.Tanh(), torch.nn.GELU(), torch.nn.SiLU(),
              torch.nn.Sigmoid(), torch.nn.Identity(), torch.nn.Dropout(), torch.nn.Softmax()]  # fmt: skip
    names = sorted({type(m).__name__ for m in layers} | {"Sequential"})  # 10 names: the first 8 are shown
    with pytest.raises(ValueError) as raised:
        agci.apply_agci(torch.nn.Sequential(*layers))
    assert f"modules include {names[:8]});" in str(raised.value)


def test_a_family_missing_from_transformers_does_not_hide_the_others(monkeypatch):
    # one family's module cannot be imported, another's lacks its class: the llava model is still found
    monkeypatch.setitem(sys.modules, FAMILIES["gemma3"].module, None)
    qwen_module = sys.modules[discovery.family_classes("qwen2_vl")[0].__module__]
    monkeypatch.delattr(qwen_module, FAMILIES["qwen2_vl"].inner_class)
    case = build("llava")
    holder = torch.nn.ModuleList([case.model])  # no config to start from (a DDP-like wrapper): every family is tried
    assert discovery.inner_model(holder) == (case.model.model, "llava")


def test_the_inner_model_is_found_from_the_config_model_type_without_trying_other_families(monkeypatch):
    case = build("llava")
    asked = []
    real = discovery.family_classes
    monkeypatch.setattr(discovery, "family_classes", lambda t: asked.append(t) or real(t))
    assert discovery.inner_model(case.model) == (case.model.model, "llava")
    assert asked == ["llava"]  # one family's module, not every one's
    asked.clear()
    assert discovery.inner_model(torch.nn.ModuleList([case.model])) == (case.model.model, "llava")
    assert len(asked) > 1


def test_every_wrapper_names_the_method_it_wraps():
    """``__agci_original__`` of each wrapper patch() puts on a class is the method it replaced (what tells a wrapped
    method and what the tests' stock paths call)."""
    handle = agci.patch()
    wrapped = [(cls, name, cls.__dict__[name]) for cls, name, _ in handle.changes]
    handle.undo()
    checked = 0
    for cls, name, wrapper in wrapped:
        if isinstance(wrapper, property):
            continue
        assert wrapper.__agci_original__ is getattr(cls, name), (cls.__name__, name)
        checked += 1
    assert checked >= 2 * len(discovery.installed_families())


def test_pooled_patch_lengths_count_real_patches_per_pooled_token():
    # Gemma 4 up to transformers 5.6: one [N, D] for all images; padding patches sit at (-1, -1)
    positions = torch.full((2, 6, 2), -1)
    positions[0, :4] = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]])  # 4 real patches, 2 x 2 pooling: 1 token
    positions[1, :] = torch.arange(12).view(6, 2)  # 6 real patches (no padding)
    positions[1, 5, 0] = -1  # a -1 in either coordinate marks padding, as transformers 5.24 counts it
    assert grouping.pooled_patch_lengths(positions, 2) == [1, 1]
    assert grouping.pooled_patch_lengths(positions, 1) == [4, 5]
    # the family's sizes argument, pooled by the config attribute its record names
    config = types.SimpleNamespace(vision_config=types.SimpleNamespace(pooling_kernel_size=2))
    assert grouping.sizes_argument_lengths(FAMILIES["gemma4"], config, positions) == [1, 1]
    config.vision_config.pooling_kernel_size = 1
    assert grouping.sizes_argument_lengths(FAMILIES["gemma4"], config, positions) == [4, 5]


def test_placeholder_ids_group_as_the_input_ids_would_in_any_dtype_and_with_many_markers():
    """Stand-in ids from embeddings group like the real ids: global views after one marker among many others
    (more distinct markers than the image token's id), the embeddings in another dtype than the embedding table."""
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(32, 8)
    embedding.weight.data = torch.randn(32, 8, dtype=torch.float64)  # values a float32 cannot hold exactly
    token = 1
    row = []
    for crop_marker in (20, 21, 22, 23, 24):
        row += [crop_marker, token, token, 30, token, token, token]  # a crop, then its global view after <30>
    ids = torch.tensor([row, [0] * 7 + row[7:]])
    sizes = (ids == token).sum(1).tolist()
    embeds = embedding(ids).float()  # a float32 forward of a float64 table
    stand_in = grouping.placeholder_ids(embeds, embedding, token)
    assert torch.equal(stand_in == token, ids == token)
    assert grouping.global_view_lengths(stand_in, token, sizes) == grouping.global_view_lengths(ids, token, sizes)
    assert grouping.global_view_lengths(ids, token, sizes) == [5] * 5 + [5] * 4


# the key where nothing reads it: warned about once when a model is built, refused where AGCI is asked for


def _vipllava_config(**extra):
    """A tiny VipLLaVA (a LLaVA variant agci does not support), from the tiny LLaVA's parts."""
    import transformers

    parts = {k: CONFIGS["llava"][k] for k in ("vision_config", "text_config", "image_token_index")}
    return transformers.VipLlavaConfig(**parts, vision_feature_layers=[-2, -1], image_seq_length=4, **extra)


def _agci_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "agci" in str(w.message)]


def test_a_lambda_in_an_unsupported_family_warns_once_under_patch_and_is_refused_by_name():
    import transformers

    config = _vipllava_config(global_context_broadcast_lambda=0.5)
    with agci.patch(), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = transformers.VipLlavaForConditionalGeneration(config)
        transformers.VipLlavaForConditionalGeneration(config)  # the same config again: no second warning
        transformers.VipLlavaForConditionalGeneration(_vipllava_config())  # no key: nothing to say
    assert _agci_warnings(record) == [
        "agci: VipLlavaForConditionalGeneration (model type 'vipllava') has global_context_broadcast_lambda=0.5 in its "
        f"config, but agci does not support 'vipllava', so AGCI is off for it; use one of the supported types "
        f"({', '.join(agci.SUPPORTED_MODEL_TYPES)}) or remove the key"
    ]
    with pytest.raises(ValueError, match="no supported VLM found inside VipLlavaForConditionalGeneration"):
        agci.apply_agci(model)
    with pytest.raises(ValueError, match="model type 'vipllava' is not supported; supported: llava"):
        agci.AutoAGCIModelForImageTextToText.from_config(config)


def test_the_key_check_is_undone_with_the_patch():
    import transformers

    original = transformers.PreTrainedModel.__dict__["post_init"]
    with agci.patch("llava"), agci.patch("internvl"):
        assert transformers.PreTrainedModel.__dict__["post_init"].__agci_original__ is original
    assert transformers.PreTrainedModel.__dict__["post_init"] is original
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        transformers.VipLlavaForConditionalGeneration(_vipllava_config(global_context_broadcast_lambda=0.5))


def test_a_lambda_under_text_config_warns_once_under_patch_and_is_refused_by_apply_agci_and_auto():
    text_config = dict(CONFIGS["llava"]["text_config"], global_context_broadcast_lambda=0.5)
    stock = build("llava")
    inputs = stock.batch()
    with agci.patch(), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        case = build("llava", text_config=text_config)  # its language model alone, built inside, says nothing
        with torch.no_grad():
            assert torch.equal(case.model(**inputs).logits, stock.model(**inputs).logits)  # AGCI is off
    assert _agci_warnings(record) == [
        "agci: LlavaForConditionalGeneration runs without AGCI: global_context_broadcast_lambda=0.5 is under "
        "text_config of the config, where agci does not read it; put it at the top level of config.json (agci "
        "set-lambda CHECKPOINT 0.5) or pass global_context_broadcast_lambda=0.5 to apply_agci or "
        "AutoAGCIModelForImageTextToText"
    ]
    agci.unpatch()
    with pytest.raises(ValueError, match="^global_context_broadcast_lambda=0.5 is under text_config of the config"):
        agci.apply_agci(case.model)
    with pytest.raises(ValueError, match="is under text_config"):
        agci.AutoAGCIModelForImageTextToText.from_config(case.model.config)
    agci.apply_agci(case.model, 0.5)  # at the top level now: AGCI acts
    with torch.no_grad():
        assert not torch.equal(case.model(**inputs).logits, stock.model(**inputs).logits)


def test_using_lambda_on_a_model_agci_has_not_patched_warns_once():
    case = build("llava")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for lam in (0.0, 0.5, 1.0):  # a sweep: one warning, and none for lambda 0
            with agci.using_lambda(case.model, lam):
                pass
    assert _agci_warnings(record) == [
        "agci.using_lambda: this LlavaForConditionalGeneration is not patched, so lambda changes nothing; call "
        "agci.apply_agci(model) first, or agci.patch() before building the model"
    ]
    assert [w.filename for w in record if "agci" in str(w.message)] == [__file__]  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with agci.using_lambda(agci.apply_agci(build("llava").model), 0.5):  # patched instance
            pass
        with agci.patch("llava"), agci.using_lambda(case.model, 0.5):  # patched class
            pass
        with agci.patch("llama4"), agci.using_lambda(build("llama4").model, 0.5):  # hooked at the projector
            pass
        with agci.using_lambda(case.model.config, 0.5):  # a config: nothing to check
            pass


def test_a_lambda_that_would_overflow_is_refused_where_it_gave_nan_logits():
    case = build("llava", global_context_broadcast_lambda=1e308)
    with pytest.raises(ValueError, match=r"global_context_broadcast_lambda must be <= 1000, got 1e\+308"):
        agci.apply_agci(case.model)
    case = build("llava")
    agci.apply_agci(case.model)
    with pytest.raises(ValueError, match="must be <= 1000"):
        case.model.global_context_broadcast_lambda = 1e308
    with pytest.raises(ValueError, match="must be <= 1000"), agci.patch("llava"):
        build("llava", global_context_broadcast_lambda=1e308)


@pytest.mark.parametrize("value", ["", False, [], {}])
def test_a_falsy_non_number_is_refused_when_a_patched_model_is_built(value):
    with pytest.raises(TypeError, match="must be a real number"), agci.patch("llava"):
        build("llava", global_context_broadcast_lambda=value)


# an override applies to the new model only


def test_an_override_at_load_leaves_the_config_and_output_of_the_model_it_came_from(tmp_path):
    r = build("llava", global_context_broadcast_lambda=0.5)
    agci.apply_agci(r.model)
    inputs = r.batch()
    with torch.no_grad():
        before = r.model(**inputs).logits
    r.model.save_pretrained(tmp_path / "ckpt")
    auto = agci.AutoAGCIModelForImageTextToText
    for new in (
        auto.from_config(r.model.config, global_context_broadcast_lambda=0),
        auto.from_pretrained(tmp_path / "ckpt", config=r.model.config, global_context_broadcast_lambda=0),
    ):
        assert new.config is not r.model.config and new.global_context_broadcast_lambda == 0.0
        assert r.model.config.global_context_broadcast_lambda == 0.5
        with torch.no_grad():
            assert torch.equal(r.model(**inputs).logits, before)
