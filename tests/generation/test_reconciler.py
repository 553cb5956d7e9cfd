from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from generation import enqueue, reconciler
from generation.models import GenerationRequest, RunState
from generation.states import Status
from generation.storage import save_exact

pytestmark = pytest.mark.django_db


@pytest.fixture
def enqueued(monkeypatch):
    calls = []
    monkeypatch.setattr(enqueue, "async_task", lambda *args, **kwargs: calls.append(args))
    return calls


@pytest.fixture
def one_backend(settings, simulator):
    """A live backend: the reconciler probes idle backends and would take a dead one out of rotation."""
    settings.COMFYUI_BACKENDS = [{"url": simulator.url, "capacity": 2}]
    settings.COMFYUI_TIMEOUT = 0.2
    settings.GENERATION = {**settings.GENERATION, "STALE_HEARTBEAT_SECONDS": 30, "JOB_DEADLINE_SECONDS": 600}


def _row(user, status, **fields):
    return GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=status, **fields)


def _running(user, *, heartbeat_age=0, deadline_in=300, attempts=1):
    now = timezone.now()
    request = _row(user, Status.RUNNING, attempts=attempts, backend="http://127.0.0.1:9", comfyui_prompt_id="p1",
                   started_at=now, deadline_at=now + timedelta(seconds=deadline_in))
    RunState.objects.create(request=request, attempt=attempts, heartbeat_at=now - timedelta(seconds=heartbeat_age))
    return request


def test_stale_heartbeat_is_taken_over_and_resumed(one_backend, user, enqueued):
    stale, fresh = _running(user, heartbeat_age=60), _running(user, heartbeat_age=1)
    fresh_lease = RunState.objects.get(request=fresh).heartbeat_at
    report = reconciler.reconcile()
    assert report["taken_over"] == 1
    run = RunState.objects.get(request=stale)
    assert ("generation.tasks.resume", stale.pk, 1, run.heartbeat_at) in enqueued
    assert run.heartbeat_at > timezone.now() - timedelta(seconds=5)
    assert GenerationRequest.objects.get(pk=stale.pk).status == Status.RUNNING
    assert RunState.objects.get(request=fresh).heartbeat_at == fresh_lease
    assert reconciler.reconcile()["taken_over"] == 0  # idempotent: the lease is fresh now


def test_a_running_row_without_run_state_is_taken_over(one_backend, user, enqueued):
    """A job running when RunState was introduced (or whose row went missing) is recovered too."""
    orphan = _row(user, Status.RUNNING, attempts=1, backend="http://127.0.0.1:9", comfyui_prompt_id="p1",
                  started_at=timezone.now(), deadline_at=timezone.now() + timedelta(seconds=300))
    assert reconciler.reconcile()["taken_over"] == 1
    run = RunState.objects.get(request=orphan)
    assert run.attempt == 1 and ("generation.tasks.resume", orphan.pk, 1, run.heartbeat_at) in enqueued


def test_past_deadline_fails_with_timeout(one_backend, user, enqueued):
    late = _running(user, deadline_in=-1)
    assert reconciler.reconcile()["timed_out"] == 1
    row = GenerationRequest.objects.get(pk=late.pk)
    assert row.status == Status.FAILED and row.error == "Timed out after 600 s"
    assert row.error_detail["reason"] == "deadline"


def test_past_deadline_deletes_what_a_dead_worker_left_half_stored(one_backend, user, enqueued):
    from generation.storage import image_path, thumbnail_path

    late = _running(user, deadline_in=-1)
    left = [image_path(late, 0), thumbnail_path(late, 0, "small", "webp")]
    for name in left:
        save_exact(name, b"partial")
    assert reconciler.reconcile()["timed_out"] == 1
    assert not any(default_storage.exists(name) for name in left)


def test_lost_wakeups_are_resent_for_free_slots(one_backend, user, enqueued):
    old = timezone.now() - timedelta(seconds=60)
    for _ in range(3):
        _row(user, Status.QUEUED, queued_at=old)
    assert reconciler.reconcile()["wakeups"] == 2  # two free slots, three waiting
    assert enqueued.count(("generation.tasks.dispatch",)) == 2


def test_work_in_its_retry_backoff_is_not_waiting_yet(one_backend, user, enqueued):
    old = timezone.now() - timedelta(seconds=60)
    _row(user, Status.QUEUED, queued_at=old, not_before=timezone.now() + timedelta(seconds=30))
    assert reconciler.reconcile()["wakeups"] == 0
    _row(user, Status.QUEUED, queued_at=old, not_before=timezone.now() - timedelta(seconds=1))
    assert reconciler.reconcile()["wakeups"] == 1


