"""The reconciler: the scheduled safety net that makes every request end in a true state.

Workers do the work and wake each other; this finds what fell between the cracks — a worker
killed mid-job (stale heartbeat), a job past its deadline, a wake-up the broker lost, a
backend whose backoff expired — and repairs it with conditional updates, so running it twice,
or on two hosts at once, is harmless. It also applies the file-retention policy and forgets
expired idempotency keys, idle rate/login counters, old live events and stale previews.
Runs every minute (``manage.py setup_schedules``) and on demand (``manage.py reconcile``).
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from generation import backends, enqueue, lifecycle
from generation.idempotency import purge_expired_keys
from generation.live import log as live_log
from generation.live import previews as live_previews
from generation.login_guard import purge_idle_counters
from generation.models import GenerationRequest
from generation.runner import stop_cancelled_prompt, stop_on_backend, take_over
from generation.states import TERMINAL, Status
from generation.storage import delete_request_files, delete_unreferenced_files
from generation.throttling import purge_stale_counters

logger = logging.getLogger(__name__)

LOST_WAKEUP_SECONDS = 5  # a request queued this long while a slot is free had its wake-up lost
PENDING_GRACE_SECONDS = 30  # pending this long: the submit's on-commit hook never ran
STOP_GRACE_SECONDS = 30  # a cancel's stop still pending this long: its task was lost
RETENTION_BATCH = 200


def reconcile():
    """Run every repair once; return what was done, as counts."""
    report = {
        "timed_out": fail_past_deadline(),
        "taken_over": take_over_stale(),
        "pending_queued": queue_forgotten_pending(),
        "stops_retried": stop_forgotten_cancels(),
        "backends_back": len(probe_backends()),
        "wakeups": wake_for_waiting(),
        "retention_cleared": apply_retention(),
        "idempotency_keys_expired": purge_expired_keys(),
        "counters_purged": purge_stale_counters() + purge_idle_counters(),
        "events_forgotten": live_log.purge(),
        "previews_expired": live_previews.purge_stale(),
    }
    if any(report.values()):
        logger.info("reconcile: %s", report)
    return report


def fail_past_deadline(now=None):
    """Running jobs past their deadline: interrupt them on ComfyUI and fail "timed out after N s"."""
    now = now or timezone.now()
    limit = settings.GENERATION["JOB_DEADLINE_SECONDS"]
    count = 0
    for request in GenerationRequest.objects.filter(status=Status.RUNNING, deadline_at__lt=now):
        stop_on_backend(request)
        if lifecycle.transition(request.pk, Status.FAILED, expect={Status.RUNNING},
                                where={"attempts": request.attempts}, error=f"Timed out after {limit} s",
                                error_detail={"reason": "deadline", "deadline_seconds": limit,
                                              "backend": request.backend, "attempt": request.attempts}):
            backends.record_outcome(request.backend, completed=False)
            # the worker may be dead mid-store, or still storing: files it wrote are nobody's now
            delete_unreferenced_files(request)
            count += 1
    return count


def take_over_stale(now=None):
    """Running jobs whose worker stopped heart-beating: take the lease and enqueue ``resume``,
    which re-attaches to the prompt on ComfyUI (or requeues it if ComfyUI lost it)."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.GENERATION["STALE_HEARTBEAT_SECONDS"])
    count = 0
    stale = GenerationRequest.objects.filter(status=Status.RUNNING).filter(
        Q(run__heartbeat_at__lt=stale_before) | Q(run__heartbeat_at__isnull=True)).values_list(
        "id", "attempts", "run__heartbeat_at")
    for request_id, attempts, heartbeat in stale:
        lease = take_over(request_id, attempts, heartbeat)
        if lease is not None:
            logger.warning("request %s attempt %s: heartbeat stale since %s, resuming", request_id, attempts,
                           heartbeat)
            enqueue.resume_job(request_id, attempts, lease)
            count += 1
    return count


def stop_forgotten_cancels(now=None, *, batch=20):
    """Cancelled running requests whose stop on the backend is still pending a while after the cancel
    (the broker lost the stop task, or no housekeeping worker ran it): stop them now. Otherwise the prompt
    would run to its end on ComfyUI, holding a slot nobody counts."""
    now = now or timezone.now()
    forgotten = GenerationRequest.objects.filter(
        backend_stop=GenerationRequest.BackendStop.PENDING, status=Status.CANCELLED,
        finished_at__lt=now - timedelta(seconds=STOP_GRACE_SECONDS)).order_by("finished_at")
    return sum(stop_cancelled_prompt(request_id) is not None
               for request_id in forgotten.values_list("id", flat=True)[:batch])


def queue_forgotten_pending(now=None):
    now = now or timezone.now()
    count = 0
    old = GenerationRequest.objects.filter(status=Status.PENDING,
                                           created_at__lt=now - timedelta(seconds=PENDING_GRACE_SECONDS))
    for request_id in old.values_list("id", flat=True):
        count += lifecycle.transition(request_id, Status.QUEUED, expect={Status.PENDING})
    return count


def probe_backends():
    """Probe backends whose backoff expired, and idle ones in rotation (a backend that died while
    idle leaves rotation before a job finds out); wake workers for the slots the ones back offer."""
    backends.check_idle_backends()
    back = backends.probe_due_backends()
    if back:
        enqueue.wake_dispatcher(backends.free_slots())
    return back


def wake_for_waiting(now=None):
    """Queued work that has waited a while with a slot free and too few wake-ups in the broker:
    send the missing wake-ups (a lost wake-up must not strand a request). A request still in its
    retry backoff (``not_before``) is not waiting yet."""
    now = now or timezone.now()
    waiting = GenerationRequest.objects.filter(status=Status.QUEUED,
                                               queued_at__lt=now - timedelta(seconds=LOST_WAKEUP_SECONDS)).filter(
        Q(not_before__isnull=True) | Q(not_before__lte=now))
    if not waiting.exists():
        return 0
    free = backends.free_slots()
    if not free:
        return 0
    missing = max(0, min(free, waiting.count()) - enqueue.broker_backlog())
    if missing:
        enqueue.send_wakeups(missing)
    return missing


def apply_retention(now=None):
    """With ``GENERATION["RETENTION_DAYS"]`` > 0: delete the files of requests finished longer ago
    and clear the rows' references (the rows stay, so history still shows what was asked)."""
    days = settings.GENERATION["RETENTION_DAYS"]
    if days <= 0:
        return 0
    now = now or timezone.now()
    cutoff = now - timedelta(days=days)
    # oldest first, along genreq_retention_idx (which holds only rows that still have files)
    old = (GenerationRequest.objects.filter(status__in=sorted(TERMINAL), finished_at__lt=cutoff)
           .exclude(outputs=[], thumbnails=[]).order_by("finished_at")[:RETENTION_BATCH])
    count = 0
    for request in old:
        if delete_request_files(request) == 0:
            GenerationRequest.objects.filter(pk=request.pk).update(outputs=[], thumbnails=[])
            count += 1
    return count
