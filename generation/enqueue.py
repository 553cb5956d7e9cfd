"""Every Django-Q enqueue of the generation pipeline in one place: the only module that names its tasks.

The broker only carries wake-ups (the rows hold the truth), so callers never need a task's result.
Each task goes to the queue of its role (``settings.Q_QUEUES``), served by a cluster of its own
(``Q_ROLE``): dispatch wake-ups to ``jobs``; the reconciler, ``resume`` and backend probes to
``housekeeping``; webhook deliveries to ``webhooks`` — so the jobs queue holds dispatch wake-ups only,
and a backlog in one queue never delays another. Task bodies live in :mod:`generation.tasks`; this module
imports nothing of theirs, so services, the runner and the reconciler can enqueue without import cycles.
"""

import datetime
import hashlib

from django.conf import settings
from django.db.models import Count
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.tasks import async_task

DISPATCH = "generation.tasks.dispatch"
RESUME = "generation.tasks.resume"
PROBE_BACKEND = "generation.tasks.probe_backend"
RECONCILE = "generation.tasks.reconcile"
DELIVER_WEBHOOK = "generation.tasks.deliver_webhook"
STOP_CANCELLED = "generation.tasks.stop_cancelled"

JOBS, HOUSEKEEPING, WEBHOOKS = "jobs", "housekeeping", "webhooks"


def queue(role):
    """The Django-Q queue (cluster name) of ``role``."""
    return settings.Q_QUEUES[role]


def queue_sizes():
    """``{role: tasks waiting in its queue}`` (raises what the broker raises when it does not answer)."""
    if Conf.ORM:  # one query for every queue (what the ORM broker's queue_size counts, per queue)
        from django_q.models import OrmQ

        counts = dict(OrmQ.objects.using(Conf.ORM).filter(key__in=list(settings.Q_QUEUES.values()),
                                                          lock__lte=timezone.now())
                      .values("key").annotate(n=Count("*")).values_list("key", "n"))
        return {role: counts.get(name, 0) for role, name in settings.Q_QUEUES.items()}
    return {role: get_broker(name).queue_size() or 0 for role, name in settings.Q_QUEUES.items()}


def broker_backlog():
    """Dispatch wake-ups waiting in the broker (0 when it cannot be measured: an extra wake-up is harmless).
    The jobs queue carries nothing else, so every task counted is a wake-up."""
    try:
        return get_broker(queue(JOBS)).queue_size() or 0
    except Exception:
        return 0


def wake_dispatcher(count=1):
    """Enqueue up to ``count`` dispatch wake-ups, but no more than there are free slots not
    already covered by tasks waiting in the broker (a submit while every slot is busy needs no
    wake-up: the job that frees a slot sends one). Without this, a burst of submissions piles
    up no-op wake-ups in the broker.

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
        async_task(DISPATCH, save=False, cluster=queue(JOBS))


def stop_cancelled(request_id):
    """Stop a cancelled request's prompt on its backend, off the web request (two ComfyUI calls)."""
    async_task(STOP_CANCELLED, str(request_id), save=False)


def resume_job(request_id, attempt, lease):
    """Re-attach to a running job whose worker stopped heart-beating (the reconciler holds ``lease``)."""
    async_task(RESUME, request_id, attempt, lease, cluster=queue(HOUSEKEEPING))


def watch_backend(url):
    """Watch a backend that just left rotation: schedule its probe for when its backoff expires (a
    Django-Q schedule in the housekeeping cluster; no worker sleeps waiting for it)."""
    from generation.models import BackendState

    down_until = BackendState.objects.filter(url=url).values_list("down_until", flat=True).first()
    schedule_probe(url, at=down_until or timezone.now())


def schedule_probe(url, *, at):
    """Probe ``url`` at ``at`` (one schedule per backend: a newer time replaces the older). Django-Q's
    scheduler looks for due schedules every 30 s, so the probe runs up to that long after ``at``."""
    from django_q.models import Schedule

    name = f"genonaut: probe {url}"
    if len(name) > 100:  # Schedule.name's length; the hash keeps long URLs apart
        name = f"genonaut: probe {url[:60]}… {hashlib.sha256(url.encode()).hexdigest()[:12]}"
    Schedule.objects.update_or_create(name=name, defaults={
        "func": PROBE_BACKEND, "args": repr(url), "kwargs": None, "schedule_type": Schedule.ONCE,
        "repeats": -1, "next_run": at, "cluster": queue(HOUSEKEEPING),
    })


def deliver_webhook(request_id, attempt=1):
    async_task(DELIVER_WEBHOOK, str(request_id), attempt=attempt, cluster=queue(WEBHOOKS))


def schedule_webhook_retry(request_id, *, attempt, delay):
    """A one-off Django-Q schedule (persisted in the database, so a restart keeps it), run by the webhooks
    cluster's scheduler."""
    from django_q.models import Schedule

    # get_or_create by name: a re-delivered task must not schedule the same attempt twice
    Schedule.objects.get_or_create(name=f"webhook {request_id} attempt {attempt}", defaults={
        "func": DELIVER_WEBHOOK,
        "args": repr(str(request_id)),
        "kwargs": repr({"attempt": attempt}),
        "schedule_type": Schedule.ONCE,
        "next_run": timezone.now() + datetime.timedelta(seconds=delay),
        "cluster": queue(WEBHOOKS),
    })


SCHEDULES = {
    # name: (task, minutes between runs, role of the cluster that runs it)
    "genonaut: reconcile requests and backends": (RECONCILE, 1, HOUSEKEEPING),
}


def ensure_schedules():
    """Create or update every Django-Q schedule Genonaut needs; yield ``(name, created)``."""
    from django_q.models import Schedule

    for name, (func, minutes, role) in SCHEDULES.items():
        _, created = Schedule.objects.update_or_create(
            name=name, defaults={"func": func, "schedule_type": Schedule.MINUTES, "minutes": minutes, "repeats": -1,
                                 "cluster": queue(role)})
        yield name, created
