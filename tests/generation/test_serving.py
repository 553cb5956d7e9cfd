"""Image and thumbnail serving on real stored files: owner check, caching headers, 304, Range, names,
path traversal and symlink escapes, and the S3 redirect to a signed URL (moto on loopback)."""

import os

import pytest
import requests
from django.utils.http import http_date

from generation.models import GenerationRequest
from generation.states import Status


def image_url(request, index=0, size=None):
    base = f"/api/v1/comfyui/{request.pk}/images/{index}/"
    return f"{base}thumbnail/{size}/" if size else base


def _content(response):
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.fixture
def done(user, make_generation):
    return make_generation(user, Status.COMPLETED, images=2)


def test_full_image_with_caching_headers(api, done, _media_root):
    response = api.get(image_url(done, 1))
    assert response.status_code == 200
    body = _content(response)
    assert body == (_media_root / done.outputs[1]).read_bytes() and body.startswith(b"\x89PNG")
    assert response["Content-Type"] == "image/png"
    assert response["Content-Length"] == str(len(body))
    assert response["Cache-Control"] == "private, max-age=3600"
    assert response["ETag"].startswith('"') and response["Last-Modified"]
    assert response["Accept-Ranges"] == "bytes"
    assert response["Content-Disposition"] == f'inline; filename="genonaut-{done.pk.hex[:8]}-1.png"'


def test_download_is_an_attachment_with_a_sensible_name(api, done):
    response = api.get(image_url(done), {"download": "1"})
    assert response["Content-Disposition"] == f'attachment; filename="genonaut-{done.pk.hex[:8]}-0.png"'
    thumb = api.get(image_url(done, 0, "small"), {"download": "true"})
    assert thumb["Content-Disposition"] == f'attachment; filename="genonaut-{done.pk.hex[:8]}-0-small.webp"'


def test_thumbnails_are_served_with_their_type(api, done, _media_root):
    for size in ("small", "medium", "large"):
        response = api.get(image_url(done, 1, size))
        assert response.status_code == 200 and response["Content-Type"] == "image/webp"
        assert _content(response) == (_media_root / done.thumbnails[1][size]).read_bytes()
    assert api.get(image_url(done, 0, "huge")).status_code == 404


def test_if_none_match_and_if_modified_since_answer_304(api, done):
    first = api.get(image_url(done))
    etag, last_modified = first["ETag"], first["Last-Modified"]
    again = api.get(image_url(done), HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again.content == b""
    assert again["ETag"] == etag and again["Cache-Control"] == "private, max-age=3600"
    assert api.get(image_url(done), HTTP_IF_NONE_MATCH=f'"other", W/{etag}').status_code == 304
    assert api.get(image_url(done), HTTP_IF_NONE_MATCH='"other"').status_code == 200
    assert api.get(image_url(done), HTTP_IF_MODIFIED_SINCE=last_modified).status_code == 304
    assert api.get(image_url(done), HTTP_IF_MODIFIED_SINCE=http_date(0)).status_code == 200
    # If-None-Match wins over If-Modified-Since
    assert api.get(image_url(done), HTTP_IF_NONE_MATCH='"other"',
                   HTTP_IF_MODIFIED_SINCE=last_modified).status_code == 200


def test_etag_changes_when_the_file_changes(api, done, _media_root):
    before = api.get(image_url(done))["ETag"]
    path = _media_root / done.outputs[0]
    path.write_bytes(path.read_bytes() + b"\0")
    os.utime(path, ns=(1, 2_000_000_000_000_000_000))
    assert api.get(image_url(done))["ETag"] != before
    assert api.get(image_url(done), HTTP_IF_NONE_MATCH=before).status_code == 200


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-9", 0, 9), ("bytes=10-", 10, None), ("bytes=-16", None, None), ("bytes=5-5", 5, 5),
    ("bytes=3-999999", 3, None),
])
def test_range_requests_answer_206(api, done, _media_root, header, start, end):
    data = (_media_root / done.outputs[0]).read_bytes()
    size = len(data)
    if start is None:  # suffix
        start, end = size - 16, size - 1
    end = size - 1 if end is None else end
    response = api.get(image_url(done), HTTP_RANGE=header)
    assert response.status_code == 206
    assert _content(response) == data[start:end + 1]
    assert response["Content-Range"] == f"bytes {start}-{end}/{size}"
    assert response["Content-Length"] == str(end - start + 1)
    assert response["Content-Type"] == "image/png" and response["ETag"]


def test_unsatisfiable_range_is_416(api, done, _media_root):
    size = (_media_root / done.outputs[0]).stat().st_size
    for header in (f"bytes={size}-", "bytes=-0", f"bytes={size + 100}-{size + 200}"):
        response = api.get(image_url(done), HTTP_RANGE=header)
        assert response.status_code == 416, header
        assert response["Content-Range"] == f"bytes */{size}"
        assert response.json()["error"]["code"] == "range_not_satisfiable"


@pytest.mark.parametrize("header", ["bytes=0-1,5-9", "items=0-5", "bytes=9-2", "bytes=abc", "bytes=" + "9" * 50 + "-"])
def test_unusable_range_headers_send_the_whole_file(api, done, header):
    response = api.get(image_url(done), HTTP_RANGE=header)
    assert response.status_code == 200 and "Content-Range" not in response


