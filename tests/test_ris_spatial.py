"""The spatial map, its clustering and the mask metrics on hand-built tensors (no model is loaded).

Fast on purpose: ``mutation/run.py`` checks ``agci/ris/spatial.py`` against this file alone."""

from __future__ import annotations

import types

import pytest
import torch

from agci.ris.encoders import Encoder, PatchTokens
from agci.ris.spatial import cluster, default_layer, mask_iou, spatial_map, summarise, upsample


def _grids(regions):
    return [r.int().tolist() for r in regions]


def _close(actual: torch.Tensor, expected, atol: float = 1e-6) -> bool:
    return torch.allclose(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=atol)


def _identity_encoder(num_layers: int) -> Encoder:
    """A SigLIP-like encoder whose final layer norm is the identity, so ``project`` returns the tokens."""
    model = torch.nn.Module()
    model.vision_model = torch.nn.Module()
    model.vision_model.post_layernorm = torch.nn.Identity()
    model.config = types.SimpleNamespace(vision_config=types.SimpleNamespace(num_hidden_layers=num_layers))
    return Encoder(model, None, "siglip")


# -- default layer and the map ------------------------------------------------------------------------------


@pytest.mark.parametrize("num_layers, layer", [(12, 8), (24, 16), (4, 3), (5, 3), (2, 1), (1, 1), (0, 1)])
def test_default_layer_is_two_thirds_up_rounded_and_at_least_1(num_layers, layer):
    # 4 * 2/3 = 2.67 -> 3; 5 * 2/3 = 3.33 -> 3; 2 * 2/3 = 1.33 -> 1; 0 layers still gives layer 1
    assert default_layer(_identity_encoder(num_layers)) == layer


def _one_image_tokens(layers: list[list[list[float]]], grid=(1, 3)) -> PatchTokens:
    return PatchTokens([torch.tensor([patches]) for patches in layers], [grid])


def test_channel_map_standardises_each_channel_across_patches():
    # channel 0: 0, 1, 2 -> mean 1, std (n - 1) 1 -> -1, 0, 1; channel 1 constant -> 0 (std clamped, no NaN);
    # channel 2: 0, 1e-7, 2e-7 -> std 1e-7 clamped to 1e-6 -> -0.1, 0, 0.1
    tokens = _one_image_tokens([[[0.0, 5.0, 0.0], [1.0, 5.0, 1e-7], [2.0, 5.0, 2e-7]]])
    text = torch.tensor([[1.0, 10.0, 100.0]])
    (grid_map,) = spatial_map(_identity_encoder(1), tokens, text, layer=1)
    assert grid_map.shape == (1, 3) and grid_map.dtype == torch.float32
    assert _close(grid_map, [[-11.0, 0.0, 11.0]], 1e-3)


def test_patch_map_is_the_cosine_of_each_patch_with_the_text():
    tokens = _one_image_tokens([[[3.0, 4.0], [0.0, 2.0], [-5.0, 0.0]]])
    text = torch.tensor([[1.0, 0.0]])
    (grid_map,) = spatial_map(_identity_encoder(1), tokens, text, layer=1, normalise="patch")
    assert _close(grid_map, [[0.6, 0.0, -1.0]], 1e-6)


def test_negate_flips_the_tokens_and_so_the_map():
    tokens = _one_image_tokens([[[3.0, 4.0], [0.0, 2.0], [-5.0, 0.0]]])
    text = torch.tensor([[1.0, 0.0]])
    (grid_map,) = spatial_map(_identity_encoder(1), tokens, text, layer=1, normalise="patch", negate=True)
    assert _close(grid_map, [[-0.6, 0.0, 1.0]], 1e-6)


def test_the_map_reads_the_requested_layer_and_defaults_to_two_thirds_up():
    # every patch of layer 1 is [1, 0], of layer 2 [0, 1], of layer 3 [-1, 0]; text [1, 0.5]
    tokens = _one_image_tokens([[[1.0, 0.0]] * 3, [[0.0, 1.0]] * 3, [[-1.0, 0.0]] * 3])
    text = torch.tensor([[1.0, 0.5]])
    encoder = _identity_encoder(3)  # default layer: round(3 * 2/3) = 2
    for layer, value in ((1, 1.0), (2, 0.5), (3, -1.0), (None, 0.5)):
        (grid_map,) = spatial_map(encoder, tokens, text, layer=layer, normalise="patch")
        assert _close(grid_map, [[value] * 3]), layer


def test_each_image_uses_its_own_grid_and_ignores_padding():
    # image 0: grid 2 x 1 from 2 patches; image 1: grid 1 x 2 (its last token is padding, huge)
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [7.0, 7.0]], [[0.0, 1.0], [1.0, 1.0], [1e6, -1e6]]])
    tokens = PatchTokens([hidden], [(2, 1), (1, 2)])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    first, second = spatial_map(_identity_encoder(1), tokens, text, layer=1, normalise="patch")
    assert _close(first, [[1.0], [0.0]], 1e-6)
    assert _close(second, [[1.0, 0.7071]], 1e-4)


