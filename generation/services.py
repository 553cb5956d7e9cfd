"""Writes: the one place that drives a request from the outside (API, UI, admin, commands).

Workers drive requests from the inside through :mod:`generation.runner`; both change status
only through :mod:`generation.states`.
"""

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from generation import states
from generation.errors import NotCancellable, TooManyActiveRequests
from generation.models import GenerationRequest
from generation.params import RANDOM_SEED, validate_params
from generation.states import ACTIVE, WAITING, Status

logger = logging.getLogger(__name__)


def submit_generation(*, user, data, idempotency=None):
    """Validate ``data``, store a new request and queue it once the transaction commits.

    Returns ``(request, created)``. With an :class:`~generation.idempotency.Idempotency` whose key
    this user already used for the same call, the original request is returned and nothing new
    is stored; the same key used for a different call raises ``IdempotencyKeyReused``.
    Raises ``ParamsInvalid`` or ``TooManyActiveRequests``.
    """
    if idempotency is not None and (original := idempotency.original(user)) is not None:
        return original, False
    params = validate_params(data)
    limit = settings.GENERATION["MAX_ACTIVE_PER_USER"]
    try:
        with transaction.atomic():
            # Lock the user's row so two concurrent submits cannot both pass the limit check.
            get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk").first()
            active = GenerationRequest.objects.filter(user=user, status__in=list(ACTIVE)).count()
            if active >= limit:
                raise TooManyActiveRequests(limit)
            request = GenerationRequest.objects.create(user=user, **params.as_fields())
            if idempotency is not None:
                idempotency.remember(user=user, request=request)
            transaction.on_commit(lambda: queue_generation(request.pk, request=request))
    except IntegrityError:
        # a concurrent call with the same key committed first (it held the user lock): answer its request
        original = idempotency.original(user) if idempotency is not None else None
        if original is None:
            raise
        return original, False
    return request, True


# what may change between a submit's insert and its answer
STATE_FIELDS = ["status", "queued_at", "started_at", "finished_at", "updated_at", "backend", "attempts",
                "progress", "current_node", "current_step", "total_steps", "error", "error_detail", "regenerated_from"]


def queue_generation(request_id, *, request=None):
    """pending → queued, then wake a worker. Safe to call twice; a lost wake-up is re-sent by
    the reconciler, which finds queued requests with no live task.

    ``request``, the caller's instance of that row, is kept in step with it: given the values the
    transition wrote, or re-read when someone else moved the row first (so a submit answers
    without reading its row back)."""
    now = timezone.now()
    won = states.transition(request_id, Status.QUEUED, expect={Status.PENDING}, now=now)
    if request is not None:
        if won:
            request.status, request.queued_at, request.updated_at = Status.QUEUED, now, now
        else:
            request.refresh_from_db(fields=STATE_FIELDS)
    from generation.tasks import wake_dispatcher

    try:
        wake_dispatcher()
    except Exception:  # the broker being down must not fail the submit: the row is the truth
        logger.exception("could not enqueue a dispatch wake-up for %s; the reconciler will", request_id)


def regenerate_generation(*, request, user, same_seed=False, idempotency=None):
    """Submit a new request with ``request``'s parameters (a new random seed unless ``same_seed``).

    Returns ``(request, created)`` like :func:`submit_generation`."""
    sampler = dict(request.sampler_params or {})
    if not same_seed:
        sampler["seed"] = RANDOM_SEED
    data = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "checkpoint_model": request.checkpoint_model,
        "lora_models": request.lora_models,
        "width": request.width,
        "height": request.height,
        "batch_size": request.batch_size,
        "sampler_params": sampler,
        "webhook_url": request.webhook_url,
    }
    new, created = submit_generation(user=user, data=data, idempotency=idempotency)
    if created:
        GenerationRequest.objects.filter(pk=new.pk).update(regenerated_from=request)
        new.regenerated_from = request
    return new, created


def cancel_generation(*, request):
    """Cancel an active request; return the refreshed request.

    Waiting requests are cancelled in the database at once. A running one is removed from its
    backend's queue, then interrupted by prompt id, then marked cancelled — in that order, so
    ComfyUI never starts work we already gave up. A backend that does not answer does not
    stop the cancel: the worker following the job sees the cancelled row and stops too.
    Raises ``NotCancellable`` when the request had already finished.
    """
    if request.status in WAITING and states.transition(request.pk, Status.CANCELLED, expect=WAITING):
        request.refresh_from_db()
        return request
    request.refresh_from_db()
    if request.status == Status.RUNNING:
        from generation.runner import stop_on_backend

        stop_on_backend(request)
    if request.status in ACTIVE:
        # Any active state: once the prompt is gone from ComfyUI, its worker may requeue the
        # request (running → queued) before this write lands; the person still asked to cancel.
        states.transition(request.pk, Status.CANCELLED, expect=ACTIVE)
    request.refresh_from_db()
    if request.status != Status.CANCELLED:
        raise NotCancellable(f"The request is already {request.status}.")
    return request


def delete_generation(*, request):
    """Cancel the request if it is active, otherwise delete it with its files."""
    if request.status in ACTIVE:
        return cancel_generation(request=request)
    from generation.storage import delete_request_files

    delete_request_files(request)
    request.delete()
    return None
