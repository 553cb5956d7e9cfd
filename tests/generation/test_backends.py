import pytest
from django.utils import timezone

from generation import backends
from generation.models import BackendState, GenerationRequest, RunState
from generation.states import Status

pytestmark = pytest.mark.django_db

DOWN = "http://127.0.0.1:9"


@pytest.fixture
def configured(settings):
    settings.COMFYUI_BACKENDS = [{"url": DOWN, "capacity": 3}]
    settings.COMFYUI_TIMEOUT = 0.2
    settings.GENERATION = {**settings.GENERATION, "BACKEND_BACKOFF_MAX_SECONDS": 4}


def test_sync_creates_rows_and_follows_capacity(configured, settings):
    assert [(r.url, r.capacity) for r in backends.sync_backends()] == [(DOWN, 3)]
    settings.COMFYUI_BACKENDS = [{"url": DOWN, "capacity": 1}]
    backends.sync_backends()
    assert BackendState.objects.get(url=DOWN).capacity == 1


def test_backoff_doubles_up_to_the_cap(configured):
    assert [backends.backoff_seconds(n) for n in range(1, 6)] == [1, 2, 4, 4, 4]


def test_mark_down_reports_only_the_first_failure(configured):
    backends.sync_backends()
    assert backends.mark_down(DOWN, "refused") is True
    assert backends.mark_down(DOWN, "refused again") is False
    state = BackendState.objects.get(url=DOWN)
    assert not state.is_healthy and state.consecutive_failures == 2 and state.last_error == "refused again"
    assert backends.mark_up(DOWN) is True
    state.refresh_from_db()
    assert state.is_healthy and state.consecutive_failures == 0 and state.down_until is None


def test_probe_of_an_unreachable_backend_keeps_it_down(configured):
    backends.sync_backends()
    assert backends.probe(DOWN) is False
    assert not BackendState.objects.get(url=DOWN).is_healthy
    BackendState.objects.filter(url=DOWN).update(down_until=timezone.now())
    assert backends.probe_due_backends() == []


def test_probe_of_a_live_backend_brings_it_back(settings, simulator):
    settings.COMFYUI_BACKENDS = [{"url": simulator.url, "capacity": 2}]
    backends.sync_backends()
    backends.mark_down(simulator.url, "was down")
    BackendState.objects.filter(url=simulator.url).update(down_until=timezone.now())
    assert backends.probe_due_backends() == [simulator.url]


def test_backend_overview_shape(configured, user):
    now = timezone.now()
    executing = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=Status.RUNNING,
                                                 backend=DOWN, attempts=1)
    RunState.objects.create(request=executing, attempt=1, current_node="KSampler (3)", progress=0.5)
    GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=Status.RUNNING, backend=DOWN)
    failed = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=Status.FAILED,
                                              backend=DOWN, finished_at=now, error="boom")
    GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=Status.COMPLETED,
                                     backend=DOWN, finished_at=now)
    [entry] = backends.backend_overview()
    assert entry["url"] == DOWN and entry["healthy"] is True and entry["capacity"] == 3
    assert (entry["running"], entry["executing"], entry["waiting_on_backend"], entry["free_slots"]) == (2, 1, 1, 1)
    assert (entry["completed_last_hour"], entry["failed_last_hour"]) == (1, 1)
    assert entry["recent_failures"] == [{"request_id": str(failed.pk), "finished_at": failed.finished_at,
                                         "error": "boom"}]
    assert entry["storing_outputs"] == 0
    assert set(entry) == {"url", "healthy", "down_until", "consecutive_failures", "last_error", "last_ok_at",
                          "last_checked_at", "capacity", "running", "executing", "waiting_on_backend", "free_slots",
                          "loaded_checkpoint", "jobs_completed", "jobs_failed", "completed_last_hour",
                          "failed_last_hour", "recent_failures", "storing_outputs"}


def test_an_idle_backend_that_died_leaves_rotation_and_a_busy_one_is_left_alone(configured, settings, user,
                                                                                  simulator):
    settings.COMFYUI_BACKENDS = [{"url": DOWN, "capacity": 2}, {"url": simulator.url, "capacity": 2},
                                 {"url": "http://127.0.0.1:7", "capacity": 2}]
    backends.sync_backends()
    GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=Status.RUNNING,
                                     backend="http://127.0.0.1:7", attempts=1)
    assert backends.check_idle_backends() == [DOWN]
    healthy = dict(BackendState.objects.values_list("url", "is_healthy"))
    assert healthy == {DOWN: False, simulator.url: True, "http://127.0.0.1:7": True}  # busy: its job will tell
    assert BackendState.objects.get(url=simulator.url).last_checked_at is not None


def test_a_completed_job_counts_as_a_sign_of_life(configured):
    backends.sync_backends()
    backends.record_outcome(DOWN, completed=True)
    state = BackendState.objects.get(url=DOWN)
    assert state.jobs_completed == 1 and state.last_ok_at is not None


def test_overview_queries_do_not_grow_with_backends_or_history(settings, user, django_assert_max_num_queries):
    urls = [f"http://127.0.0.1:{port}" for port in (9, 19, 29, 39)]
    settings.COMFYUI_BACKENDS = [{"url": url, "capacity": 2} for url in urls]
    now = timezone.now()
    for minutes in range(8):
        for url in urls:
            GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=Status.FAILED,
                                             backend=url, error=f"e{minutes}",
                                             finished_at=now - timezone.timedelta(minutes=minutes * 20))
    backends.sync_backends()
    with django_assert_max_num_queries(4):  # the rows, running, last hour, recent failures (one UNION)
        overview = backends.backend_overview(recent_failures=3)
    for entry in overview:
        assert [f["error"] for f in entry["recent_failures"]] == ["e0", "e1", "e2"]  # newest first, per backend
        assert entry["failed_last_hour"] == 3  # 0, 20 and 40 minutes ago


@pytest.mark.parametrize(("name", "query"), [
    ("genreq_backend_finished_idx",
     lambda: backends.finished_since(timezone.now(), urls=["http://127.0.0.1:9", "http://127.0.0.1:19"])),
    ("genreq_backend_finished_idx", lambda: backends.recent_failures_of(["http://127.0.0.1:9"])),
])
def test_operator_queries_can_use_their_index(name, query, django_assert_max_num_queries):
    """With sequential scans priced out, the plan must use the index: the query's conditions imply its
    predicate and match its columns (so at a million rows the planner has a cheap path)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        query()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + captured.captured_queries[-1]["sql"])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert name in plan, plan
