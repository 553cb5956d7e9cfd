"""Per-user submit throttle, per-user active limit, and idempotent submits racing each other."""

import threading

import pytest
from django.core.cache import cache
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from generation.api.throttles import SubmitThrottle
from generation.models import GenerationRequest
from generation.states import Status
from tests.concurrency import run_concurrently

GENERATE = "/api/v1/comfyui/generate/"


@pytest.fixture
def fresh_cache():
    cache.clear()
    yield
    cache.clear()


def test_submit_throttle_answers_429_with_retry_after(api, valid_params, monkeypatch, fresh_cache, client_for,
                                                      other_user):
    monkeypatch.setattr(SubmitThrottle, "THROTTLE_RATES", {"submit": "2/min"})
    codes = [api.post(GENERATE, valid_params, format="json").status_code for _ in range(2)]
    throttled = api.post(GENERATE, valid_params, format="json")
    assert codes == [201, 201]
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "throttled"
    assert 1 <= int(throttled["Retry-After"]) <= 60
    # per user: someone else is not throttled, and reads are not throttled
    assert client_for(other_user).post(GENERATE, valid_params, format="json").status_code == 201
    assert api.get("/api/v1/comfyui/").status_code == 200


def test_regenerate_counts_against_the_submit_throttle(api, user, make_generation, monkeypatch, fresh_cache):
    monkeypatch.setattr(SubmitThrottle, "THROTTLE_RATES", {"submit": "1/min"})
    original = make_generation(user, Status.COMPLETED)
    assert api.post(f"/api/v1/comfyui/{original.pk}/regenerate/", {}, format="json").status_code == 201
    assert api.post(f"/api/v1/comfyui/{original.pk}/regenerate/", {}, format="json").status_code == 429


def test_active_limit_answers_429_with_retry_after(api, user, valid_params, settings, make_generation):
    settings.GENERATION = {**settings.GENERATION, "MAX_ACTIVE_PER_USER": 2}
    make_generation(user, Status.QUEUED)
    make_generation(user, Status.RUNNING)
    make_generation(user, Status.COMPLETED)  # finished ones do not count
    response = api.post(GENERATE, valid_params, format="json")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "too_many_active_requests"
    assert int(response["Retry-After"]) > 0
    assert GenerationRequest.objects.filter(user=user).count() == 3


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_submits_with_one_idempotency_key_store_one_request(user, valid_params):
    token = Token.objects.create(user=user).key
    barrier = threading.Barrier(2)
    results = []

    def submit():
        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
            barrier.wait(timeout=10)
            response = client.post(GENERATE, valid_params, format="json", HTTP_IDEMPOTENCY_KEY="same-key")
            results.append((response.status_code, response.json()["id"]))
        finally:
            connection.close()

    run_concurrently([submit] * 2)
    assert sorted(code for code, _ in results) == [200, 201]
    assert len({request_id for _, request_id in results}) == 1
    assert GenerationRequest.objects.filter(user=user).count() == 1
    # committed submits are queued (pending → queued on commit)
    assert GenerationRequest.objects.get(user=user).status == Status.QUEUED


def test_submit_goes_through_when_the_throttle_cache_is_down(api, valid_params, monkeypatch):
    """A Redis outage must not fail submits: the throttle fails open."""
    from django.core.cache.backends.redis import RedisCache

    down = RedisCache("redis://127.0.0.1:9/0", {})  # nothing listens on port 9
    monkeypatch.setattr(SubmitThrottle, "cache", down)
    monkeypatch.setattr(SubmitThrottle, "THROTTLE_RATES", {"submit": "1/min"})
    codes = [api.post(GENERATE, valid_params, format="json").status_code for _ in range(2)]
    assert codes == [201, 201]
