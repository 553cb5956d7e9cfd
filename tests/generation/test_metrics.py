"""/metrics: counters recorded at events (transitions, checkpoint loads, webhooks), the Prometheus text
rendered from the database, and who may read it."""

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import DatabaseError, connections
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from generation import lifecycle, metrics
from generation.comfyui import events as ev
from generation.models import BackendState, MetricCounter
from generation.states import Status
from tests.concurrency import run_concurrently

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-protocol"
B1, B2 = "http://127.0.0.1:9", "http://127.0.0.1:19"
TOKEN = "metrics-test-token-0123456789"


@pytest.fixture
def configured(settings):
    settings.COMFYUI_BACKENDS = [{"url": B1, "capacity": 2}, {"url": B2, "capacity": 3}]
    settings.METRICS_TOKEN = TOKEN


def scrape(client, **headers):
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content[:300]
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def samples(family, name=None):
    """``{(sample name, frozenset of labels): value}`` of a parsed family."""
    return {(s.name, frozenset(s.labels.items())): s.value for s in family.samples if name in (None, s.name)}


def value_of(family, name, **labels):
    return samples(family)[(name, frozenset(labels.items()))]


def bearer(token=TOKEN):
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


# --- recording --------------------------------------------------------------------------------------------

def test_counts_add_up_and_label_sets_are_separate():
    metrics.count("requeues", {"workflow": "txt2img"})
    metrics.count("requeues", {"workflow": "txt2img"}, by=2)
    metrics.count("requeues", {"workflow": "img2img"})
    rows = {row.labels: row.count for row in MetricCounter.objects.filter(name="requeues")}
    assert rows == {'{"workflow":"txt2img"}': 3, '{"workflow":"img2img"}': 1}


def test_observations_land_in_their_bucket_with_their_sum():
    for value in (0.05, 0.1, 0.3, 5000):
        metrics.observe("queue_wait_seconds", value, {"workflow": "txt2img"})
    rows = {json.loads(row.labels)["le"]: (row.count, row.total)
            for row in MetricCounter.objects.filter(name="queue_wait_seconds")}
    assert rows == {"0.1": (2, pytest.approx(0.15)), "0.5": (1, pytest.approx(0.3)), "+Inf": (1, 5000.0)}


@pytest.mark.django_db(transaction=True)
def test_concurrent_increments_are_all_kept():
    def bump():
        try:
            for _ in range(20):
                metrics.count("webhook_deliveries", {"outcome": "delivered"})
        finally:
            connections.close_all()

    run_concurrently([bump] * 4)
    assert MetricCounter.objects.get(name="webhook_deliveries").count == 80


def test_a_claim_observes_its_queue_wait(make_generation, user, django_capture_on_commit_callbacks):
    request = make_generation(user, Status.QUEUED, queued_at=timezone.now() - timedelta(seconds=7))
    with django_capture_on_commit_callbacks(execute=True):
        assert lifecycle.transition(request.pk, Status.RUNNING, expect={Status.QUEUED}, attempts=1, backend=B1)
    (row,) = MetricCounter.objects.filter(name="queue_wait_seconds")
    assert json.loads(row.labels) == {"workflow": "txt2img", "le": "10"} and 7 <= row.total < 8


def test_a_requeue_counts_and_a_submit_costs_no_query(make_generation, user, django_assert_num_queries,
                                                      django_capture_on_commit_callbacks):
    running = make_generation(user, Status.RUNNING)
    with django_capture_on_commit_callbacks(execute=True):
        assert lifecycle.transition(running.pk, Status.QUEUED, expect={Status.RUNNING},
                                    error_detail={"retry_reason": "Backend unavailable: refused"})
    assert MetricCounter.objects.get(name="requeues").labels == '{"workflow":"txt2img"}'
    pending = make_generation(user, Status.PENDING)
    # the transition's own UPDATE and its live event, then nothing: a submit is not counted (the metrics
    # hook, registered last, costs no query)
    with django_assert_num_queries(2), django_capture_on_commit_callbacks() as callbacks:
        assert lifecycle.transition(pending.pk, Status.QUEUED, expect={Status.PENDING})
    with django_assert_num_queries(0):
        callbacks[-1]()


