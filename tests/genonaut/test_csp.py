"""The Content-Security-Policy header (in Chromium: tests/generation/browser/test_csp.py)."""

import pytest

from genonaut import csp


@pytest.mark.parametrize("path", ["/accounts/login/", "/api/v1/comfyui/", "/history/", "/no-such-page/", "/healthz"])
def test_every_response_carries_the_policy(client, db, path):
    policy = client.get(path)["Content-Security-Policy"]
    assert policy == ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; "
                      "form-action 'self'; frame-ancestors 'none'")


def test_images_served_from_s3_add_the_storage_origin(settings):
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {
        "bucket_name": "genonaut-images", "endpoint_url": "http://127.0.0.1:9000", "access_key": "k",
        "secret_key": "s", "region_name": "us-east-1"}}}
    assert csp.storage_origin() == "http://127.0.0.1:9000"  # a signed URL is made locally: no request
    assert "img-src 'self' data: http://127.0.0.1:9000;" in csp.policy(csp.storage_origin())


def test_local_storage_adds_nothing():
    assert csp.storage_origin() == "" and "img-src 'self' data:;" in csp.policy(csp.storage_origin())


def test_a_storage_that_cannot_sign_does_not_fail_pages(client, db, monkeypatch):
    def broken():
        raise RuntimeError("no credentials")

    monkeypatch.setattr(csp, "storage_origin", broken)
    response = client.get("/accounts/login/")
    assert response.status_code == 200 and response["Content-Security-Policy"].startswith("default-src 'self'")
