"""Django-Q tasks: thin entry points. The broker only carries wake-ups; the rows hold the truth.

Every task is idempotent: a wake-up that finds no free slot or no queued work returns, and a
re-delivered ``resume`` whose lease no longer matches the row does nothing. They are enqueued
only through :mod:`generation.enqueue`, the one module that names them and picks each one's queue:

- ``dispatch``: claim the next (request, backend) pair and run that job here.
- ``resume``: re-attach to a running job whose worker died (sent by the reconciler).
- ``probe_backend``: a down backend's probe, scheduled for when its backoff expires; wakes workers.
- ``reconcile``: the every-minute safety net (``manage.py setup_schedules``).
- ``deliver_webhook``: POST a finished request's signed webhook.
- ``stop_cancelled``: stop a cancelled request's prompt on its backend (cancel writes only the decision).
"""

import logging
import time

from django.utils import timezone

from generation import backends, enqueue
from generation.dispatcher import claim_next
from generation.models import BackendState, GenerationRequest
from generation.runner import Job, run_job
from generation.states import Status

logger = logging.getLogger(__name__)


def dispatch():
    """Claim the next job and run it to its end in this worker; then wake the next dispatch."""
    claim = claim_next()
    if claim is None:
        return "idle"
    if GenerationRequest.objects.filter(status=Status.QUEUED).exists():
        enqueue.wake_dispatcher()  # fill the other free slots in parallel, one wake-up at a time
    ending = None
    try:
        ending = run_job(Job(claim.request_id, claim.attempt, claim.backend, claim.prompt_id, claim.lease))
    finally:
        _wake_after(ending)
    return f"{claim.request_id} attempt {claim.attempt} on {claim.backend}"


def resume(request_id, attempt, lease):
    """Re-attach to attempt ``attempt`` of a running request, if the reconciler's lease still holds."""
    row = GenerationRequest.objects.filter(pk=request_id, status=Status.RUNNING, attempts=attempt,
                                           run__attempt=attempt, run__heartbeat_at=lease).values(
        "backend", "comfyui_prompt_id").first()
    if row is None:
        return "not ours any more"
    ending = None
    try:
        ending = run_job(Job(request_id, attempt, row["backend"], row["comfyui_prompt_id"], lease), resume=True)
    finally:
        _wake_after(ending)
    return f"{request_id} attempt {attempt} resumed"


def _wake_after(ending):
    """A job ended: wake a dispatcher for the slot it freed (unless it did already), and, when it
    requeued its request with a backoff, wait that out here and wake one for the request. The wait
    is a few seconds (capped by ``REQUEUE_BACKOFF_MAX_SECONDS``) in the worker the job had anyway;
    a worker that dies meanwhile leaves it to the reconciler's lost-wake-up check."""
    if ending is None or not ending.woke:
        enqueue.send_wakeups(1)
    if ending is not None and ending.retry_at is not None:
        time.sleep(max(0.0, (ending.retry_at - timezone.now()).total_seconds()))
        enqueue.send_wakeups(1)


def probe_backend(url):
    """A down backend's scheduled probe (``enqueue.watch_backend``): back → wake a worker per free slot;
    still down → probe again when its new backoff expires, while work is waiting (otherwise the
    reconciler's every-minute probe is enough)."""
    state = BackendState.objects.filter(url=url).first()
    if state is None or state.is_healthy:
        return "healthy"
    if backends.probe(url):
        enqueue.wake_dispatcher(backends.free_slots())
        return "back"
    if GenerationRequest.objects.filter(status__in=[Status.QUEUED, Status.PENDING]).exists():
        enqueue.watch_backend(url)
    return "still down"


def stop_cancelled(request_id):
    """Stop a cancelled request's prompt on its backend; the request shows how that went."""
    from generation.services import stop_cancelled_prompt

    return stop_cancelled_prompt(request_id)


def reconcile():
    from generation.reconciler import reconcile as run_reconciler

    return run_reconciler()


def deliver_webhook(request_id, attempt=1):
    from generation.webhooks import deliver_webhook as deliver

    return deliver(request_id, attempt=attempt)
