"""Which feature tokens form one image, and AGCI applied image by image: the engine-neutral part of a patch.

A family's hook gets the features of every image of a call at once, in the layout its model returns them (one
entry per image, per tile or per sample). The rules here turn that layout into tokens per image, one public
function per rule of :data:`agci.registry.GROUPINGS`, reading only tensors and the HF config (which vLLM keeps
too); :func:`inject` then applies the op to each image. Nothing here knows how an engine calls its model.
"""

from __future__ import annotations

import warnings

import torch

from .registry import Family


def inject(features, lam: float, batch_wide: bool = False, lengths: list[int] | None = None):
    """AGCI on features as ``get_image_features`` returns them: a list/tuple of ``[n_i, D]`` tensors (same
    type back) or a stacked ``[n, T, D]`` tensor, one image per entry or row; with ``lengths``, the tokens of
    each image, in order, over all entries (families whose entries are tiles or whole samples).
    ``batch_wide``: one mean over all of them, with the reference's formula (scope "reference" of a family
    whose reference code mixes the batch)."""
    from .kernels import global_context_broadcast
    from .kernels.reference import broadcast_eager_formula

    if isinstance(features, torch.Tensor):
        flat = features.reshape(-1, features.shape[-1])
        if batch_wide:
            return broadcast_eager_formula(flat, lam).view(features.shape)
        if lengths is not None:
            return global_context_broadcast(flat, lam, lengths).view(features.shape)
        if features.ndim > 3:  # [n, H, W, D] (Aya Vision on 4.57): one image per row, as [n, T, D]
            rows = features.reshape(features.shape[0], -1, features.shape[-1])
            return global_context_broadcast(rows, lam).view(features.shape)
        return global_context_broadcast(features, lam)  # [N, D] is one image, [n, T, D] n images
    parts = list(features)
    if not parts:
        return features
    sizes = [p.shape[0] for p in parts]
    packed = torch.cat(parts)
    if batch_wide:
        out = broadcast_eager_formula(packed, lam).to(packed.dtype)
    else:
        out = global_context_broadcast(packed, lam, sizes if lengths is None else lengths)
    return type(features)(out.split(sizes)) if isinstance(features, tuple) else list(out.split(sizes))


def token_runs(input_ids: torch.Tensor, token_id: int) -> list[list[tuple[int, int]]]:
    """(start, length) of each unbroken run of ``token_id``, per row of ``input_ids`` (a run never continues
    from the end of one row into the next)."""
    mask = torch.nn.functional.pad(input_ids == token_id, (1, 1)).to("cpu", torch.int8)
    edges = mask.diff(dim=1)
    out = []
    for row in edges:
        starts, ends = (row == 1).nonzero().flatten().tolist(), (row == -1).nonzero().flatten().tolist()
        out.append([(s, e - s) for s, e in zip(starts, ends, strict=True)])
    return out


def global_view_lengths(input_ids: torch.Tensor | None, token_id: int, sizes: list[int]) -> list[int]:
    """Tokens of each image when ``sizes[b]`` tokens come per sample (Idefics3, SmolVLM): in each row, an
    image is its crop runs of ``token_id`` up to and including its global view, the run that follows the
    same marker token as the row's last run. Without input_ids, or when the runs do not add up, each
    sample's tokens count as one image (with a warning in the second case)."""
    if input_ids is None or input_ids.shape[0] != len(sizes):
        return [s for s in sizes if s]
    out = []
    for row, runs, size in zip(input_ids.tolist(), token_runs(input_ids, token_id), sizes, strict=True):
        if not size and not runs:
            continue
        marker = row[runs[-1][0] - 1] if runs and runs[-1][0] > 0 else None
        images, current = [], 0
        for start, length in runs:
            current += length
            if start > 0 and row[start - 1] == marker:
                images.append(current)
                current = 0
        if current or sum(images) != size:
            warnings.warn(
                f"agci: the image-token runs of a sample ({[n for _, n in runs]}) do not end in global views that "
                f"add up to its {size} image tokens; the sample's images share one global context",
                stacklevel=4,
            )
            images = [size]
        out += images
    return out


