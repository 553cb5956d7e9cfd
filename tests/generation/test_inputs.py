"""Input images: decoding is the check, EXIF orientation applied, metadata dropped, stored once per
owner and content; nothing is stored for bad bytes."""

import io

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from generation import inputs
from generation.models import InputImage
from tests.plugins.generation_rows import image_bytes

pytestmark = pytest.mark.django_db


def upload(data, name="x.png"):
    return SimpleUploadedFile(name, data, content_type="image/png")


def test_an_upload_is_stored_once_as_a_normalised_png(user, other_user):
    jpeg = image_bytes(40, 30, fmt="JPEG")
    first, created = inputs.store_upload(user=user, upload=upload(jpeg, "photo.jpg"))
    again, created_again = inputs.store_upload(user=user, upload=upload(jpeg, "copy.jpg"))
    assert created and not created_again and again.pk == first.pk
    assert first.path == f"inputs/{user.pk}/{first.sha256}.png" and default_storage.exists(first.path)
    with default_storage.open(first.path) as handle, Image.open(handle) as stored:
        assert stored.format == "PNG" and stored.size == (40, 30) and stored.mode == "RGB"
    theirs, _ = inputs.store_upload(user=other_user, upload=upload(jpeg))
    assert theirs.pk != first.pk and theirs.path.startswith(f"inputs/{other_user.pk}/")


def test_exif_orientation_is_applied_and_metadata_dropped(user):
    image = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    exif[0x010F] = "SecretCamera"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    record, _ = inputs.store_upload(user=user, upload=upload(buffer.getvalue()))
    assert (record.width, record.height) == (20, 60)
    with default_storage.open(record.path) as handle:
        data = handle.read()
    assert b"SecretCamera" not in data and b"Exif" not in data


def test_transparency_is_kept_only_when_some_pixel_is_not_opaque(user):
    holed, _ = inputs.store_upload(user=user, upload=upload(image_bytes(32, 32, transparent_box=(0, 0, 8, 8))))
    opaque, _ = inputs.store_upload(user=user, upload=upload(image_bytes(32, 32, mode="RGBA")))
    assert holed.has_transparency and not opaque.has_transparency


def test_a_mask_painted_on_transparency_becomes_white_where_painted(user):
    painted = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    painted.paste((255, 255, 255, 255), (0, 0, 8, 16))
    buffer = io.BytesIO()
    painted.save(buffer, format="PNG")
    record, _ = inputs.store_upload(user=user, upload=upload(buffer.getvalue()), kind=InputImage.Kind.MASK)
    with default_storage.open(record.path) as handle, Image.open(handle) as mask:
        assert mask.mode == "L" and mask.getpixel((2, 2)) == 255 and mask.getpixel((12, 2)) == 0
    assert record.path.rsplit("/", 1)[1].startswith("mask-")


@pytest.mark.parametrize("data, message", [
    (b"not an image at all", "Not a readable image"),
    (image_bytes(64, 64)[:60], "Not a readable image"),  # truncated
    (b"GIF89a" + b"\0" * 10, "Not a readable image"),
])
def test_bad_bytes_are_refused_and_nothing_is_stored(user, data, message):
    with pytest.raises(inputs.InputRefused) as caught:
        inputs.store_upload(user=user, upload=upload(data))
    assert message in str(caught.value) and caught.value.status == 400
    assert not InputImage.objects.exists()


def test_limits_on_pixels_and_bytes(user, settings):
    settings.GENERATION = {**settings.GENERATION, "MAX_PIXELS": 100 * 100, "INPUT_MAX_BYTES": 10_000_000}
    with pytest.raises(inputs.InputRefused) as caught:
        inputs.store_upload(user=user, upload=upload(image_bytes(101, 100)))
    assert "pixels" in str(caught.value) and caught.value.status == 400
    settings.GENERATION = {**settings.GENERATION, "MAX_PIXELS": 4096 * 4096, "INPUT_MAX_BYTES": 100}
    with pytest.raises(inputs.InputRefused) as caught:
        inputs.store_upload(user=user, upload=upload(image_bytes(64, 64)))
    assert caught.value.status == 413
    assert not InputImage.objects.exists()


def test_an_input_in_use_cannot_be_deleted_until_its_request_finishes(user, stored_input, make_generation):
    record = stored_input(user)
    request = make_generation(user, "queued")
    request.inputs.add(record)
    with pytest.raises(inputs.InputInUse):
        inputs.delete_input(record=record)
    type(request).objects.filter(pk=request.pk).update(status="completed")
    inputs.delete_input(record=record)
    assert not default_storage.exists(record.path) and not InputImage.objects.exists()
