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
from generation.throttling import RateCounter
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
            results.append((response.status_code, response.json()["id"], response.get("Idempotent-Replayed")))
        finally:
            connection.close()

    run_concurrently([submit] * 2)
    assert [code for code, _, _ in results] == [201, 201]
    assert sorted(str(replayed) for _, _, replayed in results) == ["None", "true"]  # the one that waited: a replay
    assert len({request_id for _, request_id, _ in results}) == 1
    assert GenerationRequest.objects.filter(user=user).count() == 1
    # committed submits are queued (pending → queued on commit)
    assert GenerationRequest.objects.get(user=user).status == Status.QUEUED


def test_the_submit_throttle_is_counted_in_the_database_not_the_cache(api, valid_params, monkeypatch):
    """Counts survive the cache being emptied (each web process has its own cache without Redis)."""
    monkeypatch.setattr(SubmitThrottle, "THROTTLE_RATES", {"submit": "2/min"})
    codes = []
    for _ in range(3):
        cache.clear()
        codes.append(api.post(GENERATE, valid_params, format="json").status_code)
    assert codes == [201, 201, 429]
    assert RateCounter.objects.get(scope="submit").hits == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_submits_never_pass_the_throttle(user, valid_params, monkeypatch):
    monkeypatch.setattr(SubmitThrottle, "THROTTLE_RATES", {"submit": "3/min"})
    token = Token.objects.create(user=user).key
    barrier = threading.Barrier(6)
    codes = []

    def submit():
        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
            barrier.wait(timeout=10)
            codes.append(client.post(GENERATE, valid_params, format="json").status_code)
        finally:
            connection.close()

    run_concurrently([submit] * 6)
    assert sorted(codes) == [201, 201, 201, 429, 429, 429]
