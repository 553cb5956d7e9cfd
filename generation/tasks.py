"""Django-Q tasks: thin entry points. The broker only carries wake-ups; the rows hold the truth.

Every task is idempotent: a wake-up that finds no free slot or no queued work returns, and a
re-delivered ``resume`` whose lease no longer matches the row does nothing.

Task names (for ``async_task`` and the Django-Q admin):

- ``generation.tasks.dispatch``: claim the next (request, backend) pair and run that job here.
- ``generation.tasks.resume``: re-attach to a running job whose worker died (sent by the reconciler).
- ``generation.tasks.watch_backend``: wait out a down backend's backoff, probe it, wake workers.
- ``generation.tasks.reconcile``: the every-minute safety net (``manage.py setup_schedules``).
- ``generation.tasks.deliver_webhook``: POST a finished request's signed webhook.
"""

import logging
import time

from django.conf import settings
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.tasks import async_task

from generation import backends
from generation.dispatcher import claim_next
from generation.models import BackendState, GenerationRequest
from generation.runner import Job, run_job
from generation.states import Status

logger = logging.getLogger(__name__)


def wake_dispatcher(count=1):
    """Enqueue up to ``count`` dispatch wake-ups, but no more than there are free slots not
    already covered by tasks waiting in the broker (a submit while every slot is busy needs no
    wake-up: the job that frees a slot sends one). Without this, a burst of submissions piles
    up no-op wake-ups in the broker, ahead of the reconciler's ``resume`` tasks.

    Free slots never exceed the configured capacity, so when the backlog already covers that,
    the answer is "none" without asking the database (a burst's submits cost one query here)."""
    try:
        backlog = get_broker().queue_size() or 0
    except Exception:  # a broker we cannot measure: wake anyway, extra wake-ups are harmless
        backlog = 0
    if min(count, backends.configured_capacity() - backlog) <= 0:
        return
    send_wakeups(min(count, backends.free_slots() - backlog))


def send_wakeups(count=1):
    """Enqueue ``count`` dispatch wake-ups unconditionally (a job freeing its slot sends one)."""
    for _ in range(max(0, count)):
        async_task("generation.tasks.dispatch", save=False)


def dispatch():
    """Claim the next job and run it to its end in this worker; then wake the next dispatch."""
    claim = claim_next()
    if claim is None:
        return "idle"
    if GenerationRequest.objects.filter(status=Status.QUEUED).exists():
        wake_dispatcher()  # fill the other free slots in parallel, one wake-up at a time
    woke = False
    try:
        woke = run_job(Job(claim.request_id, claim.attempt, claim.backend, claim.prompt_id, claim.lease))
    finally:
        if not woke:
            send_wakeups(1)
    return f"{claim.request_id} attempt {claim.attempt} on {claim.backend}"


def resume(request_id, attempt, lease):
    """Re-attach to attempt ``attempt`` of a running request, if the reconciler's lease still holds."""
    row = GenerationRequest.objects.filter(pk=request_id, status=Status.RUNNING, attempts=attempt,
                                           heartbeat_at=lease).values("backend", "comfyui_prompt_id").first()
    if row is None:
        return "not ours any more"
    woke = False
    try:
        woke = run_job(Job(request_id, attempt, row["backend"], row["comfyui_prompt_id"], lease), resume=True)
    finally:
        if not woke:
            send_wakeups(1)
    return f"{request_id} attempt {attempt} resumed"


def start_backend_watch(url):
    async_task("generation.tasks.watch_backend", url, save=False)


def watch_backend(url):
    """Sleep until ``url``'s backoff expires, probe it; back → wake a worker per free slot,
    still down → watch again (while work is waiting; otherwise the reconciler probes it)."""
    state = BackendState.objects.filter(url=url).first()
    if state is None or state.is_healthy:
        return "healthy"
    if state.down_until:
        wait = (state.down_until - timezone.now()).total_seconds()
        time.sleep(min(max(0.0, wait), settings.GENERATION["BACKEND_BACKOFF_MAX_SECONDS"]))
    if backends.probe(url):
        wake_dispatcher(backends.free_slots())
        return "back"
    if GenerationRequest.objects.filter(status__in=[Status.QUEUED, Status.PENDING]).exists():
        start_backend_watch(url)
    return "still down"


def reconcile():
    from generation.reconciler import reconcile as run_reconciler

    return run_reconciler()


def deliver_webhook(request_id, attempt=1):
    from generation.webhooks import deliver_webhook as deliver

    return deliver(request_id, attempt=attempt)


SCHEDULES = {
    # name: (task, minutes between runs)
    "genonaut: reconcile requests and backends": ("generation.tasks.reconcile", 1),
}


def ensure_schedules():
    """Create or update every Django-Q schedule Genonaut needs; yield ``(name, created)``."""
    from django_q.models import Schedule

    for name, (func, minutes) in SCHEDULES.items():
        _, created = Schedule.objects.update_or_create(
            name=name, defaults={"func": func, "schedule_type": Schedule.MINUTES, "minutes": minutes, "repeats": -1})
        yield name, created