def test_if_range_with_a_stale_validator_sends_everything(api, done):
    etag = api.get(image_url(done))["ETag"]
    assert api.get(image_url(done), HTTP_RANGE="bytes=0-3", HTTP_IF_RANGE=etag).status_code == 206
    assert api.get(image_url(done), HTTP_RANGE="bytes=0-3", HTTP_IF_RANGE='"stale"').status_code == 200


def test_other_users_images_are_404_and_staff_may_see_them(client_for, done, other_user, staff_user):
    for url in (image_url(done), image_url(done, 0, "small")):
        assert client_for(other_user).get(url).status_code == 404
        assert client_for(staff_user).get(url).status_code == 200
        assert client_for(None).get(url).status_code == 401


def test_missing_index_missing_file_and_unfinished_requests_are_404(api, user, done, make_generation, _media_root):
    assert api.get(image_url(done, 2)).status_code == 404
    os.remove(_media_root / done.outputs[1])
    assert api.get(image_url(done, 1)).status_code == 404
    running = make_generation(user, Status.RUNNING)
    assert api.get(image_url(running)).status_code == 404


def test_head_gives_headers_without_body(api, done):
    response = api.head(image_url(done))
    assert response.status_code == 200 and response["ETag"] and response["Content-Length"]


# --- nothing outside the storage root --------------------------------------------------------------


@pytest.mark.parametrize("stored", [
    "../../../../etc/passwd", "/etc/passwd", "generations/../../secret.png", "generations/%2e%2e/x.png",
    "generations\\..\\x.png", "generations/./x.png", "generations//x.png", "other/x.png",
])  # (NUL cannot even be stored in a jsonb column; is_safe_name refuses it too)
def test_tampered_stored_paths_are_refused(api, done, stored, tmp_path):
    (tmp_path / "secret.png").write_bytes(b"secret")
    GenerationRequest.objects.filter(pk=done.pk).update(outputs=[stored],
                                                        thumbnails=[{"small": stored}])
    assert api.get(image_url(done)).status_code == 404
    assert api.get(image_url(done, 0, "small")).status_code == 404


def test_a_symlink_escaping_the_root_is_refused(api, done, _media_root, tmp_path):
    secret = tmp_path / "outside.png"
    secret.write_bytes(b"\x89PNG secret outside the media root")
    link = _media_root / os.path.dirname(done.outputs[0]) / "escape.png"
    link.symlink_to(secret)
    GenerationRequest.objects.filter(pk=done.pk).update(outputs=[str(link.relative_to(_media_root))])
    assert api.get(image_url(done)).status_code == 404


def test_a_symlinked_directory_escaping_the_root_is_refused(api, done, _media_root, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.png").write_bytes(b"\x89PNG elsewhere")
    (_media_root / "generations" / "sneaky").symlink_to(outside, target_is_directory=True)
    GenerationRequest.objects.filter(pk=done.pk).update(outputs=["generations/sneaky/x.png"])
    assert api.get(image_url(done)).status_code == 404


def test_a_symlink_inside_the_root_is_served(api, done, _media_root):
    link = _media_root / os.path.dirname(done.outputs[0]) / "alias.png"
    link.symlink_to(_media_root / done.outputs[0])
    GenerationRequest.objects.filter(pk=done.pk).update(outputs=[str(link.relative_to(_media_root))])
    assert api.get(image_url(done)).status_code == 200


@pytest.mark.parametrize("path", ["images/..%2f..%2f/", "images/-1/", "images/0/thumbnail/..%2fsmall/",
                                  "images/%2e%2e/", "images/0%00/", "images/99999999999/"])
def test_client_supplied_path_pieces_never_reach_storage(api, done, path):
    response = api.get(f"/api/v1/comfyui/{done.pk}/{path}")
    assert response.status_code == 404


# --- S3: redirect to a short-lived signed URL ---------------------------------------------------------


@pytest.mark.integration
def test_s3_storage_redirects_to_a_signed_url(api, user, make_generation, s3_storage):
    done = make_generation(user, Status.COMPLETED, images=1)
    response = api.get(image_url(done), {"download": "1"})
    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith(f"{s3_storage['endpoint']}/{s3_storage['bucket']}/generations/")
    assert "Signature=" in location or "X-Amz-Signature=" in location
    assert "Expires=" in location or "X-Amz-Expires=120" in location
    assert response["Cache-Control"] == "private, no-store"
    fetched = requests.get(location, timeout=10)
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    assert "attachment" in fetched.headers.get("Content-Disposition", "")
    unsigned = requests.get(location.split("?", 1)[0], timeout=10)
    assert unsigned.status_code == 403 or unsigned.content != fetched.content
    thumb = api.get(image_url(done, 0, "small"))
    assert thumb.status_code == 302 and "/thumbs/" in thumb["Location"]


@pytest.mark.integration
def test_s3_storage_still_checks_the_owner(client_for, user, other_user, make_generation, s3_storage):
    done = make_generation(user, Status.COMPLETED, images=1)
    assert client_for(other_user).get(image_url(done)).status_code == 404
