"""The family registry: every entry has what the rest of the package reads, and the tables match it."""

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vlm_cases import CONFIGS, families_here

from agci import compat, grouping
from agci.patches import discovery, hooks
from agci.patches.families import FAMILIES, GROUPINGS, markdown_table

ROOT = Path(__file__).resolve().parent.parent


def grouping_attr(config, dotted: str):
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_every_family_has_what_the_package_reads(model_type):
    family = FAMILIES[model_type]
    assert family.grouping in GROUPINGS and family.name and family.tested
    assert model_type in CONFIGS, "add the family's tiny config to tests/fixtures/tiny_configs.json"
    if not compat.transformers_at_least(family.since):
        pytest.skip(f"transformers here is older than {family.since}, which {model_type} needs")
    module = importlib.import_module(family.module)
    inner, outer = getattr(module, family.inner_class), getattr(module, family.outer_class)
    hooked, method = hooks.hooked_method(model_type)
    assert method in hooked.__dict__, f"{hooked.__name__} defines no {method}"
    assert "get_image_features" in inner.__dict__ and family.videos == ("get_video_features" in inner.__dict__)
    config = outer.config_class(**CONFIGS[model_type])
    if family.hook == "multi_modal_projector":  # the module the hook wraps is the inner model's projector
        assert type(getattr(discovery.inner_model(outer(config))[0], family.hook)) is hooked
    assert config.model_type == model_type
    assert isinstance(getattr(config, family.image_token_attr), int)
    # the image inputs the probes pass are exactly those of the processor outputs its get_image_features takes
    params = inspect.signature(outer.get_image_features).parameters
    known = ("pixel_values", "image_sizes", "image_grid_thw", "pixel_attention_mask", "image_position_ids")
    assert set(family.image_inputs) == {k for k in known if k in params}, "Family.image_inputs"
    if family.sizes_pooling_attr:
        assert isinstance(grouping_attr(config, family.sizes_pooling_attr), int)
    from agci.eval import lmms_model
    from agci.eval.plugin import MODEL_NAMES, class_name

    assert model_type in MODEL_NAMES[family.lmms_eval_name] and model_type in MODEL_NAMES["agci"]
    assert getattr(lmms_model, class_name(family.lmms_eval_name)).model_name == family.lmms_eval_name


def test_the_newest_transformers_runs_every_family():
    """No family may be registered without its tests on the newest transformers."""
    assert all("newest" in f.tested for f in FAMILIES.values())
    from vlm_cases import version_label

    if version_label() == "newest":
        assert families_here() == list(FAMILIES)


@pytest.mark.parametrize("model_type", [t for t, f in FAMILIES.items() if f.broken])
def test_a_family_is_marked_broken_exactly_where_its_stock_model_fails(model_type):
    """``Family.broken`` names releases where transformers' own model fails; on such a release here, the stock
    tiny model must fail with that error (else the record is out of date). Elsewhere the patch tests run it."""
    import transformers
    from vlm_cases import build

    family = FAMILIES[model_type]
    if not family.broken_in(transformers.__version__):
        pytest.skip(f"transformers {transformers.__version__} is not one where {model_type} is marked broken")
    case = build(model_type)
    with pytest.raises(Exception) as failure:
        case.model(**case.batch())
    assert str(failure.value) in family.broken.error, failure.value


def test_a_family_broken_on_the_installed_release_is_refused_naming_the_bug_and_the_fix(monkeypatch):
    import transformers

    import agci

    family = FAMILIES["llama4"]
    monkeypatch.setattr(transformers, "__version__", family.broken.releases[0])
    assert "llama4" not in discovery.installed_families() and "llama4" in discovery.present_families()
    message = r"'llama4' \(Llama 4\) does not run on transformers 5\.24\.0, with or without agci: .*image_outputs"
    with pytest.raises(RuntimeError, match=message + r".*pip install -U 'transformers>=5\.25'"):
        agci.patch("llama4")
    with pytest.raises(RuntimeError, match=message):
        agci.AutoAGCIModelForImageTextToText.from_config(transformers.Llama4Config(**CONFIGS["llama4"]))
    with agci.patch() as handle:  # every family that runs here: the broken one is left out, without an error
        assert "llama4" not in handle.model_types and "llava" in handle.model_types
    monkeypatch.undo()
    model = transformers.Llama4ForConditionalGeneration(transformers.Llama4Config(**CONFIGS["llama4"]))
    monkeypatch.setattr(transformers, "__version__", family.broken.releases[0])
    with pytest.raises(RuntimeError, match=message):
        agci.apply_agci(model, 0.5)
    assert "forward" not in model.__dict__


def test_a_family_newer_than_the_installed_transformers_is_refused_naming_the_version(monkeypatch):
    monkeypatch.setattr(compat, "transformers_version", lambda: (4, 57))
    assert "qwen3_5" not in discovery.installed_families() and "qwen2_5_vl" in discovery.installed_families()
    with pytest.raises(ValueError, match=r"qwen3_5.*needs transformers >= 5\.2.*pip install -U 'transformers>=5\.2'"):
        discovery.family_classes("qwen3_5")
    with pytest.raises(ValueError, match="not supported; supported: llava, llava_next"):
        discovery.family_classes("blip_2")


def test_readme_support_table_is_the_registry():
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- families:start (agci families --markdown) -->\n", "<!-- families:end -->"
    assert start in readme and end in readme
    assert readme.split(start)[1].split(end)[0] == markdown_table()


def test_agci_families_prints_every_family():
    agci = str(Path(sys.executable).parent / "agci")
    out = subprocess.run([agci, "families"], capture_output=True, text=True, check=True).stdout
    for t, f in FAMILIES.items():
        assert any(line.split()[:1] == [t] and f.lmms_eval_name in line for line in out.splitlines()), t
    md = subprocess.run([agci, "families", "--markdown"], capture_output=True, text=True, check=True).stdout
    assert md == markdown_table()


# -- grouping rules, on input_ids written by hand ---------------------------------------------------------
T, G, R1, R2, F = 9, 50, 51, 52, 53  # image token, <global-img>, <row_1_col_1>, <row_1_col_2>, <fake_token>


def test_global_view_groups_crops_with_their_global_view():
    # sample 0: an image of two crops (2 tokens each) then its global view, then an image with no crops;
    # sample 1 (left padded): one image of two crops and its global view
    one = [1, F, R1, T, T, F, R2, T, T, F, G, T, T, F, 7, F, G, T, T, F, 8]
    two = [0] * 6 + [1, F, R1, T, T, F, R2, T, T, F, G, T, T, F, 8]
    ids = torch.tensor([one, two])
    assert grouping.global_view_lengths(ids, T, [8, 6]) == [6, 2, 6]
    assert grouping.global_view_lengths(None, T, [8, 6]) == [8, 6]  # no input_ids: a sample is one image
    with pytest.warns(UserWarning, match="do not end in global views"):
        assert grouping.global_view_lengths(ids, T, [9, 6]) == [9, 6]


def test_a_sample_without_images_adds_no_image():
    ids = torch.tensor([[0, 1, 5, 6, 7, 8], [1, F, G, T, T, F]])
    assert grouping.global_view_lengths(ids, T, [0, 2]) == [2]


def test_every_family_has_a_tiny_checkpoint_with_its_processor_or_a_stated_reason():
    from family_cases import CASES

    assert list(CASES) == list(FAMILIES), "one row per registry family in tests/family_cases.py, in its order"
    for model_type, row in CASES.items():
        assert (row.processor is None) == bool(row.no_processor), model_type
