"""Input images: verified by decoding, normalised, stored once per owner and content.

Whatever the source (an upload, a URL, one of the person's own finished images), the bytes are
decoded with Pillow (the declared type is ignored: ComfyUI accepts any bytes as an "image"),
checked against ``INPUT_MAX_BYTES`` and ``MAX_PIXELS``, EXIF orientation applied, metadata
dropped, and re-encoded as PNG. The PNG's sha256 names the file: ``inputs/<user>/<sha256>.png``
(masks: ``…/mask-<sha256>.png``), so the same image given twice is stored once.

Validation *prepares* an input (:class:`PreparedInput`, nothing stored); :func:`store_prepared`
stores it once the whole request is valid, so bad input stores nothing.
"""

import hashlib
import io
import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from PIL import Image, ImageOps, UnidentifiedImageError

from generation.models import GenerationRequest, InputImage
from generation.states import ACTIVE, Status

logger = logging.getLogger(__name__)

ROOT = "inputs"
_READ_CHUNK = 64 * 1024


class InputRefused(Exception):
    """The image cannot be used; ``status`` 400, or 413 when it is too large in bytes."""

    def __init__(self, message, *, status=400):
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self):
        return self.message


class InputInUse(Exception):
    """The input is named by a request that has not finished."""


@dataclass
class PreparedInput:
    """A checked image, stored (``record``) or ready to store (``png``)."""

    id: uuid.UUID
    kind: str
    sha256: str
    width: int
    height: int
    has_transparency: bool
    png: bytes | None = None
    record: InputImage | None = None
    source: str = ""


def input_path(user_id, kind, sha256):
    prefix = "mask-" if kind == InputImage.Kind.MASK else ""
    return f"{ROOT}/{user_id}/{prefix}{sha256}.png"


# --- decoding ---------------------------------------------------------------------------------------


def read_capped(stream, *, limit):
    """Read a file object to bytes, refusing (413) past ``limit`` bytes."""
    data = bytearray()
    while True:
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > limit:
            raise InputRefused(f"The image is larger than {limit} bytes.", status=413)


def normalise(data, *, kind=InputImage.Kind.IMAGE):
    """Decode ``data`` and return ``(png bytes, width, height, has_transparency)``.

    Raises :class:`InputRefused` for anything Pillow cannot fully decode, or too many pixels.
    Masks become 8-bit greyscale (white = repaint); images keep an alpha channel only when one
    pixel at least is not opaque (that is an inpaint area).
    """
    limit = settings.GENERATION["INPUT_MAX_BYTES"]
    if len(data) > limit:
        raise InputRefused(f"The image is larger than {limit} bytes.", status=413)
    max_pixels = settings.GENERATION["MAX_PIXELS"]
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header: checked before any pixel is decoded
            if width * height > max_pixels:
                raise InputRefused(f"The image has {width} × {height} pixels; at most {max_pixels} are allowed.")
            image.seek(0)  # animations: the first frame
            image.load()
            image = ImageOps.exif_transpose(image)
            converted = _convert(image, kind)
    except InputRefused:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        raise InputRefused(f"Not a readable image ({type(exc).__name__}).") from exc
    has_transparency = converted.mode == "RGBA"
    out = io.BytesIO()
    converted.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue(), converted.width, converted.height, has_transparency


def _convert(image, kind):
    if kind == InputImage.Kind.MASK:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # a mask painted on transparency: painted (opaque) pixels are the area to repaint
            rgba = image.convert("RGBA")
            alpha = rgba.getchannel("A")
            grey = rgba.convert("L")
            return Image.composite(grey, Image.new("L", rgba.size, 0), alpha)
        return image.convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            return rgba
        return rgba.convert("RGB")
    return image.convert("RGB")


