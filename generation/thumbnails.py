"""Thumbnails: small / medium / large previews of a generated image, as WebP (JPEG fallback).

Speed matters (a 1024×1024 PNG must give all three sizes in well under 60 ms): the image is
decoded once, each size is resized from the next larger one (a cascade, so each step works on
fewer pixels) with the BOX filter (area averaging: right for downscaling, and the fastest),
``reducing_gap`` lets Pillow use the integer ``reduce()`` first, and WebP is encoded with
``method=0`` (the fastest; thumbnails need no better).
"""

import io
from dataclasses import dataclass
from functools import cache

from django.conf import settings
from PIL import Image, features


@dataclass(frozen=True)
class Thumbnail:
    size: str  # "small" | "medium" | "large"
    data: bytes
    extension: str  # "webp" | "jpg"
    width: int
    height: int


@cache
def thumbnail_format():
    """``("WEBP", "webp")`` when this Pillow can encode WebP, else ``("JPEG", "jpg")``."""
    return ("WEBP", "webp") if features.check("webp") else ("JPEG", "jpg")


def make_thumbnails(source, sizes=None):
    """Return one :class:`Thumbnail` per entry of ``sizes`` ({name: longest side}, defaults to
    ``GENERATION["THUMBNAIL_SIZES"]``). ``source`` is a path or a binary file object.

    A thumbnail is never larger than the image: a size above the original keeps the original size.
    """
    sizes = sizes or settings.GENERATION["THUMBNAIL_SIZES"]
    image_format, extension = thumbnail_format()
    with Image.open(source) as image:
        image.draft("RGB", (max(sizes.values()),) * 2)  # JPEG sources decode at a reduced scale
        current = _flatten(image)
    thumbnails = []
    for name, longest in sorted(sizes.items(), key=lambda item: -item[1]):
        target = _fit(current.size, longest)
        if target != current.size:
            current = current.resize(target, Image.Resampling.BOX, reducing_gap=2.0)
        buffer = io.BytesIO()
        if image_format == "WEBP":
            current.save(buffer, "WEBP", quality=80, method=0)
        else:
            current.save(buffer, "JPEG", quality=85, optimize=False)
        thumbnails.append(Thumbnail(name, buffer.getvalue(), extension, *current.size))
    order = list(sizes)
    return sorted(thumbnails, key=lambda thumb: order.index(thumb.size))


def _fit(size, longest):
    width, height = size
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _flatten(image):
    """RGB for the encoders: alpha is composed over white, palettes are expanded."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
