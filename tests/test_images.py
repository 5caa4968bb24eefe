"""User images read as a viewer shows them (agci.images): every PIL mode that cameras and tools write, a
transparent background laid over white, and the EXIF orientation applied; and the same reader behind every
place agci opens a user image."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from agci.images import read_image

SIZE = (5, 3)


def _grey_in(mode: str, grey: int, opaque: bool):
    """A uniform image of mode ``mode`` that a viewer shows as ``grey`` (white where it is transparent),
    written the way that mode stores it; and the file format that keeps the mode."""
    alpha = 255 if opaque else 0
    if mode == "1":
        return Image.new("1", SIZE, int(grey > 127)), "PNG"
    if mode in ("L", "RGB", "RGBA", "LA", "YCbCr"):
        fill = {"L": grey, "RGB": (grey,) * 3, "RGBA": (grey, grey, grey, alpha), "LA": (grey, alpha)}
        if mode == "YCbCr":
            return Image.new("RGB", SIZE, (grey,) * 3).convert("YCbCr"), "TIFF"
        return Image.new(mode, SIZE, fill[mode]), "PNG"
    if mode in ("P", "P+transparency"):
        image = Image.new("P", SIZE, 1)
        image.putpalette([0, 0, 0, grey, grey, grey] + [0] * 762)
        if mode == "P+transparency" and not opaque:
            image.info["transparency"] = 1
        return image, "PNG"
    if mode == "PA":
        image = Image.new("PA", SIZE, (1, alpha))
        image.putpalette([0, 0, 0, grey, grey, grey] + [0] * 762)
        return image, "TIFF"
    if mode == "CMYK":
        return Image.new("CMYK", SIZE, (0, 0, 0, 255 - grey)), "TIFF"
    if mode in ("I;16", "I;16B"):
        data = np.full(SIZE[::-1], grey * 257, dtype="<u2" if mode == "I;16" else ">u2").tobytes()
        return Image.frombytes(mode, SIZE, data), "PNG" if mode == "I;16" else "TIFF"
    if mode == "I (16-bit values)":  # what older readers make of a 16-bit PNG
        return Image.fromarray(np.full(SIZE[::-1], grey * 257, dtype=np.int32)), "TIFF"
    if mode == "I (32-bit values)":
        return Image.fromarray(np.full(SIZE[::-1], grey * 16843009 - 2**31, dtype=np.int32)), "TIFF"
    if mode == "F":
        return Image.fromarray(np.full(SIZE[::-1], grey / 255, dtype=np.float32)), "TIFF"
    raise AssertionError(mode)


MODES = ["1", "L", "LA", "P", "P+transparency", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I;16B",
         "I (16-bit values)", "I (32-bit values)", "F"]  # fmt: skip
TRANSPARENT_CAPABLE = {"LA", "RGBA", "PA", "P+transparency"}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(MODES), grey=st.integers(0, 255), opaque=st.booleans())
def test_every_mode_reads_as_the_grey_a_viewer_shows(tmp_path, mode, grey, opaque):
    image, fmt = _grey_in(mode, grey, opaque)
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt)
    got = np.asarray(read_image(path))
    if mode == "1":
        expected = 255 if grey > 127 else 0
    elif mode in TRANSPARENT_CAPABLE and not opaque:
        expected = 255  # a transparent background is the white canvas it is pasted on
    else:
        expected = grey
    assert got.shape == (SIZE[1], SIZE[0], 3)
    assert np.abs(got.astype(int) - expected).max() <= 1, (mode, grey, opaque, got[0, 0])


_UNDO = {  # the transposition that, stored with orientation o, a viewer turns back into the picture
    1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(orientation=st.integers(1, 8), mode=st.sampled_from(["L", "RGB", "I;16"]))
def test_the_exif_orientation_is_applied(tmp_path, orientation, mode):
    """The picture (6 x 4, white top-left and grey top-right corners) stored turned as a camera stores it
    reads back upright."""
    picture = np.zeros((4, 6), dtype=np.uint8)
    picture[0, 0], picture[0, 5] = 255, 128
    stored = Image.fromarray(picture)
    if _UNDO[orientation] is not None:
        stored = stored.transpose(_UNDO[orientation])
    if mode == "I;16":
        stored = Image.frombytes("I;16", stored.size, (np.asarray(stored).astype("<u2") * 257).tobytes())
    else:
        stored = stored.convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    stored.save(path, exif=exif)
    got = np.asarray(read_image(path))[..., 0]
    assert got.shape == (4, 6)
    assert (got[0, 0], got[0, 5], got[3, 0], got[3, 5]) == (255, 128, 0, 0), orientation


def test_the_examples_of_the_issue(tmp_path):
    """A 16-bit PNG of a mid grey (was almost white: clipped), a transparent PNG on the white canvas (was
    black) and a phone photo stored sideways (was read sideways)."""
    Image.frombytes("I;16", (8, 8), np.full((8, 8), 30000, dtype="<u2").tobytes()).save(tmp_path / "sixteen.png")
    assert np.asarray(read_image(tmp_path / "sixteen.png"))[0, 0].tolist() == [117, 117, 117]
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert np.asarray(read_image(tmp_path / "clear.png"))[0, 0].tolist() == [255, 255, 255]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to view
    Image.new("RGB", (40, 30), "red").save(tmp_path / "phone.jpg", exif=exif)
    assert read_image(tmp_path / "phone.jpg").size == (30, 40)


def test_every_user_image_is_read_through_read_image():
    """No module of agci opens a user image itself (masks of the referring-segmentation ground truth are
    data, not pictures, and stay binary)."""
    package = Path(__file__).parent.parent / "agci"
    allowed = {"images.py", "bias/sources.py", "ris/pipeline.py"}  # sources: opened lazily, converted by to_rgb
    offenders = []
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).as_posix()
        text = path.read_text()
        if rel not in allowed and re.search(r"Image\.open\(", text):
            offenders.append(rel)
    assert not offenders


def test_the_probe_reads_records_images_as_a_viewer(tmp_path):
    """The probe's image loader gives the upright, white-backed picture."""
    from agci.bias.runner import _load_image

    Image.new("LA", (6, 6), (0, 0)).save(tmp_path / "a.png")
    image = _load_image({"image": "a.png"}, tmp_path)
    assert image.mode == "RGB" and np.asarray(image).min() == 255


@pytest.mark.parametrize("broken", [b"", b"not an image"])
def test_an_unreadable_file_is_an_oserror(tmp_path, broken):
    (tmp_path / "x.png").write_bytes(broken)
    with pytest.raises(OSError):
        read_image(tmp_path / "x.png")
