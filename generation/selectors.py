"""Reads: the queries the API and the UI share."""

import datetime
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db.models import Count, Q
from django.utils import timezone

from generation.models import BackendState, GenerationRequest
from generation.states import WAITING, Status
from models_registry.models import AvailableModel, ModelType

NO_BACKEND_REACHABLE = "no_backend_reachable"
RETRYING = "retrying"


def requests_visible_to(user):
    """The requests ``user`` may see: their own; staff see everyone's."""
    qs = GenerationRequest.objects.select_related("user", "run")
    return qs if user.is_staff else qs.filter(user=user)


def request_for_user(*, user, request_id):
    """One request ``user`` may see, or ``None`` (never another user's: callers answer 404)."""
    try:
        return requests_visible_to(user).get(pk=request_id)
    except (GenerationRequest.DoesNotExist, ValidationError, ValueError, TypeError):
        return None  # a malformed id is as unknown as another user's


def queue_position(request):
    """1-based place of a queued request in the fair (round-robin by user) order, else ``None``.

    Round-robin: if this is the user's k-th oldest queued request, every other user with
    queued requests goes before it at most k times (once more if their turn comes first,
    approximated by their oldest request being older than ours). One query.
    """
    return queue_positions([request]).get(request.pk)


def queue_positions(requests):
    """``{pk: position}`` for the waiting ones among ``requests`` (see :func:`queue_position`), in one
    query for all of them: per user with waiting requests, how many wait and, for each distinct
    ``created_at`` of ours, how many of theirs are older — which is ``k`` for the owner and "their
    turn comes first" for everyone else. No query when none of ``requests`` is waiting."""
    waiting_rows = [r for r in requests if r.status in (Status.PENDING, Status.QUEUED)]
    if not waiting_rows:
        return {}
    moments = {moment: f"older_{i}" for i, moment in enumerate(sorted({r.created_at for r in waiting_rows}))}
    older = {key: Count("id", filter=Q(created_at__lt=moment)) for moment, key in moments.items()}
    per_user = list(GenerationRequest.objects.filter(status__in=[Status.PENDING, Status.QUEUED])
                    .values("user_id").annotate(n=Count("id"), **older).order_by())
    positions = {}
    for request in waiting_rows:
        key = moments[request.created_at]
        k = next((row[key] for row in per_user if row["user_id"] == request.user_id), 0)
        ahead = k
        for row in per_user:
            if row["user_id"] != request.user_id:
                ahead += min(row["n"], k + (1 if row[key] else 0))
        positions[request.pk] = ahead + 1
    return positions


def reachable_backends():
    """The configured backends in rotation that have answered at least once (what ``/readyz`` calls
    answering): a request can start only on one of these."""
    from generation.backends import configured_urls

    return list(BackendState.objects.filter(url__in=configured_urls(), is_healthy=True, last_ok_at__isnull=False)
                .only("url", "capabilities_at"))


def waiting_reason(request):
    """Why a waiting request waits for more than its turn, or ``None`` (see :func:`waiting_reasons`)."""
    return waiting_reasons([request]).get(request.pk)


def waiting_reasons(requests, *, now=None):
    """``{pk: {"code", "message"[, "retry_at"]}}`` for the waiting ones among ``requests`` that wait for
    something other than their turn:

    - ``retrying``: requeued after a fault, it may not start before ``retry_at`` (its backoff);
    - ``no_backend_reachable``: no backend that can run it (its node classes and model files) is in
      rotation and has answered, so its place in the queue means nothing until one does.

    No query when none of ``requests`` is waiting; otherwise one for the backends (the requirement
    sets come from the dispatcher's per-process cache)."""
    waiting = [r for r in requests if r.status in WAITING]
    if not waiting:
        return {}
    from generation.dispatcher import able_to_run

    now = now or timezone.now()
    reasons = {}
    rows = None
    for request in waiting:
        if request.not_before and request.not_before > now:
            reasons[request.pk] = {"code": RETRYING, "retry_at": request.not_before,
                                   "message": "Retrying after a failure on the backend, once its backoff is over."}
            continue
        if rows is None:
            rows = reachable_backends()
            able = able_to_run(rows, sorted({r.requirements_id for r in waiting if r.requirements_id}))
        runnable = bool(rows) if request.requirements_id is None else bool(able.get(request.requirements_id))
        if not runnable:
            reasons[request.pk] = {"code": NO_BACKEND_REACHABLE,
                                   "message": "No backend that can run this request is reachable; it waits until "
                                              "one answers."}
    return reasons