def test_final_statuses_count_by_outcome_reason_and_execution_time(make_generation, user,
                                                                   django_capture_on_commit_callbacks):
    started = timezone.now() - timedelta(seconds=42)
    for status, detail in ((Status.COMPLETED, None), (Status.FAILED, {"type": "execution"}),
                           (Status.FAILED, {"reason": "deadline"}), (Status.FAILED, {}), (Status.CANCELLED, None)):
        request = make_generation(user, Status.RUNNING, started_at=started)
        with django_capture_on_commit_callbacks(execute=True):
            assert lifecycle.transition(request.pk, status, error_detail=detail or {})
    finished = {tuple(sorted(json.loads(r.labels).items())): r.count
                for r in MetricCounter.objects.filter(name="requests_finished")}
    assert finished == {(("status", "completed"), ("workflow", "txt2img")): 1,
                        (("status", "failed"), ("workflow", "txt2img")): 3,
                        (("status", "cancelled"), ("workflow", "txt2img")): 1}
    reasons = {json.loads(r.labels)["reason"]: r.count for r in MetricCounter.objects.filter(name="failures")}
    assert reasons == {"execution": 1, "deadline": 1, "other": 1}
    (execution,) = MetricCounter.objects.filter(name="execution_seconds")
    assert json.loads(execution.labels)["le"] == "60" and 42 <= execution.total < 44


def test_a_lost_race_counts_nothing(make_generation, user, django_capture_on_commit_callbacks):
    request = make_generation(user, Status.COMPLETED)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert not lifecycle.transition(request.pk, Status.CANCELLED)
    assert callbacks == [] and not MetricCounter.objects.exists()


@pytest.mark.parametrize("error", [DatabaseError("counter table locked"), RuntimeError("a bug in counting")])
def test_a_failing_counter_write_never_breaks_the_transition(make_generation, user, monkeypatch, error,
                                                            django_capture_on_commit_callbacks):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(metrics, "_add", broken)
    request = make_generation(user, Status.RUNNING)
    with django_capture_on_commit_callbacks(execute=True):
        assert lifecycle.transition(request.pk, Status.COMPLETED)
    request.refresh_from_db()
    assert request.status == Status.COMPLETED


# --- checkpoint loads from a prompt's events ----------------------------------------------------------------

def recorded_events(name):
    """The typed events of a recorded websocket session (JSON frames only), as the client yields them."""
    from generation.comfyui.events import parse_event

    lines = (FIXTURES / name).read_text().splitlines()
    return [event for event in (parse_event(json.loads(line)) for line in lines if line.strip()) if event]



class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        self.now += 1.5  # every event arrives 1.5 s after the one before
        return self.now


def test_a_cold_run_times_its_checkpoint_load():
    graph = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {}}, "5": {"class_type": "EmptyLatentImage"}}
    timer = metrics.CheckpointLoadTimer(B1, graph, clock=Clock())
    for event in recorded_events("ws-txt2img-lora.jsonl"):
        timer.see(event)
    (row,) = MetricCounter.objects.filter(name="checkpoint_load_seconds")
    assert json.loads(row.labels) == {"backend": B1, "le": "2"} and row.count == 1 and row.total == 1.5


def test_a_cached_loader_is_no_load():
    graph = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {}}}
    timer = metrics.CheckpointLoadTimer(B1, graph, clock=Clock())
    events = recorded_events("ws-txt2img-lora-warm.jsonl")
    assert any(isinstance(e, ev.ExecutionCached) and "4" in e.nodes for e in events)  # the fixture is warm
    for event in events:
        timer.see(event)
    assert not MetricCounter.objects.exists()


def test_a_loader_that_fails_is_no_load():
    timer = metrics.CheckpointLoadTimer(B1, {"4": {"class_type": "CheckpointLoaderSimple"}}, clock=Clock())
    timer.see(ev.Executing(prompt_id="p", node="4"))
    timer.see(ev.ExecutionError(prompt_id="p", node_id="4", node_type="CheckpointLoaderSimple",
                                exception_type="FileNotFoundError", exception_message="gone", traceback=[]))
    assert not MetricCounter.objects.exists()


# --- the exposition ----------------------------------------------------------------------------------------

