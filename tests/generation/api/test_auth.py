"""Authentication (session and token) and the authorization matrix for every route."""

import uuid
from urllib.parse import urlencode

import pytest
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from generation.api.throttles import TokenThrottle
from generation.models import WebhookSecret
from generation.states import Status

TOKEN = "/api/v1/auth/token/"


def test_token_for_username_and_password(client, user):
    response = client.post(TOKEN, {"username": "alice", "password": user.raw_password}, content_type="application/json")
    assert response.status_code == 200
    token = response.json()["token"]
    assert Token.objects.get(user=user).key == token
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get("/api/v1/comfyui/").status_code == 200
    # the same token again, also from a form body (curl -d)
    again = client.post(TOKEN, urlencode({"username": "alice", "password": user.raw_password}),
                        content_type="application/x-www-form-urlencoded")
    assert again.status_code == 200 and again.json()["token"] == token


@pytest.mark.parametrize("body", [{"username": "alice", "password": "wrong"}, {"username": "nobody", "password": "x"},
                                  {"username": "alice"}, {}])
def test_token_refused(client, user, body):
    response = client.post(TOKEN, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid" and response.json()["error"]["fields"]


def test_token_for_an_inactive_user_is_refused(client, user):
    user.is_active = False
    user.save()
    response = client.post(TOKEN, {"username": "alice", "password": user.raw_password}, content_type="application/json")
    assert response.status_code == 400


def test_token_endpoint_is_throttled(client, user, monkeypatch):
    cache.clear()
    monkeypatch.setattr(TokenThrottle, "THROTTLE_RATES", {"auth": "3/min"})
    codes = [client.post(TOKEN, {"username": "alice", "password": "wrong"}, content_type="application/json").status_code
             for _ in range(4)]
    assert codes == [400, 400, 400, 429]
    cache.clear()


def test_token_endpoint_is_json_or_form_only(client, user):
    response = client.post(TOKEN, {"username": "alice", "password": user.raw_password})  # multipart
    assert response.status_code == 415


def test_session_auth_works_for_the_browser(client, user, make_generation):
    mine = make_generation(user)
    client.force_login(user)
    response = client.get(f"/api/v1/comfyui/{mine.pk}/")
    assert response.status_code == 200
    html = client.get("/api/v1/comfyui/", HTTP_ACCEPT="text/html")
    assert html.status_code == 200 and b"Generation" in html.content  # the browsable API


def test_session_writes_need_csrf(user, valid_params):
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(user)
    response = browser.post("/api/v1/comfyui/generate/", valid_params, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_webhook_secret_read_and_rotate(api, user, client_for, other_user):
    first = api.get("/api/v1/auth/webhook-secret/").json()["secret"]
    assert len(first) == 64 and api.get("/api/v1/auth/webhook-secret/").json()["secret"] == first
    rotated = api.post("/api/v1/auth/webhook-secret/").json()["secret"]
    assert rotated != first and WebhookSecret.objects.get(user=user).secret == rotated
    assert client_for(other_user).get("/api/v1/auth/webhook-secret/").json()["secret"] != rotated


# --- the matrix: anonymous, owner, other user, staff × every route ---------------------------------


def _routes(request_id, valid_params):
    base = f"/api/v1/comfyui/{request_id}"
    return {
        "list": ("get", "/api/v1/comfyui/", None),
        "detail": ("get", f"{base}/", None),
        "generate": ("post", "/api/v1/comfyui/generate/", valid_params),
        "cancel": ("post", f"{base}/cancel/", None),
        "regenerate": ("post", f"{base}/regenerate/", {"same_seed": True}),
        "delete": ("delete", f"{base}/", None),
        "image": ("get", f"{base}/images/0/", None),
        "thumbnail": ("get", f"{base}/images/0/thumbnail/small/", None),
        "models": ("get", "/api/v1/comfyui/models/", None),
        "backends": ("get", "/api/v1/comfyui/backends/", None),
        "webhook-secret": ("get", "/api/v1/auth/webhook-secret/", None),
        "webhook-rotate": ("post", "/api/v1/auth/webhook-secret/", None),
    }


# who → {route: expected status}; a request id of someone else's answers 404 exactly like an unknown one
EXPECTED = {
    "anonymous": dict.fromkeys(["list", "detail", "generate", "cancel", "regenerate", "delete", "image", "thumbnail",
                                "models", "backends", "webhook-secret", "webhook-rotate"], 401),
    "owner": {"list": 200, "detail": 200, "generate": 201, "cancel": 200, "regenerate": 201, "delete": 200,
              "image": 200, "thumbnail": 200, "models": 200, "backends": 403, "webhook-secret": 200,
              "webhook-rotate": 200},
    "other": {"list": 200, "detail": 404, "generate": 201, "cancel": 404, "regenerate": 404, "delete": 404,
              "image": 404, "thumbnail": 404, "models": 200, "backends": 403, "webhook-secret": 200,
              "webhook-rotate": 200},
    "staff": {"list": 200, "detail": 200, "generate": 201, "cancel": 200, "regenerate": 201, "delete": 200,
              "image": 200, "thumbnail": 200, "models": 200, "backends": 200, "webhook-secret": 200,
              "webhook-rotate": 200},
}


@pytest.mark.parametrize("who", list(EXPECTED))
@pytest.mark.parametrize("route", list(EXPECTED["owner"]))
def test_authorization_matrix(who, route, client_for, user, other_user, staff_user, make_generation, valid_params,
                              monkeypatch):
    monkeypatch.setattr("generation.backends.backend_overview", lambda **kwargs: [])
    # an active request with images, so cancel and delete (→ cancel) both succeed for those allowed
    target = make_generation(user, Status.RUNNING, images=1, comfyui_prompt_id=str(uuid.uuid4()))
    caller = {"anonymous": None, "owner": user, "other": other_user, "staff": staff_user}[who]
    method, path, body = _routes(target.pk, valid_params)[route]
    response = getattr(client_for(caller), method)(path, body, format="json")
    assert response.status_code == EXPECTED[who][route], (who, route, response.content[:300])
    if response.status_code >= 400:
        assert response.json()["error"]["code"]


def test_other_users_list_never_shows_my_requests(client_for, user, other_user, make_generation):
    make_generation(user)
    assert client_for(other_user).get("/api/v1/comfyui/").json()["results"] == []


def test_browsable_api_pages_render_for_a_logged_in_user(client, user, make_generation):
    done = make_generation(user, Status.COMPLETED, images=1)
    client.force_login(user)
    for path, status in [(f"/api/v1/comfyui/{done.pk}/", 200), ("/api/v1/comfyui/models/", 200),
                         ("/api/v1/comfyui/generate/", 405), (f"/api/v1/comfyui/{done.pk}/regenerate/", 405),
                         ("/api/v1/auth/webhook-secret/", 200)]:
        response = client.get(path, HTTP_ACCEPT="text/html")
        assert response.status_code == status, path
        assert response["Content-Type"].startswith("text/html"), path
