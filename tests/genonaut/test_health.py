"""/healthz and /readyz: readiness is 503 only without the database; broker and backends are reported."""

import pytest
from django.db import OperationalError, connection

from generation.models import BackendState
from genonaut import health


@pytest.fixture(autouse=True)
def _fresh_redis_client():
    health._redis_client.cache_clear()
    yield
    health._redis_client.cache_clear()


def test_liveness(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readiness_reports_orm_broker_and_backend_health(client, settings):
    settings.Q_CLUSTER = {"orm": "default"}
    settings.COMFYUI_BACKENDS = [{"url": "http://a:1", "capacity": 2}, {"url": "http://b:2", "capacity": 2}]
    BackendState.objects.create(url="http://a:1", is_healthy=False)
    BackendState.objects.create(url="http://gone:3", is_healthy=False)  # no longer configured: not counted
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok (orm)",
                               "backends": {"total": 2, "healthy": 1}}


@pytest.mark.redis
@pytest.mark.django_db
def test_readiness_with_redis_up(client, settings):
    settings.Q_CLUSTER = {"redis": "redis://127.0.0.1:6379/13"}
    assert client.get("/readyz").json()["broker"] == "ok (redis)"


@pytest.mark.django_db
def test_readiness_stays_ready_when_the_broker_is_down(client, settings):
    settings.Q_CLUSTER = {"redis": "redis://127.0.0.1:9/0"}  # nothing listens on port 9
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["broker"].startswith("error:")


@pytest.mark.django_db
def test_readiness_is_503_without_the_database(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(connection, "cursor", refuse)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert "server closed the connection" in response.json()["database"]