def test_the_scrape_reads_state_and_counters(client, configured, staff_user, make_generation, user):
    now = timezone.now()
    make_generation(user, Status.QUEUED, queued_at=now - timedelta(seconds=90))
    make_generation(user, Status.QUEUED, queued_at=now - timedelta(seconds=5), workflow_slug="img2img")
    make_generation(user, Status.RUNNING, backend=B2)
    make_generation(user, Status.COMPLETED)  # history: counted by events, not by rows
    BackendState.objects.create(url=B1, capacity=2, is_healthy=False)
    metrics.count("requests_finished", {"workflow": "txt2img", "status": "completed"}, by=5)
    metrics.count("failures", {"workflow": "txt2img", "reason": "execution"}, by=2)
    metrics.count("webhook_deliveries", {"outcome": "retry"})
    for value in (0.3, 3, 3, 900):
        metrics.observe("queue_wait_seconds", value, {"workflow": "txt2img"})
    metrics.observe("checkpoint_load_seconds", 4.0, {"backend": B2})
    client.force_login(staff_user)

    families = scrape(client)

    requests = families["genonaut_requests"]
    assert samples(requests) == {
        ("genonaut_requests", frozenset({("workflow", "txt2img"), ("status", "queued")})): 1,
        ("genonaut_requests", frozenset({("workflow", "img2img"), ("status", "queued")})): 1,
        ("genonaut_requests", frozenset({("workflow", "txt2img"), ("status", "running")})): 1}
    assert value_of(families["genonaut_queue_depth"], "genonaut_queue_depth") == 2
    assert 90 <= value_of(families["genonaut_queue_oldest_wait_seconds"], "genonaut_queue_oldest_wait_seconds") < 100
    finished = families["genonaut_requests_finished"]
    assert finished.type == "counter"
    assert value_of(finished, "genonaut_requests_finished_total", workflow="txt2img", status="completed") == 5
    assert value_of(families["genonaut_failures"], "genonaut_failures_total", workflow="txt2img",
                    reason="execution") == 2
    assert value_of(families["genonaut_webhook_deliveries"], "genonaut_webhook_deliveries_total", outcome="retry") == 1
    wait = families["genonaut_queue_wait_seconds"]
    assert wait.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in wait.samples if s.name.endswith("_bucket")}
    assert (buckets["0.1"], buckets["0.5"], buckets["5"], buckets["600"], buckets["3600"], buckets["+Inf"]) == (
        0, 1, 3, 3, 4, 4)
    assert value_of(wait, "genonaut_queue_wait_seconds_count", workflow="txt2img") == 4
    assert value_of(wait, "genonaut_queue_wait_seconds_sum", workflow="txt2img") == pytest.approx(906.3)
    loads = families["genonaut_checkpoint_load_seconds"]
    assert value_of(loads, "genonaut_checkpoint_load_seconds_count", backend=B2) == 1
    up = families["genonaut_backend_up"]
    assert value_of(up, "genonaut_backend_up", backend=B1) == 0
    assert value_of(up, "genonaut_backend_up", backend=B2) == 1  # no worker has looked yet: in rotation
    assert value_of(families["genonaut_backend_capacity"], "genonaut_backend_capacity", backend=B2) == 3
    assert value_of(families["genonaut_backend_running"], "genonaut_backend_running", backend=B2) == 1
    assert value_of(families["genonaut_broker_up"], "genonaut_broker_up") == 1
    depth = families["genonaut_task_queue_depth"]
    assert {s.labels["queue"] for s in depth.samples} == {"jobs", "housekeeping", "webhooks"}


def test_every_family_has_help_and_an_empty_database_scrapes(client, configured):
    response = client.get("/metrics", **bearer())
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert response["Cache-Control"] == "no-store"
    text = response.content.decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"genonaut_" + name for name in metrics.HELP} == names
    assert all(f"# HELP genonaut_{name}" in text for name in metrics.HELP)


def test_a_scrape_costs_the_same_whatever_the_history(client, configured, make_generation, user,
                                                      django_assert_max_num_queries):
    for status in (Status.COMPLETED, Status.FAILED, Status.QUEUED, Status.RUNNING):
        make_generation(user, status)
    with django_assert_max_num_queries(8):  # the state, the counters, the backends, the broker queues
        scrape(client, **bearer())


def test_a_broker_outage_is_reported_not_raised(client, configured, monkeypatch):
    from generation import enqueue

    def down():
        raise ConnectionError("redis is down")

    monkeypatch.setattr(enqueue, "queue_sizes", down)
    families = scrape(client, **bearer())
    assert value_of(families["genonaut_broker_up"], "genonaut_broker_up") == 0


# --- who may read it ---------------------------------------------------------------------------------------

def test_staff_and_the_token_may_read_others_may_not(client, configured, staff_user, user):
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", **bearer("wrong-token")).status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"bearer {TOKEN}").status_code == 200  # scheme is case-blind
    client.force_login(user)
    assert client.get("/metrics").status_code == 404
    client.force_login(staff_user)
    assert client.get("/metrics").status_code == 200


def test_without_a_configured_token_no_bearer_is_accepted(client, configured, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", **bearer("")).status_code == 403
    assert client.get("/metrics", **bearer("anything")).status_code == 403