def prepare_bytes(data, *, kind=InputImage.Kind.IMAGE, user=None, source=""):
    """Check and normalise ``data``; reuse the owner's stored copy of the same content if any."""
    png, width, height, has_transparency = normalise(data, kind=kind)
    sha256 = hashlib.sha256(png).hexdigest()
    record = (InputImage.objects.filter(user=user, kind=kind, sha256=sha256).first()
              if user is not None and getattr(user, "pk", None) else None)
    if record is not None:
        return PreparedInput(record.id, kind, sha256, record.width, record.height, record.has_transparency,
                             record=record, source=source)
    return PreparedInput(uuid.uuid4(), kind, sha256, width, height, has_transparency, png=png, source=source)


# --- the three sources ----------------------------------------------------------------------------------


def prepare_reference(raw, *, user, is_mask=False):
    """An input id of ``user``'s, or ``{"request": id, "index": n}`` naming one of their own finished
    images. Another user's id is refused exactly like an unknown one."""
    kind = InputImage.Kind.MASK if is_mask else InputImage.Kind.IMAGE
    if isinstance(raw, dict):
        return _prepare_from_result(raw, user=user, kind=kind)
    if not isinstance(raw, str):
        raise InputRefused("Expected an input id or {\"request\": id, \"index\": n}.")
    try:
        input_id = uuid.UUID(raw)
    except ValueError:
        raise InputRefused("No such input image.") from None
    record = InputImage.objects.filter(pk=input_id, user=user).first() if user is not None else None
    if record is None:
        raise InputRefused("No such input image.")
    return PreparedInput(record.id, record.kind, record.sha256, record.width, record.height,
                         record.has_transparency, record=record)


def _prepare_from_result(raw, *, user, kind):
    from generation.storage import open_stored

    if set(raw) != {"request", "index"} or not isinstance(raw.get("index"), int) or isinstance(raw["index"], bool):
        raise InputRefused("Expected {\"request\": <request id>, \"index\": <image number>}.")
    try:
        request_id = uuid.UUID(str(raw["request"]))
    except ValueError:
        raise InputRefused("No such image.") from None
    # owner only, even for staff: an input becomes the caller's own file
    source = GenerationRequest.objects.filter(pk=request_id, user=user, status=Status.COMPLETED).only(
        "id", "outputs").first() if user is not None else None
    index = raw["index"]
    if source is None or not 0 <= index < len(source.outputs or []):
        raise InputRefused("No such image.")
    limit = settings.GENERATION["INPUT_MAX_BYTES"]
    try:
        with open_stored(source.outputs[index]) as handle:
            data = read_capped(handle, limit=limit)
    except OSError as exc:
        raise InputRefused("That image is no longer stored.") from exc
    return prepare_bytes(data, kind=kind, user=user, source=f"request {source.pk} image {index}")


def prepare_from_url(url, *, user, is_mask=False):
    """Fetch an http(s) URL under the webhook address rules (:mod:`generation.netguard`: public
    addresses only, the connection pinned to the checked address, no redirects), with
    ``INPUT_MAX_BYTES`` (413) and ``INPUT_URL_TIMEOUT`` caps."""
    from generation import netguard

    kind = InputImage.Kind.MASK if is_mask else InputImage.Kind.IMAGE
    if not isinstance(url, str):
        raise InputRefused("Not a valid string.")
    limits = settings.GENERATION
    try:
        checked = netguard.check_public_url(url, allow_private=limits["WEBHOOK_ALLOW_PRIVATE"])
        with netguard.open_get(checked, max_bytes=limits["INPUT_MAX_BYTES"], timeout=limits["INPUT_URL_TIMEOUT"],
                               total_seconds=limits["INPUT_URL_TIMEOUT"]) as response:
            if response.status != 200:
                raise InputRefused(f"The URL answered HTTP {response.status}.")
            data = response.read()
    except netguard.UrlRefused as exc:
        raise InputRefused(str(exc)) from exc
    except netguard.ResponseTooLarge as exc:
        raise InputRefused(f"The image is larger than {limits['INPUT_MAX_BYTES']} bytes.", status=413) from exc
    except netguard.FetchTimedOut as exc:
        raise InputRefused(f"The URL took longer than {limits['INPUT_URL_TIMEOUT']:g} s to answer.") from exc
    except netguard.FetchFailed as exc:
        raise InputRefused(f"The URL could not be fetched ({exc}).") from exc
    return prepare_bytes(data, kind=kind, user=user, source=url[:2000])


