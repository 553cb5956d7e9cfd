"""/healthz and /readyz: ready once the database answers and a configured backend has answered;
the broker and later backend outages are reported, not gating."""

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from generation.models import BackendState
from genonaut import health

DEAD = "http://127.0.0.1:9"  # nothing listens on port 9


@pytest.fixture(autouse=True)
def _fresh_health_state(monkeypatch):
    health._redis_client.cache_clear()
    monkeypatch.setattr(health, "_next_probe_at", 0.0)
    yield
    health._redis_client.cache_clear()


def test_liveness(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readiness_reports_orm_broker_and_backends_by_position(client, settings):
    settings.Q_CLUSTER = {"orm": "default"}
    settings.COMFYUI_BACKENDS = [{"url": "http://a:1", "capacity": 2}, {"url": "http://b:2", "capacity": 2},
                                 {"url": "http://c:3", "capacity": 2}]
    BackendState.objects.create(url="http://a:1", is_healthy=False, last_ok_at=timezone.now())
    BackendState.objects.create(url="http://b:2", is_healthy=True, last_ok_at=timezone.now())
    BackendState.objects.create(url="http://gone:3", is_healthy=False)  # no longer configured: not counted
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok (orm)",
                               "backends": {"total": 3, "healthy": 2, "answered": True, "answering": [2],
                                            "not_answering": [1, 3]}}
    assert "http://" not in response.content.decode()  # public endpoint: positions, never URLs


@pytest.mark.django_db
def test_readiness_stays_ready_when_every_backend_that_answered_is_down_now(client, settings):
    """Once the deployment worked, a backend outage is reported, not a reason to stop serving history."""
    settings.COMFYUI_BACKENDS = [{"url": DEAD, "capacity": 2}]
    BackendState.objects.create(url=DEAD, is_healthy=False, last_ok_at=timezone.now())
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["backends"]["answering"] == [] and response.json()["backends"]["not_answering"] == [1]


@pytest.mark.django_db
def test_readiness_is_503_without_a_configured_backend(client, settings):
    settings.COMFYUI_BACKENDS = []
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert "COMFYUI_URL" in response.json()["reason"]


@pytest.mark.django_db
def test_readiness_is_503_until_a_backend_answers_and_probes_at_a_bounded_rate(client, settings, monkeypatch):
    settings.COMFYUI_BACKENDS = [{"url": DEAD, "capacity": 2}, {"url": "http://127.0.0.1:7", "capacity": 1}]
    probed = []
    real_answers = health._answers
    monkeypatch.setattr(health, "_answers", lambda url: probed.append(url) or real_answers(url))
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["reason"].startswith("no configured ComfyUI backend has answered yet (0 of 2)")
    assert body["database"] == "ok"
    assert body["backends"] == {"total": 2, "healthy": 2, "answered": False, "answering": [],
                                "not_answering": [1, 2]}
    assert sorted(probed) == sorted([DEAD, "http://127.0.0.1:7"])
    assert client.get("/readyz").status_code == 503
    assert len(probed) == 2  # within PROBE_INTERVAL_SECONDS: no new probe, just the stored state
    assert not BackendState.objects.exclude(last_ok_at=None).exists()


@pytest.mark.integration
@pytest.mark.django_db
def test_readiness_probes_a_real_backend_and_records_its_answer(client, settings, simulator):
    settings.COMFYUI_BACKENDS = [{"url": DEAD, "capacity": 2}, {"url": simulator.url, "capacity": 2}]
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["backends"]["answering"] == [2]
    assert BackendState.objects.get(url=simulator.url).last_ok_at is not None
    assert BackendState.objects.get(url=DEAD).last_ok_at is None


@pytest.mark.django_db
def test_readiness_answers_from_the_stored_state_without_probing(client, settings, monkeypatch,
                                                                  django_assert_max_num_queries):
    settings.COMFYUI_BACKENDS = [{"url": DEAD, "capacity": 2}]
    BackendState.objects.create(url=DEAD, last_ok_at=timezone.now())
    monkeypatch.setattr(health, "_answers", lambda url: pytest.fail("probed although a backend had answered"))
    with django_assert_max_num_queries(2):  # SELECT 1, then the backends' state
        assert client.get("/readyz").status_code == 200


@pytest.mark.redis
@pytest.mark.django_db
def test_readiness_with_redis_up(client, settings):
    settings.Q_CLUSTER = {"redis": "redis://127.0.0.1:6379/13"}
    assert client.get("/readyz").json()["broker"] == "ok (redis)"


@pytest.mark.django_db
def test_readiness_stays_ready_when_the_broker_is_down(client, settings):
    settings.Q_CLUSTER = {"redis": "redis://127.0.0.1:9/0"}
    settings.COMFYUI_BACKENDS = [{"url": DEAD, "capacity": 2}]
    BackendState.objects.create(url=DEAD, last_ok_at=timezone.now())
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
