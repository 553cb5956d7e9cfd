"""Reads: the queries the API and the UI share."""

from django.core.exceptions import ValidationError
from django.db.models import Count, Q

from generation.models import GenerationRequest
from generation.states import Status


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


def history_for_user(user, *, status=None, newest_first=True):
    """``user``'s own requests for the history page, optionally one status, by creation date."""
    qs = GenerationRequest.objects.filter(user=user).select_related("run")
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("-created_at" if newest_first else "created_at")


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
