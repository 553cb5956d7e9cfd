import io

import pytest
from PIL import Image, ImageFilter

from generation.thumbnails import make_thumbnails, thumbnail_format

SIZES = {"small": 128, "medium": 384, "large": 768}


def _png(size, mode="RGB"):
    noise = Image.effect_noise(size, 40).filter(ImageFilter.GaussianBlur(2))
    gradient = Image.linear_gradient("L").resize(size)
    image = Image.merge("RGB", [noise, gradient, gradient.rotate(90)])
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    buffer.seek(0)
    return buffer


def test_three_sizes_in_the_expected_format():
    thumbs = make_thumbnails(_png((1024, 768)), SIZES)
    assert [t.size for t in thumbs] == ["small", "medium", "large"]
    image_format, extension = thumbnail_format()
    for thumb, longest in zip(thumbs, SIZES.values(), strict=True):
        assert thumb.extension == extension
        decoded = Image.open(io.BytesIO(thumb.data))
        assert decoded.format == image_format
        assert decoded.size == (longest, round(longest * 0.75)) == (thumb.width, thumb.height)


def test_never_upscales():
    thumbs = make_thumbnails(_png((64, 64)), SIZES)
    assert {(t.width, t.height) for t in thumbs} == {(64, 64)}


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_other_modes_are_flattened(mode):
    thumbs = make_thumbnails(_png((200, 100), mode), {"small": 50})
    assert Image.open(io.BytesIO(thumbs[0].data)).size == (50, 25)


def test_1024_png_gives_every_size():
    """Speed is measured in bench/pipeline_bench.py, not asserted here."""
    thumbs = make_thumbnails(_png((1024, 1024)), SIZES)
    assert sorted(Image.open(io.BytesIO(t.data)).size[0] for t in thumbs) == sorted(SIZES.values())