def test_recent_queued_work_is_left_to_its_wakeup(one_backend, user, enqueued):
    _row(user, Status.QUEUED, queued_at=timezone.now())
    assert reconciler.reconcile()["wakeups"] == 0


def test_forgotten_pending_is_queued(one_backend, user, enqueued):
    pending = _row(user, Status.PENDING)
    GenerationRequest.objects.filter(pk=pending.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    assert reconciler.reconcile()["pending_queued"] == 1
    assert GenerationRequest.objects.get(pk=pending.pk).status == Status.QUEUED


def test_retention_deletes_files_and_clears_references(one_backend, user, settings, enqueued):
    settings.GENERATION = {**settings.GENERATION, "RETENTION_DAYS": 7}
    old_paths = ["generations/1/2020/01/01/a_0.png", "generations/1/2020/01/01/thumbs/a_0_small.webp"]
    new_path = "generations/1/2026/01/01/b_0.png"
    for path in [*old_paths, new_path]:
        save_exact(path, b"x")
    old = _row(user, Status.COMPLETED, finished_at=timezone.now() - timedelta(days=8), outputs=[old_paths[0]],
               thumbnails=[{"small": old_paths[1]}])
    new = _row(user, Status.COMPLETED, finished_at=timezone.now() - timedelta(days=1), outputs=[new_path])
    assert reconciler.reconcile()["retention_cleared"] == 1
    old.refresh_from_db()
    assert old.outputs == [] and old.thumbnails == [] and not any(map(default_storage.exists, old_paths))
    assert GenerationRequest.objects.get(pk=new.pk).outputs == [new_path] and default_storage.exists(new_path)


def test_retention_off_keeps_everything(one_backend, user, settings, enqueued):
    settings.GENERATION = {**settings.GENERATION, "RETENTION_DAYS": 0}
    _row(user, Status.COMPLETED, finished_at=timezone.now() - timedelta(days=800), outputs=["generations/x.png"])
    assert reconciler.reconcile()["retention_cleared"] == 0


def test_reconcile_command_prints_the_report(one_backend, enqueued, capsys):
    call_command("reconcile")
    assert "timed_out=0, taken_over=0" in capsys.readouterr().out


def test_setup_schedules_is_idempotent(capsys):
    call_command("setup_schedules")
    call_command("setup_schedules")
    schedule = Schedule.objects.get()
    assert schedule.func == "generation.tasks.reconcile" and schedule.schedule_type == Schedule.MINUTES
    assert schedule.minutes == 1 and schedule.repeats == -1
    assert "up to date" in capsys.readouterr().out


def test_retention_clears_the_oldest_first_along_its_index(one_backend, user, settings, enqueued, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.GENERATION = {**settings.GENERATION, "RETENTION_DAYS": 1}
    monkeypatch.setattr(reconciler, "RETENTION_BATCH", 2)
    now = timezone.now()
    rows = [GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=Status.COMPLETED,
                                             finished_at=now - timedelta(days=days),
                                             outputs=[f"generations/{days}.png"]) for days in (3, 5, 2, 4)]
    with CaptureQueriesContext(connection) as captured:
        assert reconciler.apply_retention() == 2
    cleared = set(GenerationRequest.objects.filter(outputs=[]).values_list("finished_at", flat=True))
    assert cleared == {rows[1].finished_at, rows[3].finished_at}  # 5 and 4 days old
    select = next(q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT"))
    with connection.cursor() as cursor:  # tiny tables get any plan: price out the others to see this one is there
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("EXPLAIN " + select)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    # its predicate is implied by the query, and it hands rows over oldest first: no sort, no scan of cleared rows
    assert "Index Scan using genreq_retention_idx" in plan and "Sort" not in plan, plan


@pytest.mark.django_db
def test_a_cancel_whose_stop_task_was_lost_is_stopped_by_the_reconciler(user, make_generation):
    from datetime import timedelta

    from django.utils import timezone

    from generation.reconciler import STOP_GRACE_SECONDS, stop_forgotten_cancels

    pending = GenerationRequest.BackendStop.PENDING
    old = make_generation(user, Status.CANCELLED, backend="http://127.0.0.1:9", backend_stop=pending,
                          finished_at=timezone.now() - timedelta(seconds=STOP_GRACE_SECONDS + 5))
    fresh = make_generation(user, Status.CANCELLED, backend="http://127.0.0.1:9", backend_stop=pending)
    assert stop_forgotten_cancels() == 1
    old.refresh_from_db()
    fresh.refresh_from_db()
    assert old.backend_stop != pending  # the stop was made (done or unreachable: it is no longer pending)
    assert fresh.backend_stop == pending  # its own task may still run
    assert stop_forgotten_cancels() == 0
