"""GET /api/v1/: public links to every part of the API, each of which answers (not the JSON 404)."""

import pytest
from rest_framework.authtoken.models import Token


def test_root_lists_absolute_links_without_authentication(client):
    response = client.get("/api/v1/")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "Genonaut API" and body["version"] == "v1"
    links = body["links"]
    assert links["token"] == "http://testserver/api/v1/auth/token/"
    assert links["generate"] == "http://testserver/api/v1/comfyui/generate/"
    assert links["requests"] == "http://testserver/api/v1/comfyui/"
    assert links["schema"] == "http://testserver/api/schema/"


@pytest.mark.django_db
def test_every_link_leads_to_an_endpoint(client, staff_user):
    token = Token.objects.create(user=staff_user).key
    for name, url in client.get("/api/v1/").json()["links"].items():
        method = client.post if name in ("token", "generate") else client.get
        response = method(url.removeprefix("http://testserver"), HTTP_AUTHORIZATION=f"Token {token}",
                          content_type="application/json", data={} if method == client.post else None)
        assert response.status_code in (200, 400), (name, response.status_code)  # 400: an empty body


def test_the_root_stays_public_while_what_it_links_to_does_not(client, db):
    assert client.get("/api/v1/comfyui/").status_code == 401
    assert client.get("/api/v1/").status_code == 200


@pytest.mark.django_db
def test_routes_have_no_format_suffix_twins(client, user):
    """``…/images/0.json`` once reached the image action with a ``format`` argument it does not take (500)."""
    client.force_login(user)
    response = client.get("/api/v1/comfyui/0b7c1e36-8a43-4d2b-9c1a-2f1f6b7c1e36/images/0.json")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/comfyui.json").status_code == 404