def test_half_precision_tokens_and_text_give_a_float32_map():
    tokens = _one_image_tokens([[[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]])
    tokens.layers = [t.to(torch.bfloat16) for t in tokens.layers]
    for text in (torch.tensor([[1.0, 0.0]], dtype=torch.float16), torch.tensor([[1.0, 0.0]], dtype=torch.float64)):
        (grid_map,) = spatial_map(_identity_encoder(1), tokens, text, layer=1)
        assert grid_map.dtype == torch.float32 and _close(grid_map, [[-1.0, 0.0, 1.0]])


def test_bad_normalise_and_layers_are_refused_naming_the_range():
    tokens = _one_image_tokens([[[0.0], [1.0], [2.0]]] * 3)
    encoder, text = _identity_encoder(3), torch.tensor([[1.0]])
    with pytest.raises(ValueError, match="normalise must be 'channel' or 'patch', got 'cosine'"):
        spatial_map(encoder, tokens, text, layer=1, normalise="cosine")
    for layer in (0, 4, -1):
        with pytest.raises(ValueError, match=rf"layer {layer} out of range: the encoder has layers 1\.\.3"):
            spatial_map(encoder, tokens, text, layer=layer)
    assert len(spatial_map(encoder, tokens, text, layer=3)) == 1  # both ends of 1..3 are allowed
    assert len(spatial_map(encoder, tokens, text, layer=1)) == 1


def test_upsample_is_bilinear_without_aligned_corners():
    # columns 0 and 1 sampled at -0.25, 0.25, 0.75, 1.25 (clamped at the edges): 0, 0.25, 0.75, 1
    out = upsample(torch.tensor([[0.0, 1.0]]), (3, 4))
    assert out.shape == (3, 4)
    assert _close(out, [[0.0, 0.25, 0.75, 1.0]] * 3)
    out = upsample(torch.tensor([[0.0], [4.0]]), (4, 2))
    assert _close(out, [[0.0, 0.0], [1.0, 1.0], [3.0, 3.0], [4.0, 4.0]])


# -- clustering ---------------------------------------------------------------------------------------------


def test_cluster_grows_merges_and_orders_regions():
    m = torch.tensor([[0.9, 0.8, 0, 0, 0], [0, 0, 0, 0, 0.7], [0, 0, 0, 0, 0.6], [0.5, 0, 0, 0, 0],
                      [0, 0, 0.95, 0, 0]])  # fmt: skip
    regions = cluster(m, k=5)
    assert len(regions) == 4 and regions[0][4, 2] and regions[1][0, 0] and regions[1][0, 1]
    assert regions[2][1, 4] and regions[2][2, 4] and regions[3][3, 0]
    assert len(cluster(m, k=2)) == 2  # the first k by their best patch
    assert len(cluster(m)) == 3  # k is 3 by default
    bridge = torch.tensor([[0.9, 0, 0.85], [0, 0.8, 0], [0, 0, 0]])  # (1,1) joins the two corners
    assert _grids(cluster(bridge)) == [[[1, 0, 1], [0, 1, 0], [0, 0, 0]]]
    flat = torch.full((3, 3), 0.5)
    flat[1, 1] = 0.6  # after min-max scaling every other patch is 0: only the peak passes tau
    assert _grids(cluster(flat)) == [[[0, 0, 0], [0, 1, 0], [0, 0, 0]]]


def test_cluster_regions_are_exact_grids_in_order_of_their_best_patch():
    m = torch.tensor([[1.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.6], [0.8, 0.9, 0.0, 0.0]])
    # (0,0) alone; (2,0)-(2,1) orthogonal neighbours; (0,3)-(1,3) orthogonal neighbours; (1,1)... is 0
    assert _grids(cluster(m)) == [
        [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]],
        [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]],
    ]
    assert all(region.dtype == torch.bool for region in cluster(m))


