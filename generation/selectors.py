"""Reads: the queries the API and the UI share."""

import datetime
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db.models import Count, Q

from generation.models import GenerationRequest
from generation.states import Status
from models_registry.models import AvailableModel, ModelType


def requests_visible_to(user):
    """The requests ``user`` may see: their own; staff see everyone's."""
    qs = GenerationRequest.objects.select_related("user")
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
    qs = filter_requests(GenerationRequest.objects.filter(user=user), filters or RequestFilters())
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