def tiles_per_image(input_ids: torch.Tensor | None, token_id: int, tokens_per_tile: int, n_tiles: int) -> list[int]:
    """Tiles of each image, in order: an image is one unbroken run of ``token_id`` in ``input_ids``.

    Without ``input_ids`` (features asked for outside a forward or generate), or when the runs do not
    match the tiles, every tile counts as its own image (with a warning in the second case)."""
    if input_ids is None:
        return [1] * n_tiles
    runs = [length for row in token_runs(input_ids, token_id) for _, length in row]
    if any(r % tokens_per_tile for r in runs) or sum(runs) != n_tiles * tokens_per_tile:
        warnings.warn(
            f"agci: the image-token runs in input_ids ({runs}) do not match {n_tiles} tiles of {tokens_per_tile} "
            "tokens; each tile gets its own global context",
            stacklevel=4,
        )
        return [1] * n_tiles
    return [r // tokens_per_tile for r in runs]


def pooled_patch_lengths(position_ids: torch.Tensor, pooling: int) -> list[int]:
    """Tokens per image from patch positions ((-1, -1) marks padding), ``pooling`` x ``pooling`` patches per
    token: Gemma 4 before transformers split its features per image."""
    return ((position_ids != -1).all(-1).sum(-1) // pooling**2).tolist()


def sizes_argument_lengths(family: Family, config, sizes: torch.Tensor) -> list[int]:
    """Tokens per image from the hooked method's ``family.sizes_argument`` (one [N, D] tensor for all images)."""
    pooling = config
    for name in family.sizes_pooling_attr.split("."):
        pooling = getattr(pooling, name)
    return pooled_patch_lengths(sizes, pooling)


def image_lengths(family: Family, config, features, input_ids: torch.Tensor | None) -> list[int] | None:
    """Tokens per image over all entries of ``features``, by the family's grouping rule (None: one image
    per entry, as returned)."""
    token_id = getattr(config, family.image_token_attr)
    if input_ids is None and family.reads_input_ids:
        entry = "tile" if family.grouping == "tile_runs" else "sample or tile"
        warnings.warn(
            f"agci: {family.name} image features were computed without input_ids or inputs_embeds (outside the "
            f"model's forward and generate), so each {entry} gets its own global context; to group them into images "
            "as the forward does, call inside `with agci.patches.hooks.grouping_input_ids(model, input_ids):`",
            stacklevel=4,
        )
    if family.grouping == "tile_runs" and isinstance(features, torch.Tensor) and features.ndim == 3:
        per_tile = features.shape[1]
        return [t * per_tile for t in tiles_per_image(input_ids, token_id, per_tile, features.shape[0])]
    if family.grouping == "global_view" and isinstance(features, list | tuple):
        return global_view_lengths(input_ids, token_id, [f.shape[0] for f in features])
    if family.grouping == "global_view" and isinstance(features, torch.Tensor) and input_ids is not None:
        # every sample's views stacked in one tensor (Aya Vision; Idefics3 up to transformers 5.6)
        per_row = (input_ids == token_id).sum(1).tolist()
        if sum(per_row) == features.numel() // features.shape[-1]:
            return global_view_lengths(input_ids, token_id, per_row)
    return None


def placeholder_ids(inputs_embeds: torch.Tensor, embedding: torch.nn.Module, token_id: int) -> torch.Tensor:
    """Stand-in ``input_ids`` for the grouping rules when a caller passes ``inputs_embeds``: ``token_id`` where a
    position holds the image token's embedding (how transformers' ``get_placeholder_mask`` finds the image
    positions), and elsewhere negative ids, equal exactly where the token just before an image-token run holds the
    same vector (the rules read no other token: ``global_view`` compares those markers, ``tile_runs`` reads runs)."""
    with torch.no_grad():
        flat = inputs_embeds.detach().reshape(-1, inputs_embeds.shape[-1])
        image = embedding(torch.tensor([token_id], device=flat.device)).to(flat.dtype)
        is_image = (flat == image).all(-1)
        ids = torch.full(is_image.shape, -1, dtype=torch.long, device=flat.device)
        ids[is_image] = token_id
        rows = is_image.view(inputs_embeds.shape[:-1])
        before = torch.zeros_like(rows)
        before[:, :-1] = rows[:, 1:] & ~rows[:, :-1]  # the position before each run's first token
        before = before.flatten()
        if before.any():
            _, which = torch.unique(flat[before], dim=0, return_inverse=True)
            ids[before] = -2 - which
    return ids.view(rows.shape)
