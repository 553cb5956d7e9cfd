"""The request status state machine: the one owner of every status change.

pending → queued → running → completed | failed | cancelled, plus two recoveries:
running → queued (the backend lost the prompt or the worker died; the job is dispatched again)
and pending/queued → failed (validation or attempts exhausted).

Every transition is a single conditional ``UPDATE … WHERE id = %s AND status IN (allowed)``;
the database decides the winner when two actors race (a cancel and a completion, two
workers), so exactly one of them sees ``True``. Terminal states never change.

This module only decides; what follows a change (webhooks, events) is run by
:mod:`generation.lifecycle`, which every actor calls instead of :func:`transition` directly.
"""

from typing import NamedTuple

from django.db import models
from django.db.models import Exists, OuterRef
from django.utils import timezone


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
ACTIVE = frozenset({Status.PENDING, Status.QUEUED, Status.RUNNING})
WAITING = frozenset({Status.PENDING, Status.QUEUED})

# to-state → the states it may be entered from
ALLOWED_FROM = {
    Status.QUEUED: frozenset({Status.PENDING, Status.RUNNING}),
    Status.RUNNING: frozenset({Status.QUEUED}),
    Status.COMPLETED: frozenset({Status.RUNNING}),
    Status.FAILED: frozenset({Status.PENDING, Status.QUEUED, Status.RUNNING}),
    Status.CANCELLED: frozenset({Status.PENDING, Status.QUEUED, Status.RUNNING}),
}

# which timestamp a transition stamps
_STAMP = {
    Status.QUEUED: "queued_at",
    Status.RUNNING: "started_at",
    Status.COMPLETED: "finished_at",
    Status.FAILED: "finished_at",
    Status.CANCELLED: "finished_at",
}


class Lease(NamedTuple):
    """A worker's hold on attempt ``attempt`` of a running request: the ``RunState.heartbeat_at`` it wrote last."""

    attempt: int
    heartbeat_at: object  # datetime


class InvalidTransition(ValueError):
    """A transition the machine never allows (a programming error, not a lost race)."""


def transition(request_id, to, *, expect=None, where=None, lease=None, now=None, **fields):
    """Move one request to ``to`` if it is still in an allowed state; return whether we won.

    ``expect`` narrows the allowed from-states (e.g. only ``{running}``); ``where`` adds
    conditions such as ``{"attempts": 2}`` so a worker from an older attempt cannot finish
    a job that was since dispatched again; ``lease`` (a :class:`Lease`) also requires that attempt
    and that the lease in its ``RunState`` is still the caller's (nobody took the job over).
    ``fields`` are written in the same UPDATE. ``now`` (default: the current time) is the stamp
    written, for a caller that mirrors the row in memory.
    """
    from generation.models import GenerationRequest, RunState

    to = Status(to)
    if to not in ALLOWED_FROM:
        raise InvalidTransition(f"nothing may move to {to}")
    allowed = ALLOWED_FROM[to]
    if expect is not None:
        expect = {Status(s) for s in expect}
        if not expect <= allowed:
            raise InvalidTransition(f"{sorted(expect - allowed)} → {to} is not a transition")
        allowed = frozenset(expect)
    now = now or timezone.now()
    fields.setdefault(_STAMP[to], now)
    rows = GenerationRequest.objects.filter(pk=request_id, status__in=list(allowed), **(where or {}))
    if lease is not None:
        rows = rows.filter(attempts=lease.attempt).filter(Exists(RunState.objects.filter(
            request_id=OuterRef("pk"), attempt=lease.attempt, heartbeat_at=lease.heartbeat_at)))
    return rows.update(status=to, updated_at=now, **fields) == 1


def can_transition(current, to):
    return Status(current) in ALLOWED_FROM.get(Status(to), ())
