"""Registry work that must not run in a web request: a refresh (asks every backend, reads headers)
and hashing (reads multi-GB files). Under sync gunicorn workers with a 30 s timeout either could
be killed half way, so the request only records the decision as a :class:`RegistryJob` and a
Django-Q task (``models_registry.tasks``) does the work and records the result.

Invariants:

- At most one refresh, and one hash per model, is active (``requested`` or ``running``); asking
  again while one is active answers that job (database constraints settle a race between two
  staff members).
- A task claims its job with a conditional update (``requested`` → ``running``), so a re-delivered
  task does nothing.
- A job that no worker finished within Django-Q's task ``timeout`` (the worker was killed, or no
  cluster runs) is abandoned: the next request marks it failed and starts a new one.
- Only the newest :data:`KEEP_FINISHED` finished jobs per kind (and model) are kept.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from models_registry import services
from models_registry.models import RegistryJob

logger = logging.getLogger(__name__)

Kind, Status = RegistryJob.Kind, RegistryJob.Status
KEEP_FINISHED = 10
DETAIL_ITEMS = 200  # names kept per list in a refresh's details; the summary has the counts


def abandoned_after():
    """How long an unfinished job may take: the housekeeping cluster kills any task running longer than its
    ``timeout``."""
    return timedelta(seconds=settings.Q_ROLE_OPTIONS["housekeeping"]["timeout"])


def is_abandoned(job, *, now=None):
    now = now or timezone.now()
    return job.is_active and (job.started_at or job.requested_at) < now - abandoned_after()


def request_refresh(*, user):
    """Ask for a refresh; return ``(job, created)``. An active refresh is returned instead of a new one."""
    return _request(Kind.REFRESH, None, user)


def request_hashes(*, models, user):
    """Ask for each model's SHA-256; return ``(requested, already, impossible)``.

    ``requested``: the new jobs (one task hashes them one after the other); ``already``: jobs
    that were active for some of the models; ``impossible``: ``(model, reason)`` for models with
    no local file to read.
    """
    requested, already, impossible = [], [], []
    for model in models:
        if not model.file_path:
            impossible.append((model, "no local file (seen only through the ComfyUI API)"))
            continue
        job, created = _request(Kind.HASH, model, user, enqueue=False)
        (requested if created else already).append(job)
    if requested:
        ids = [job.pk for job in requested]
        transaction.on_commit(lambda: _tasks().enqueue_hashes(ids))
    return requested, already, impossible


def _request(kind, model, user, *, enqueue=True):
    now = timezone.now()
    active = RegistryJob.objects.filter(kind=kind, model=model, status__in=RegistryJob.ACTIVE).first()
    if active is not None and not is_abandoned(active, now=now):
        return active, False
    if active is not None:
        _finish(active, Status.FAILED, f"abandoned: no worker finished it within {abandoned_after()} (a worker "
                                       "stopped, or no worker cluster runs)", from_statuses=RegistryJob.ACTIVE)
    try:
        with transaction.atomic():
            job = RegistryJob.objects.create(kind=kind, model=model, requested_by=user, requested_at=now)
    except IntegrityError:  # another request won the race: answer its job (the newest)
        return RegistryJob.objects.filter(kind=kind, model=model).first(), False
    if enqueue:
        transaction.on_commit(lambda: _tasks().enqueue_refresh(job.pk))
    return job, True


def _tasks():
    from models_registry import tasks  # the task module imports this one

    return tasks


# --- in the worker ---------------------------------------------------------------------------------

def claim(job_id, kind):
    """``requested`` → ``running``; return the job, or ``None`` if it is not waiting any more."""
    if not RegistryJob.objects.filter(pk=job_id, kind=kind, status=Status.REQUESTED).update(
            status=Status.RUNNING, started_at=timezone.now()):
        return None
    return RegistryJob.objects.select_related("model").get(pk=job_id)


def run_refresh_job(job_id):
    """Do a requested refresh and record its result; a no-op for a job already claimed or finished."""
    job = claim(job_id, Kind.REFRESH)
    if job is None:
        return "not requested any more"
    try:
        result = services.refresh_models()
    except services.RefreshFailed as exc:
        return _finish(job, Status.FAILED, f"nothing refreshed: {exc}")
    except Exception as exc:
        _finish(job, Status.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        raise  # kept in Django-Q's failed tasks and the worker log with its traceback
    details = {"added": result.added[:DETAIL_ITEMS], "updated": result.updated[:DETAIL_ITEMS],
               "missing": result.missing[:DETAIL_ITEMS], "problems": (result.errors + result.unreadable)[:DETAIL_ITEMS]}
    return _finish(job, Status.DONE, result.summary(), details=details)


def run_hash_job(job_id):
    """Hash a requested model's file (unless its cached hash is fresh) and record the digest."""
    job = claim(job_id, Kind.HASH)
    if job is None:
        return "not requested any more"
    try:
        digest = services.hash_model(job.model)
    except (services.ModelFileMissing, OSError) as exc:
        return _finish(job, Status.FAILED, f"cannot hash: {exc}")
    except Exception as exc:
        _finish(job, Status.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        raise
    return _finish(job, Status.DONE, f"sha256 {digest}", details={"sha256": digest})


def _finish(job, status, summary, *, details=None, from_statuses=(Status.RUNNING,)):
    """Record how ``job`` ended (if it is still in ``from_statuses``) and prune old finished jobs."""
    now = timezone.now()
    RegistryJob.objects.filter(pk=job.pk, status__in=from_statuses).update(
        status=status, finished_at=now, summary=summary[:500], details=details or {})
    old = RegistryJob.objects.filter(kind=job.kind, model=job.model_id, status__in=[Status.DONE, Status.FAILED])
    RegistryJob.objects.filter(pk__in=old.values_list("pk", flat=True)[KEEP_FINISHED:]).delete()
    log = logger.info if status == Status.DONE else logger.warning
    log("registry job %s (%s%s): %s", job.pk, job.kind, f" {job.model.name}" if job.model_id else "", summary)
    return summary


# --- what the admin shows --------------------------------------------------------------------------

def latest_refresh():
    return RegistryJob.objects.filter(kind=Kind.REFRESH).select_related("requested_by").first()


def latest_hash_jobs(model_ids):
    """``{model id: its newest hash job}`` for the given models, in one query."""
    latest = {}
    for job in RegistryJob.objects.filter(kind=Kind.HASH, model_id__in=model_ids).order_by("model_id",
                                                                                          "-requested_at", "-id"):
        latest.setdefault(job.model_id, job)
    return latest

