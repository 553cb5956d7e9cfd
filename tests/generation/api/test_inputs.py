"""POST/GET/DELETE /api/v1/comfyui/inputs/ and input image serving: owner only, errors name the field."""

import pytest
from django.urls import reverse

from generation.models import InputImage
from tests.plugins.generation_rows import image_bytes

pytestmark = pytest.mark.django_db
INPUTS = "/api/v1/comfyui/inputs/"


def post(api, **files):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return api.post(INPUTS, {name: SimpleUploadedFile(f"{name}.png", data, content_type="image/png")
                             for name, data in files.items()}, format="multipart")


def test_upload_answers_201_then_200_for_the_same_image(api):
    first = post(api, image=image_bytes(64, 48))
    assert first.status_code == 201, first.json()
    body = first.json()
    assert set(body) >= {"id", "width", "height", "sha256", "content_type", "url", "mask"}
    assert (body["width"], body["height"], body["content_type"], body["mask"]) == (64, 48, "image/png", None)
    assert first["Location"] == body["url"]
    again = post(api, image=image_bytes(64, 48))
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    assert [item["id"] for item in api.get(INPUTS).json()] == [body["id"]]


def test_upload_with_a_mask(api):
    response = post(api, image=image_bytes(64, 48), mask=image_bytes(64, 48, color=(255, 255, 255)))
    assert response.status_code == 201 and response.json()["mask"]["kind"] == "mask"
    wrong = post(api, image=image_bytes(64, 48), mask=image_bytes(32, 48))
    assert wrong.status_code == 400 and list(wrong.json()["error"]["fields"]) == ["mask"]


@pytest.mark.parametrize("data", [b"hello", image_bytes(64, 64)[:70]])
def test_bad_images_are_a_400_naming_the_field(api, data):
    response = post(api, image=data)
    assert response.status_code == 400 and list(response.json()["error"]["fields"]) == ["image"]
    assert not InputImage.objects.exists()


def test_too_many_bytes_is_413_and_too_many_pixels_400(api, settings):
    settings.GENERATION = {**settings.GENERATION, "INPUT_MAX_BYTES": 20}
    response = post(api, image=image_bytes(64, 64))
    assert response.status_code == 413 and "image" in response.json()["error"]["fields"]
    settings.GENERATION = {**settings.GENERATION, "INPUT_MAX_BYTES": 10_000_000, "MAX_PIXELS": 1000}
    response = post(api, image=image_bytes(64, 64))
    assert response.status_code == 400 and "pixels" in response.json()["error"]["fields"]["image"][0]


def test_no_image_part(api):
    response = api.post(INPUTS, {}, format="multipart")
    assert response.status_code == 400 and "image" in response.json()["error"]["fields"]


def test_another_users_input_is_404_everywhere(api, client_for, other_user):
    theirs = post(client_for(other_user), image=image_bytes()).json()
    for method, path in (("get", f"{INPUTS}{theirs['id']}/"), ("get", f"{INPUTS}{theirs['id']}/image/"),
                         ("delete", f"{INPUTS}{theirs['id']}/")):
        assert getattr(api, method)(path).status_code == 404
    assert InputImage.objects.filter(pk=theirs["id"]).exists()


def test_the_stored_image_is_served_to_its_owner(api):
    body = post(api, image=image_bytes(20, 10)).json()
    response = api.get(body["url"])
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert response["ETag"] and "private" in response["Cache-Control"]
    assert reverse("input-image", kwargs={"pk": body["id"]}) in body["url"]


def test_delete_refused_while_an_unfinished_request_uses_it(api, user, make_generation):
    body = post(api, image=image_bytes()).json()
    request = make_generation(user, "running")
    request.inputs.add(body["id"])
    assert api.delete(f"{INPUTS}{body['id']}/").status_code == 409
    type(request).objects.filter(pk=request.pk).update(status="failed", finished_at=request.created_at)
    assert api.delete(f"{INPUTS}{body['id']}/").status_code == 204