SEARCH_WORDS = 8  # words of a search that count (each must appear in the prompt)


@dataclass(frozen=True)
class RequestFilters:
    """What a request list may be narrowed by; the API's query string and the History page's form
    both become one of these (each validates its own input), and :func:`filter_requests` applies it.

    ``created_after`` is inclusive, ``created_before`` exclusive (aware datetimes).
    """

    statuses: tuple = ()
    checkpoint: str | None = None  # the checkpoint name as sent, exact
    workflow: str | None = None  # a workflow slug
    created_after: datetime.datetime | None = None
    created_before: datetime.datetime | None = None
    search: str = ""  # every word must appear in the prompt, case-insensitive
    user: object = None  # staff listing one user's requests

    @property
    def search_words(self):
        return self.search.split()[:SEARCH_WORDS]

    def __bool__(self):
        return bool(self.statuses or self.checkpoint is not None or self.workflow is not None or self.created_after
                    or self.created_before or self.search_words or self.user is not None)


def filter_requests(queryset, filters):
    """``queryset`` narrowed by ``filters`` (a :class:`RequestFilters`): the one home of these rules."""
    if filters.statuses:
        queryset = queryset.filter(status__in=list(filters.statuses))
    if filters.checkpoint is not None:
        queryset = queryset.filter(checkpoint_model=filters.checkpoint)
    if filters.workflow is not None:
        queryset = queryset.filter(workflow_slug=filters.workflow)
    if filters.created_after is not None:
        queryset = queryset.filter(created_at__gte=filters.created_after)
    if filters.created_before is not None:
        queryset = queryset.filter(created_at__lt=filters.created_before)
    for word in filters.search_words:
        queryset = queryset.filter(prompt__icontains=word)
    if filters.user is not None:
        queryset = queryset.filter(user=filters.user)
    return queryset


def history_for_user(user, *, filters=None, newest_first=True):
    """``user``'s own requests for the history page, narrowed by ``filters``, by creation date."""
    qs = filter_requests(GenerationRequest.objects.filter(user=user).select_related("run"),
                         filters or RequestFilters())
    return qs.order_by("-created_at" if newest_first else "created_at")


def checkpoint_names():
    """Every checkpoint name the registry lists, active or not, sorted: what the History filter offers.

    A request's checkpoint row is protected from deletion, so every checkpoint a request was made
    with is here, retired ones too; a bounded catalogue instead of a DISTINCT over a history that
    may hold millions of rows."""
    return list(AvailableModel.objects.filter(type=ModelType.CHECKPOINT).order_by("name")
                .values_list("name", flat=True))


def adjacent_images(*, request, index):
    """The images before and after ``request``'s image ``index`` among its owner's images.

    Order is the history's: newest request first, a request's images in output order.
    Returns ``(previous, next)``, each ``(request, index)`` or ``None``.
    """
    with_images = (GenerationRequest.objects.filter(user_id=request.user_id, status=Status.COMPLETED)
                   .exclude(outputs=[]).only("id", "outputs", "created_at"))
    if index > 0:
        previous = (request, index - 1)
    else:
        newer = with_images.filter(created_at__gt=request.created_at).order_by("created_at").first()
        previous = (newer, len(newer.outputs) - 1) if newer else None
    if index + 1 < len(request.outputs or []):
        following = (request, index + 1)
    else:
        older = with_images.filter(created_at__lt=request.created_at).order_by("-created_at").first()
        following = (older, 0) if older else None
    return previous, following
