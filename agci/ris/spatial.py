"""The mid-layer spatial map, its clustering into regions, and the masks' metrics."""

from __future__ import annotations

import torch

from .encoders import Encoder, PatchTokens


def default_layer(encoder: Encoder) -> int:
    """The paper's layer: block 8 of 12, i.e. two thirds of the way up (1-based)."""
    return max(1, round(encoder.num_layers * 2 / 3))


def spatial_map(encoder: Encoder, tokens: PatchTokens, text: torch.Tensor, layer: int | None = None,
                normalise: str = "channel", negate: bool = False) -> list[torch.Tensor]:  # fmt: skip
    """Per image, the ``(gh, gw)`` map of how much each patch of ``layer`` (1-based) matches ``text``
    (one L2-normalised feature per image).

    ``normalise="channel"`` standardises every channel across the image's patches before comparing
    (the reference's choice); ``"patch"`` L2-normalises each patch vector (a cosine map). ``negate``
    flips the tokens' sign before the final layer norm, as the reference code does."""
    if normalise not in ("channel", "patch"):
        raise ValueError(f"normalise must be 'channel' or 'patch', got {normalise!r}")
    layer = default_layer(encoder) if layer is None else layer  # 0 is refused below, not the default
    if not 1 <= layer <= len(tokens.layers):
        raise ValueError(f"layer {layer} out of range: the encoder has layers 1..{len(tokens.layers)}")
    hidden = tokens.layers[layer - 1]
    with torch.no_grad():
        projected = encoder.project(-hidden if negate else hidden)
    maps = []
    for b, (gh, gw) in enumerate(tokens.grid):
        x = projected[b, : gh * gw].float()
        if normalise == "channel":
            x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
        else:
            x = torch.nn.functional.normalize(x, dim=-1)
        maps.append((x @ text[b].float()).reshape(gh, gw))
    return maps


def upsample(grid_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A patch-grid map at image size (height, width), bilinear."""
    return torch.nn.functional.interpolate(grid_map[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def cluster(grid_map: torch.Tensor, tau: float = 0.25, step: float = 0.05, k: int = 3) -> list[torch.Tensor]:
    """Regions of high score on the patch grid, as boolean grids, strongest first.

    The map is min-max scaled to [0, 1]. Patches are visited from the highest score down while above
    ``tau`` (lowered by ``step`` until at least one patch passes); a patch joins the region of an
    already visited 8-neighbour, and the regions it touches merge into the earliest of them (so a patch
    that bridges two regions joins them); a patch with no visited neighbour starts a region. The first
    ``k`` regions by their best patch are kept."""
    m = grid_map.float()
    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
    gh, gw = m.shape
    while not (m > tau).any():
        tau -= step
    order = [divmod(int(i), gw) for i in torch.argsort(m.flatten(), descending=True) if m.flatten()[i] > tau]
    parent: dict[int, int] = {}

    def find(r):
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    label = {}
    for y, x in order:
        around = {find(label[(y + dy, x + dx)]) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                  if (dy or dx) and (y + dy, x + dx) in label}  # fmt: skip
        if not around:
            label[(y, x)] = parent.setdefault(len(parent), len(parent))
            continue
        keep = min(around)  # the region visited first keeps its identity
        for r in around:
            parent[r] = keep
        label[(y, x)] = keep
    regions: dict[int, list[tuple[int, int]]] = {}
    for cell in order:
        regions.setdefault(find(label[cell]), []).append(cell)
    out = []
    for cells in sorted(regions.values(), key=lambda c: order.index(c[0]))[:k]:
        grid = torch.zeros(gh, gw, dtype=torch.bool)
        for y, x in cells:
            grid[y, x] = True
        out.append(grid)
    return out


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 0.0


def summarise(intersections: list[int], unions: list[int]) -> dict:
    """mIoU (mean of per-expression IoU), oIoU (total intersection over total union) and Prec@X."""
    if not unions:
        raise ValueError("no expressions were scored")
    ious = [i / u if u else 0.0 for i, u in zip(intersections, unions, strict=True)]
    out = {"mIoU": sum(ious) / len(ious), "oIoU": sum(intersections) / max(1, sum(unions)), "n": len(ious)}
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        out[f"Prec@{t}"] = sum(iou >= t for iou in ious) / len(ious)
    return out
