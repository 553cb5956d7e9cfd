"""Every Django-Q enqueue in one place: the only module that names tasks.

The broker only carries wake-ups (the rows hold the truth), so callers never need a task's result.
Task bodies live in :mod:`generation.tasks`; this module imports nothing of theirs, so services,
the runner and the reconciler can enqueue without import cycles.
"""

import datetime

from django.utils import timezone
from django_q.brokers import get_broker
from django_q.tasks import async_task

DISPATCH = "generation.tasks.dispatch"
RESUME = "generation.tasks.resume"
WATCH_BACKEND = "generation.tasks.watch_backend"
RECONCILE = "generation.tasks.reconcile"
DELIVER_WEBHOOK = "generation.tasks.deliver_webhook"
STOP_CANCELLED = "generation.tasks.stop_cancelled"


def broker_backlog():
    """Tasks waiting in the broker (0 when it cannot be measured: an extra wake-up is harmless)."""
    try:
        return get_broker().queue_size() or 0
    except Exception:
        return 0


def wake_dispatcher(count=1):
    """Enqueue up to ``count`` dispatch wake-ups, but no more than there are free slots not
    already covered by tasks waiting in the broker (a submit while every slot is busy needs no
    wake-up: the job that frees a slot sends one). Without this, a burst of submissions piles
    up no-op wake-ups in the broker, ahead of the reconciler's ``resume`` tasks.

    Free slots never exceed the configured capacity, so when the backlog already covers that,
    the answer is "none" without asking the database (a burst's submits cost one query here)."""
    from generation import backends

    backlog = broker_backlog()
    if min(count, backends.configured_capacity() - backlog) <= 0:
        return
    send_wakeups(min(count, backends.free_slots() - backlog))


def send_wakeups(count=1):
    """Enqueue ``count`` dispatch wake-ups unconditionally (a job freeing its slot sends one)."""
    for _ in range(max(0, count)):
        async_task(DISPATCH, save=False)


def stop_cancelled(request_id):
    """Stop a cancelled request's prompt on its backend, off the web request (two ComfyUI calls)."""
    async_task(STOP_CANCELLED, str(request_id), save=False)


def resume_job(request_id, attempt, lease):
    """Re-attach to a running job whose worker stopped heart-beating (the reconciler holds ``lease``)."""
    async_task(RESUME, request_id, attempt, lease)


def watch_backend(url):
    async_task(WATCH_BACKEND, url, save=False)


def deliver_webhook(request_id, attempt=1):
    async_task(DELIVER_WEBHOOK, str(request_id), attempt=attempt)


def schedule_webhook_retry(request_id, *, attempt, delay):
    """A one-off Django-Q schedule (persisted in the database, so a restart keeps it)."""
    from django_q.models import Schedule

    # get_or_create by name: a re-delivered task must not schedule the same attempt twice
    Schedule.objects.get_or_create(name=f"webhook {request_id} attempt {attempt}", defaults={
        "func": DELIVER_WEBHOOK,
        "args": repr(str(request_id)),
        "kwargs": repr({"attempt": attempt}),
        "schedule_type": Schedule.ONCE,
        "next_run": timezone.now() + datetime.timedelta(seconds=delay),
    })


SCHEDULES = {
    # name: (task, minutes between runs)
    "genonaut: reconcile requests and backends": (RECONCILE, 1),
}


def ensure_schedules():
    """Create or update every Django-Q schedule Genonaut needs; yield ``(name, created)``."""
    from django_q.models import Schedule

    for name, (func, minutes) in SCHEDULES.items():
        _, created = Schedule.objects.update_or_create(
            name=name, defaults={"func": func, "schedule_type": Schedule.MINUTES, "minutes": minutes, "repeats": -1})
        yield name, created