# --- storing ------------------------------------------------------------------------------------------


def store_prepared(prepared, *, user):
    """Store a :class:`PreparedInput` (idempotent; a concurrent store of the same content wins
    harmlessly) and return its :class:`InputImage`."""
    if prepared.record is not None:
        return prepared.record
    name = input_path(user.pk, prepared.kind, prepared.sha256)
    if not default_storage.exists(name):
        saved = default_storage.save(name, ContentFile(prepared.png))
        if saved != name:  # a concurrent store of the same bytes got the name first
            default_storage.delete(saved)
    try:
        with transaction.atomic():
            record, _ = InputImage.objects.get_or_create(
                user=user, kind=prepared.kind, sha256=prepared.sha256,
                defaults={"id": prepared.id, "path": name, "width": prepared.width, "height": prepared.height,
                          "size_bytes": len(prepared.png), "has_transparency": prepared.has_transparency,
                          "source": prepared.source})
    except IntegrityError:
        record = InputImage.objects.get(user=user, kind=prepared.kind, sha256=prepared.sha256)
    prepared.record, prepared.id = record, record.id
    return record


def store_upload(*, user, upload, kind=InputImage.Kind.IMAGE):
    """Check and store one uploaded file object; return ``(record, created)``."""
    limit = settings.GENERATION["INPUT_MAX_BYTES"]
    if getattr(upload, "size", None) is not None and upload.size > limit:
        raise InputRefused(f"The image is larger than {limit} bytes.", status=413)
    prepared = prepare_bytes(read_capped(upload, limit=limit), kind=kind, user=user,
                             source=f"upload {getattr(upload, 'name', '')}"[:2000])
    created = prepared.record is None
    return store_prepared(prepared, user=user), created


def upload_input(*, user, image, mask=None):
    """``POST /inputs/``: store an uploaded image (and optionally its mask, same size).

    ``image``/``mask`` are file objects. Returns ``(image record, mask record or None, created)``.
    Raises :class:`InputRefused` with the field at fault in ``.field``.
    """
    limit = settings.GENERATION["INPUT_MAX_BYTES"]
    prepared = {}
    for field, upload, kind in (("image", image, InputImage.Kind.IMAGE), ("mask", mask, InputImage.Kind.MASK)):
        if upload is None:
            continue
        try:
            if getattr(upload, "size", None) is not None and upload.size > limit:
                raise InputRefused(f"The image is larger than {limit} bytes.", status=413)
            prepared[field] = prepare_bytes(read_capped(upload, limit=limit), kind=kind, user=user,
                                            source=f"upload {getattr(upload, 'name', '')}"[:2000])
        except InputRefused as exc:
            exc.field = field
            raise
    if "mask" in prepared and (prepared["mask"].width, prepared["mask"].height) != (prepared["image"].width,
                                                                                     prepared["image"].height):
        refused = InputRefused(f"The mask is {prepared['mask'].width} × {prepared['mask'].height}; it must be the "
                               f"image's size, {prepared['image'].width} × {prepared['image'].height}.")
        refused.field = "mask"
        raise refused
    created = prepared["image"].record is None
    image_record = store_prepared(prepared["image"], user=user)
    mask_record = store_prepared(prepared["mask"], user=user) if "mask" in prepared else None
    return image_record, mask_record, created


def delete_input(*, record):
    """Delete an input and its file, unless a request that has not finished names it."""
    if record.requests.filter(status__in=list(ACTIVE)).exists():
        raise InputInUse("An unfinished request uses this image; cancel it or wait for it to finish.")
    name = record.path
    record.delete()
    if not InputImage.objects.filter(path=name).exists():
        default_storage.delete(name)


def inputs_of(user):
    return InputImage.objects.filter(user=user)


def read_input(record):
    """The stored PNG bytes of an input (what is uploaded to a backend)."""
    with default_storage.open(record.path, "rb") as handle:
        return handle.read()