def test_cluster_scales_min_max_and_keeps_patches_strictly_above_tau():
    # -10 .. 30 scales to 0 .. 1: 0 -> 0.25 (not above tau 0.25), 2 -> 0.3 (above); all patches isolated
    m = torch.tensor([[30.0, -10.0, 0.0], [-10.0, -10.0, -10.0], [2.0, -10.0, -10.0]])
    assert _grids(cluster(m)) == [[[1, 0, 0], [0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0], [1, 0, 0]]]
    assert _grids(cluster(m, tau=0.2)) == [
        [[1, 0, 0], [0, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [0, 0, 0], [1, 0, 0]],
        [[0, 0, 1], [0, 0, 0], [0, 0, 0]],
    ]
    assert _grids(cluster(m * 3 + 7)) == _grids(cluster(m))  # scale and offset do not matter
    # a range below 1 is still stretched to 0 .. 1: 0.03 of 0.1 scales to 0.3 and passes tau
    assert _grids(cluster(torch.tensor([[0.1, 0.0, 0.0, 0.03]]))) == [[[1, 0, 0, 0]], [[0, 0, 0, 1]]]


def test_cluster_lowers_tau_by_step_until_a_patch_passes():
    m = torch.tensor([[1.0, 0.97, 0.0, 0.0, 0.93, 0.5]])
    # tau 1 admits nothing; 1 - 0.05 = 0.95 admits 1 and 0.97 (one region), not 0.93
    assert _grids(cluster(m, tau=1.0)) == [[[1, 1, 0, 0, 0, 0]]]
    # step 0.3: tau 0.7 admits 0.93 as a second region, not 0.5
    assert _grids(cluster(m, tau=1.0, step=0.3)) == [[[1, 1, 0, 0, 0, 0]], [[0, 0, 0, 0, 1, 0]]]


def test_a_constant_map_is_one_region_covering_everything():
    # every patch scales to 0; tau drops below 0 and the whole grid is one 8-connected region
    assert _grids(cluster(torch.full((2, 3), 4.0))) == [[[1, 1, 1], [1, 1, 1]]]


def test_cluster_merges_through_a_late_bridge_into_the_earliest_region():
    # a U shape: two arms grow apart, then the bottom joins them; later regions still count after
    m = torch.tensor([[0.9, 0.0, 0.8, 0.0, 0.0], [0.7, 0.0, 0.6, 0.0, 0.55], [0.0, 0.5, 0.0, 0.0, 0.0]])
    assert _grids(cluster(m, tau=0.1)) == [
        [[1, 0, 1, 0, 0], [1, 0, 1, 0, 0], [0, 1, 0, 0, 0]],
        [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]],
    ]


def test_cluster_chains_of_merges_keep_every_patch():
    # three separate seeds along a row, joined one after another by patches visited later
    m = torch.tensor([[0.9, 0.0, 0.8, 0.0, 0.7, 0.0, 0.6], [0.0, 0.5, 0.0, 0.45, 0.0, 0.4, 0.0]])
    assert _grids(cluster(m, tau=0.1)) == [[[1, 0, 1, 0, 1, 0, 1], [0, 1, 0, 1, 0, 1, 0]]]
    m = torch.tensor([[0.6, 0.0, 0.7, 0.0, 0.8, 0.0, 0.9], [0.0, 0.5, 0.0, 0.45, 0.0, 0.4, 0.0]])
    assert _grids(cluster(m, tau=0.1)) == [[[1, 0, 1, 0, 1, 0, 1], [0, 1, 0, 1, 0, 1, 0]]]


# -- metrics ------------------------------------------------------------------------------------------------


def test_metrics_on_known_masks():
    a = torch.zeros(4, 4, dtype=torch.bool)
    a[:2, :2] = True
    b = torch.zeros(4, 4, dtype=torch.bool)
    b[:2, :1] = True
    assert mask_iou(a, b) == 0.5 and mask_iou(a, a) == 1.0
    s = summarise([2, 4, 0], [4, 4, 8])  # IoUs 0.5, 1, 0
    assert s["mIoU"] == pytest.approx(0.5) and s["oIoU"] == pytest.approx(6 / 16)
    assert s["Prec@0.5"] == pytest.approx(2 / 3) and s["Prec@0.9"] == pytest.approx(1 / 3) and s["n"] == 3
    with pytest.raises(ValueError, match="^no expressions were scored$"):
        summarise([], [])


def test_mask_iou_of_disjoint_overlapping_and_empty_masks():
    a = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.bool)
    assert mask_iou(a, b) == 0.25  # 1 shared cell, 4 in the union
    assert mask_iou(a, ~a) == 0.0
    empty = torch.zeros(2, 3, dtype=torch.bool)
    assert mask_iou(empty, empty) == 0.0 and mask_iou(a, empty) == 0.0


def test_summarise_counts_each_threshold_inclusively():
    # IoUs exactly 0.5, 0.6, 0.7, 0.8, 0.9 and 0 (an empty union)
    s = summarise([1, 3, 7, 4, 9, 0], [2, 5, 10, 5, 10, 0])
    assert s == {
        "mIoU": pytest.approx(3.5 / 6),
        "oIoU": pytest.approx(24 / 32),
        "n": 6,
        "Prec@0.5": pytest.approx(5 / 6),
        "Prec@0.6": pytest.approx(4 / 6),
        "Prec@0.7": pytest.approx(3 / 6),
        "Prec@0.8": pytest.approx(2 / 6),
        "Prec@0.9": pytest.approx(1 / 6),
    }


def test_summarise_with_tiny_and_empty_unions():
    assert summarise([1], [1])["oIoU"] == 1.0 and summarise([1], [1])["mIoU"] == 1.0
    empty = summarise([0, 0], [0, 0])
    assert empty["mIoU"] == 0.0 and empty["oIoU"] == 0.0 and empty["Prec@0.5"] == 0.0 and empty["n"] == 2
    with pytest.raises(ValueError):
        summarise([1, 2], [3])
