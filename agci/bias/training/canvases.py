"""The canvases the embedded model and its adapters are trained on: probe-style grids of synthetic objects with
the target in a cell drawn with given weights, and their encoding for training."""

from __future__ import annotations

import random

import torch

from ..probe_sets import grid_canvas
from ..synthetic import COLOURS, SHAPES, synthetic_pairs


def draw_canvas(rng: random.Random, pairs, images: dict, objects: int, weights, size: int = 840):
    """A canvas with ``objects`` shapes of distinct captions: the target in a cell drawn with ``weights``,
    the distractors in random other cells, the remaining cells blank (white). Returns (caption by cell,
    ``None`` where blank; target cell; a caption that is not on the canvas; the PIL canvas)."""
    chosen = []
    for p in rng.sample(pairs, len(pairs)):
        if all(p.caption != c.caption for c in chosen):
            chosen.append(p)
        if len(chosen) == objects + 1:
            break
    cell = rng.choices(range(9), weights=weights)[0]
    cells = [cell, *rng.sample([c for c in range(9) if c != cell], objects - 1)]
    by_cell, pictures = [None] * 9, [None] * 9
    for p, c in zip(chosen[:objects], cells, strict=False):
        if p.id not in images:
            images[p.id] = p.load_image(size // 3)
        by_cell[c], pictures[c] = p.caption, images[p.id]
    return by_cell, cell, chosen[objects].caption, grid_canvas(pictures, size)


def object_pairs(seed: int):
    """The synthetic objects canvases are drawn from: every caption several times, in a seeded order."""
    return synthetic_pairs(max(4 * len(COLOURS) * len(SHAPES), 120), seed)


def draw_canvases(n: int, seed: int, weights, desc: str, objects=(9,)):
    """``n`` canvases, their object counts cycling through ``objects``."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    pairs = object_pairs(seed)
    images: dict = {}
    return [draw_canvas(rng, pairs, images, objects[i % len(objects)], weights) for i in tqdm(range(n), desc=desc)]


def encode_rows(processor, rows, answers: bool):
    """Token ids, attention mask and pixel values for (prompt, answer, image) rows."""
    from ...vlm import chat_messages

    texts, images = [], []
    for prompt, answer, image in rows:
        messages = chat_messages(prompt, answer=answer if answers else None)
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=not answers))
        images.append(image)
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"], batch["pixel_values"]


def left_pad(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value) for t in tensors])
