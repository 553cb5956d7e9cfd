"""The dispatcher: which queued request goes to which backend next.

One decision at a time, for the whole deployment: :func:`claim_next` locks every
``BackendState`` row (``SELECT … FOR UPDATE``, in URL order so lockers never deadlock), so
dispatchers on all worker hosts take turns. The lock is held for a few queries only.

Order between users is round-robin (as InvokeAI does, not global FIFO): the next user is the
one with queued work whose most recent dispatch is the oldest (never-dispatched users first;
kept in one small :class:`~generation.models.DispatchTurn` row per user, written by the claim),
and each user's requests go in submission order. Only requests that a free backend can run are
considered: a backend must have every node class and model file a request needs (capabilities
recorded from its ``/object_info``). Model affinity bends that order a little:
within the first :data:`AFFINITY_WINDOW` requests of the fair order, a request whose checkpoint
a free backend already has loaded may jump ahead; every request it jumps over counts a skip,
and a request skipped ``GENERATION["AFFINITY_MAX_SKIPS"]`` times is dispatched next, whatever
it costs. A free backend is never left idle while work waits: every call that finds a free
slot and a queued request dispatches something.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Min, Q, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from generation import lifecycle
from generation.backends import sync_backends
from generation.models import BackendState, DispatchTurn, GenerationRequest, RequirementSet
from generation.states import Status

AFFINITY_WINDOW = 16  # how far down the fair order affinity may look
PROMPT_ID_NAMESPACE = uuid.UUID("6f1c2a0e-9b1d-4c55-8a53-3b7e0f2d9c41")
_CLAIM_RETRIES = 5  # a request cancelled between our read and our update is skipped; try the next


@dataclass(frozen=True)
class Claim:
    """A request now ``running`` on ``backend`` as attempt ``attempt`` with ``prompt_id``."""

    request_id: uuid.UUID
    backend: str
    attempt: int
    prompt_id: str
    lease: datetime  # the heartbeat_at written by the claim: the worker's proof of ownership


def prompt_id_for(request_id, attempt):
    """The ComfyUI prompt id of one attempt: derived, so a re-delivered task finds the same prompt."""
    return str(uuid.uuid5(PROMPT_ID_NAMESPACE, f"{request_id}/{attempt}"))


def filename_prefix_for(request_id, attempt):
    """SaveImage names files ``{prefix}_{counter:05}_.png``: unique per attempt, never shared."""
    return f"genonaut/{request_id}_a{attempt}"


@dataclass
class _Candidate:
    id: uuid.UUID
    user_id: int
    checkpoint: str
    attempts: int
    affinity_skips: int
    requirements: str | None = None  # RequirementSet key; None: runs anywhere


@dataclass
class _Backend:
    url: str
    capacity: int
    running: int
    loaded_checkpoint: str

    @property
    def free(self):
        return self.capacity - self.running


def fair_order(limit=AFFINITY_WINDOW, *, requirements=None):
    """The first ``limit`` queued requests in fair (round-robin by user) order.

    ``requirements``, if given, keeps only requests with one of those requirement sets (or none).
    Users are ordered by their :class:`~generation.models.DispatchTurn` (never-dispatched first, then
    least recently served), so the order costs O(queued rows + users), never a scan of history.
    """
    queued = GenerationRequest.objects.filter(status=Status.QUEUED)
    if requirements is not None:
        queued = queued.filter(Q(requirements_id__in=list(requirements)) | Q(requirements_id__isnull=True))
    users = list(queued.values("user_id").annotate(oldest=Min("created_at")).order_by("oldest")[:200])
    if not users:
        return []
    last_dispatch = dict(DispatchTurn.objects.filter(user_id__in=[u["user_id"] for u in users])
                         .values_list("user_id", "last_dispatched_at"))
    # never-dispatched users first (FIFO among them by their oldest request), then least recently served
    users.sort(key=lambda u: (last_dispatch.get(u["user_id"]) is not None,
                              last_dispatch.get(u["user_id"]) or u["oldest"], u["oldest"]))
    users = users[:limit]
    rank = {u["user_id"]: i for i, u in enumerate(users)}
    per_user = -(-limit // len(users))  # each user contributes at most this many to the window
    rows = (queued.filter(user_id__in=list(rank))
            .annotate(turn=Window(RowNumber(), partition_by=[F("user_id")], order_by=[F("created_at"), F("id")]))
            .filter(turn__lte=per_user)
            .values_list("id", "user_id", "checkpoint_model", "attempts", "affinity_skips", "requirements_id", "turn"))
    ordered = sorted(rows, key=lambda r: (r[6], rank[r[1]]))
    return [_Candidate(*row[:6]) for row in ordered[:limit]]


def choose(candidates, backends, *, affinity=True, max_skips=None, eligible=None):
    """Pick ``(candidate, backend, skipped)`` from the fair-ordered ``candidates`` and the
    backends with free slots; ``skipped`` are the candidates jumped over. Pure: no queries.

    ``eligible`` maps a requirement-set key to the URLs of the backends that can run it (a
    candidate without requirements, or no ``eligible`` at all, may go anywhere); candidates no
    free backend can run are passed over, not counted as skipped.

    Without affinity: the head of the fair order goes to the least loaded free backend it may use.
    With affinity: (1) the head goes to such a backend that has its checkpoint loaded; else
    (2) if the head has been skipped ``max_skips`` times it goes anyway; else (3) the first
    request in the window whose checkpoint a free backend it may use has loaded goes there; else
    (4) the head goes to the backend whose loaded checkpoint the window wants least.
    """
    free = sorted((b for b in backends if b.free > 0), key=lambda b: (b.running - b.capacity, b.running, b.url))

    def usable(candidate):
        if eligible is None or candidate.requirements is None:
            return free
        urls = eligible.get(candidate.requirements, ())
        return [b for b in free if b.url in urls]

    candidates = [c for c in candidates if usable(c)]
    if not candidates:
        return None
    head = candidates[0]
    head_free = usable(head)
    if not affinity:
        return head, head_free[0], []
    max_skips = settings.GENERATION["AFFINITY_MAX_SKIPS"] if max_skips is None else max_skips
    for backend in head_free:
        if backend.loaded_checkpoint == head.checkpoint:
            return head, backend, []
    if head.affinity_skips < max_skips:
        for index, candidate in enumerate(candidates[1:], start=1):
            for backend in usable(candidate):
                if backend.loaded_checkpoint and backend.loaded_checkpoint == candidate.checkpoint:
                    return candidate, backend, candidates[:index]
    wanted = {}
    for candidate in candidates[1:]:
        wanted[candidate.checkpoint] = wanted.get(candidate.checkpoint, 0) + 1
    backend = min(head_free, key=lambda b: (wanted.get(b.loaded_checkpoint, 0) if b.loaded_checkpoint else 0,
                                            b.running, b.url))
    return head, backend, []


_capabilities = {}  # (url, capabilities_at) -> (frozenset of node classes, {folder: frozenset}), per process


def _capabilities_of(row):
    """What a locked ``BackendState`` row can run, or ``None`` when it was never read (runs anything;
    the runner checks the live ``object_info`` at dispatch)."""
    if row.capabilities_at is None:
        return None
    key = (row.url, row.capabilities_at)
    if key not in _capabilities:
        if len(_capabilities) > 256:
            _capabilities.clear()
        _capabilities[key] = (frozenset(row.node_classes),
                              {folder: frozenset(names) for folder, names in (row.model_lists or {}).items()})
    return _capabilities[key]


def eligibility(rows, free_urls):
    """``{requirement-set key: URLs of free backends that can run it}`` for the sets queued requests need."""
    keys = set(GenerationRequest.objects.filter(status=Status.QUEUED, requirements_id__isnull=False)
               .values_list("requirements_id", flat=True).distinct().order_by())
    if not keys:
        return {}
    capabilities = {row.url: _capabilities_of(row) for row in rows if row.url in free_urls}
    eligible = {}
    for requirement in RequirementSet.objects.filter(key__in=keys):
        needs = requirement.as_requirements()
        eligible[requirement.key] = {url for url, caps in capabilities.items()
                                     if caps is None or not needs.missing_on(*caps)}
    return eligible


def claim_next(*, affinity=None):
    """Claim the next (request, backend) pair: mark the request running on that backend and
    return a :class:`Claim`, or ``None`` when no backend has a free slot or nothing is queued
    that a free backend can run.

    The claim is one conditional update (queued → running, ``attempts`` +1, derived
    ``comfyui_prompt_id``, ``deadline_at``, ``heartbeat_at``) made while holding the lock on
    every backend row, so capacity is never exceeded and no request is claimed twice. A request
    goes only to a backend whose recorded capabilities hold every node class and model file it needs.
    """
    affinity = settings.GENERATION["AFFINITY"] if affinity is None else affinity
    sync_backends()
    urls = [b["url"] for b in settings.COMFYUI_BACKENDS]
    for _ in range(_CLAIM_RETRIES):
        with transaction.atomic():
            rows = list(BackendState.objects.select_for_update().filter(url__in=urls, is_healthy=True)
                        .order_by("url"))
            if not rows:
                return None
            # a job whose prompt ComfyUI has finished (outputs being stored) no longer holds a slot
            running = dict(GenerationRequest.objects.filter(status=Status.RUNNING, executed_at__isnull=True,
                                                            backend__in=[r.url for r in rows])
                           .values("backend").annotate(n=Count("id")).values_list("backend", "n"))
            backends = [_Backend(r.url, r.capacity, running.get(r.url, 0), r.loaded_checkpoint) for r in rows]
            free_urls = {b.url for b in backends if b.free > 0}
            if not free_urls:
                return None
            eligible = eligibility(rows, free_urls)
            runnable = {key for key, able in eligible.items() if able}
            picked = choose(fair_order(requirements=runnable), backends, affinity=affinity, eligible=eligible)
            if picked is None:
                return None
            candidate, backend, skipped = picked
            claim = _claim(candidate, backend.url)
            if claim is None:
                continue  # cancelled (or claimed) since we read it: decide again
            if skipped:
                GenerationRequest.objects.filter(pk__in=[c.id for c in skipped], status=Status.QUEUED).update(
                    affinity_skips=F("affinity_skips") + 1)
            DispatchTurn.objects.update_or_create(user_id=candidate.user_id,
                                                  defaults={"last_dispatched_at": claim.lease})
            if candidate.checkpoint:  # a graph without a checkpoint leaves the loaded one in place
                BackendState.objects.filter(url=backend.url).update(loaded_checkpoint=candidate.checkpoint,
                                                                    updated_at=timezone.now())
            return claim
    return None


def _claim(candidate, backend_url):
    now = timezone.now()
    attempt = candidate.attempts + 1
    prompt_id = prompt_id_for(candidate.id, attempt)
    won = lifecycle.transition(
        candidate.id, Status.RUNNING, expect={Status.QUEUED}, where={"attempts": candidate.attempts},
        backend=backend_url, attempts=attempt, comfyui_prompt_id=prompt_id, heartbeat_at=now, started_at=now,
        deadline_at=now + timedelta(seconds=settings.GENERATION["JOB_DEADLINE_SECONDS"]),
        affinity_skips=0, progress=0.0, current_node="", current_step=0, total_steps=0, executed_at=None,
    )
    return Claim(candidate.id, backend_url, attempt, prompt_id, now) if won else None
