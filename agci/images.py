"""Reading a user's image as a viewer shows it: the one function agci reads every user image with.

- the EXIF orientation tag is applied (a phone photo stored sideways stands up);
- 16-bit integers (``I;16``, ``I;16B``, ``I;16L``, and ``I`` holding values up to 65535, as 16-bit PNGs
  open) are scaled to 8 bits, not clipped; ``I`` beyond 16 bits is scaled by the full 32-bit range;
  ``F`` (float) is read as 0..1 (scaled by its maximum when that exceeds 1);
- transparency (``RGBA``, ``LA``, ``PA``, ``P`` or ``L`` with a transparent colour) is laid over white;
- every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr`` ...) goes through PIL's own conversion.
"""

from __future__ import annotations

from pathlib import Path

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def _grey_levels(image):
    """An ``L`` image from a 16/32-bit integer or float one, scaled rather than clipped."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        top = values.max(initial=0.0)
        values = values / top if top > 1 else values
        levels = values * 255
    elif image.mode in _SIXTEEN_BIT or (values.min(initial=0) >= 0 and values.max(initial=0) <= 65535):
        levels = values / 257
    else:
        levels = (values + 2**31) / 16843009  # (2**32 - 1) / 255
    return Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8))


def to_rgb(image):
    """``image`` (PIL) as the RGB picture a viewer shows: see the module docstring."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in (*_SIXTEEN_BIT, "I", "F"):
        image = _grey_levels(image)
    if image.mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def read_image(path: str | Path):
    """The image file at ``path`` as RGB (see :func:`to_rgb`); FileNotFoundError when there is none,
    OSError (PIL's) when it is not an image PIL can read."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)
