"""A built-in source of image-caption pairs that needs no download: shapes, colours and textures.

Each pair is one object drawn on a light background with a caption naming its colour and shape,
e.g. "a red circle"; its texture (plain, striped, dotted) varies as a nuisance, or is named in
the caption too ("a striped red circle") with ``name_textures``. Pairs are fully determined by
``(seed, index)``, so a probe set built from this source can be rebuilt exactly from its manifest.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (130, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
TEXTURES = ("plain", "striped", "dotted")


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    texture: str = "plain"
    name_texture: bool = False

    @property
    def caption(self) -> str:
        texture = f"{self.texture} " if self.name_texture else ""
        return f"a {texture}{self.colour} {self.shape}"


def _shape_mask(shape: str, size: int, rng: random.Random):
    from PIL import Image, ImageDraw

    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    margin = size * rng.uniform(0.12, 0.2)
    lo, hi = margin, size - margin
    if shape == "circle":
        draw.ellipse([lo, lo, hi, hi], fill=255)
    elif shape == "square":
        draw.rectangle([lo, lo, hi, hi], fill=255)
    elif shape == "triangle":
        draw.polygon([(size / 2, lo), (hi, hi), (lo, hi)], fill=255)
    elif shape == "cross":
        w = (hi - lo) / 3
        draw.rectangle([lo, lo + w, hi, hi - w], fill=255)
        draw.rectangle([lo + w, lo, hi - w, hi], fill=255)
    elif shape == "ring":
        draw.ellipse([lo, lo, hi, hi], fill=255)
        inner = (hi - lo) * 0.28
        draw.ellipse([lo + inner, lo + inner, hi - inner, hi - inner], fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return mask


def _texture_layer(spec: ObjectSpec, size: int):
    from PIL import Image, ImageDraw

    colour = COLOURS[spec.colour]
    layer = Image.new("RGB", (size, size), colour)
    if spec.texture == "plain":
        return layer
    draw = ImageDraw.Draw(layer)
    light = tuple(min(255, c + (255 - c) * 3 // 4) for c in colour)
    step = max(4, size // 8)
    if spec.texture == "striped":
        for y in range(0, size, step):
            draw.rectangle([0, y + step // 2, size, y + step - 1], fill=light)
    elif spec.texture == "dotted":
        r = max(1, step // 4)
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=light)
    else:
        raise ValueError(f"unknown texture {spec.texture!r}; known: {', '.join(TEXTURES)}")
    return layer


def render(spec: ObjectSpec, size: int = 280, seed: int = 0):
    """One object on a light, slightly tinted background; size, rotation and shade jitter with ``seed``."""
    from PIL import Image

    rng = random.Random(seed)
    shade = rng.randint(232, 250)
    background = Image.new("RGB", (size, size), (shade, shade, rng.randint(228, 250)))
    mask = _shape_mask(spec.shape, size, rng)
    if spec.shape in ("square", "triangle", "cross"):
        mask = mask.rotate(rng.uniform(-20, 20), resample=Image.BILINEAR)
    background.paste(_texture_layer(spec, size), (0, 0), mask)
    return background


@dataclass(frozen=True)
class SyntheticPair:
    id: str
    spec: ObjectSpec
    seed: int

    @property
    def caption(self) -> str:
        return self.spec.caption

    def load_image(self, size: int = 280):
        return render(self.spec, size, self.seed)


def captions(name_textures: bool = False) -> list[str]:
    """Every caption the generator can write, in a fixed order."""
    textures = TEXTURES if name_textures else ("plain",)
    return [ObjectSpec(c, s, t, name_textures).caption for t in textures for c in COLOURS for s in SHAPES]


def synthetic_pairs(n: int, seed: int = 0, name_textures: bool = False) -> list[SyntheticPair]:
    """``n`` pairs cycling through every captioned combination in a seeded order; textures are drawn
    at random unless they are named."""
    if n < 1:
        raise ValueError(f"synthetic source needs n >= 1 pairs, got {n}")
    textures = TEXTURES if name_textures else ("plain",)
    combos = [(c, s, t) for t in textures for c in COLOURS for s in SHAPES]
    rng = random.Random(seed)
    out = []
    for block in range(math.ceil(n / len(combos))):
        order = combos[:]
        rng.shuffle(order)
        for j, (colour, shape, texture) in enumerate(order):
            i = block * len(combos) + j
            if i >= n:
                break
            if not name_textures:
                texture = rng.choice(TEXTURES)
            spec = ObjectSpec(colour, shape, texture, name_textures)
            out.append(SyntheticPair(f"syn{seed}_{i:05d}", spec, seed * 1_000_003 + i))
    return out
