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
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F
from django.utils import timezone

from generation import lifecycle
from generation.backends import sync_backends
from generation.models import BackendState, DispatchTurn, GenerationRequest, RequirementSet, RunState
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
    lease: datetime  # the RunState.heartbeat_at written by the claim: the worker's proof of ownership


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


def fair_order(limit=AFFINITY_WINDOW, *, requirements=None, now=None):
    """The first ``limit`` queued requests that may start now, in fair (round-robin by user) order.

    ``requirements``, if given, keeps only requests with one of those requirement sets (or none);
    a request whose ``not_before`` (retry backoff) lies after ``now`` waits. Users are ordered by
    their :class:`~generation.models.DispatchTurn` (never-dispatched first, then least recently
    served; FIFO by their oldest such request among equals), and each user's requests go in
    submission order, interleaved (user1 #1, user2 #1, …, user1 #2, …).

    Cost: one query that walks the queued rows' partial index once per waiting user (a loose
    index scan), reads each one's first request and turn, and answers the first ``limit`` users'
    — O(users), whatever the history or the queue's length — plus, only when fewer than ``limit``
    users wait, one query for their next requests. Never a scan of history, never a sort of the
    whole queue.
    """
    now = now or timezone.now()
    keys = None if requirements is None else sorted(requirements)
    heads = _waiting_heads(now, keys, limit)
    if not heads:
        return []
    if len(heads) >= limit:
        return [_Candidate(*head[:6]) for head in heads]
    per_user = -(-limit // len(heads))  # each user contributes at most this many to the window
    rank = {head[1]: i for i, head in enumerate(heads)}
    rows = _first_requests_of([head[1] for head in heads], per_user, now, keys)
    turns = {}
    ordered = []
    for row in rows:  # each user's rows arrive in submission order
        turns[row[1]] = turns.get(row[1], 0) + 1
        ordered.append((turns[row[1]], rank[row[1]], row))
    ordered.sort(key=lambda item: item[:2])
    return [_Candidate(*row[:6]) for _, _, row in ordered[:limit]]


_COLUMNS = ("id", "user_id", "checkpoint_model", "attempts", "affinity_skips", "requirements_id", "created_at")


def _may_start(alias, now, keys):
    """SQL (and its parameters) for "queued request ``alias`` may start now and has a runnable requirement set"."""
    sql = f"{alias}.status = %s AND ({alias}.not_before IS NULL OR {alias}.not_before <= %s)"
    params = [Status.QUEUED.value, connection.ops.adapt_datetimefield_value(now)]
    if keys is not None:
        # (genreq_queued_req_idx leaves NULLs out, so "IS NULL" never becomes a bitmap scan of every
        # queued request without requirements: the planner walks the user's rows in order instead)
        placeholders = ", ".join(["%s"] * len(keys))
        sql += f" AND ({alias}.requirements_id IS NULL" + (f" OR {alias}.requirements_id IN ({placeholders}))"
                                                           if keys else ")")
        params += keys
    return sql, params


def _waiting_heads(now, keys, limit):
    """The first request (the ``_COLUMNS``) of each of the first ``limit`` users in fair order among
    those with queued work that may start now: never-dispatched users first (FIFO among them by that
    request), then the least recently served.

    Raw SQL, because the ORM has no recursive CTE: ``waiting`` is a loose index scan over the partial
    index ``genreq_queued_user_idx`` (one index probe per user, not one row per queued request); the
    head of each user is one more probe in the same index. Portable to SQLite (no LATERAL)."""
    table = GenerationRequest._meta.db_table
    turns = DispatchTurn._meta.db_table
    may_start, params = _may_start("r", now, keys)
    columns = ", ".join(f"head.{column}" for column in _COLUMNS)
    sql = f"""
        WITH RECURSIVE waiting(user_id) AS (
            SELECT MIN(user_id) FROM {table} WHERE status = %s
            UNION ALL
            SELECT (SELECT MIN(q.user_id) FROM {table} q WHERE q.status = %s AND q.user_id > waiting.user_id)
            FROM waiting WHERE waiting.user_id IS NOT NULL
        )
        SELECT {columns}
        FROM waiting
        JOIN {table} head ON head.id = (
            SELECT r.id FROM {table} r WHERE r.user_id = waiting.user_id AND {may_start}
            ORDER BY r.created_at, r.id LIMIT 1)
        LEFT JOIN {turns} turn ON turn.user_id = waiting.user_id
        ORDER BY turn.last_dispatched_at IS NOT NULL, COALESCE(turn.last_dispatched_at, head.created_at),
                 head.created_at, head.id
        LIMIT %s
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [Status.QUEUED.value, Status.QUEUED.value, *params, limit])
        return [_converted(row) for row in cursor.fetchall()]


def _first_requests_of(user_ids, per_user, now, keys):
    """The first ``per_user`` requests (``_COLUMNS``) of each of ``user_ids`` that may start now, each
    user's in submission order: one index range per user (few users: fewer than the window)."""
    table = GenerationRequest._meta.db_table
    may_start, params = _may_start("r", now, keys)
    columns = ", ".join(f"r.{column}" for column in _COLUMNS)
    parts, values = [], []
    for n, user_id in enumerate(user_ids):
        parts.append(f"SELECT * FROM (SELECT {columns} FROM {table} r WHERE r.user_id = %s AND {may_start} "
                     f"ORDER BY r.created_at, r.id LIMIT %s) AS u{n}")
        values += [user_id, *params, per_user]
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), values)
        rows = [_converted(row) for row in cursor.fetchall()]
    order = {user_id: n for n, user_id in enumerate(user_ids)}
    return sorted(rows, key=lambda row: (order[row[1]], row[6], str(row[0])))


def _converted(row):
    """A raw row as the ORM would give it (SQLite returns UUIDs and datetimes as text)."""
    converted = list(row)
    if not isinstance(converted[0], uuid.UUID):
        converted[0] = uuid.UUID(str(converted[0]))
    if isinstance(converted[6], str):
        moment = datetime.fromisoformat(converted[6])
        converted[6] = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return converted


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
_requirement_sets = {}  # key -> Requirements; a key is the hash of its content, so an entry never goes stale
_able = {}  # (requirement key, url, capabilities_at) -> whether that backend can run that set


def _capabilities_of(row):
    """What a ``BackendState`` row can run, or ``None`` when it was never read (runs anything; the runner
    checks the live ``object_info`` at dispatch). Read from the database once per recorded version:
    rows are loaded without their (large) capability columns."""
    if row.capabilities_at is None:
        return None
    key = (row.url, row.capabilities_at)
    if key not in _capabilities:
        if len(_capabilities) > 256:
            _capabilities.clear()
        nodes, lists = BackendState.objects.filter(pk=row.pk).values_list("node_classes", "model_lists").get()
        _capabilities[key] = (frozenset(nodes), {folder: frozenset(names) for folder, names in (lists or {}).items()})
    return _capabilities[key]


def _requirements(keys):
    """``{key: Requirements}`` for ``keys`` (read from the database once per process)."""
    unknown = [key for key in keys if key not in _requirement_sets]
    if unknown:
        if len(_requirement_sets) > 4096:
            _requirement_sets.clear()
        for requirement in RequirementSet.objects.filter(key__in=unknown):
            _requirement_sets[requirement.key] = requirement.as_requirements()
    return {key: _requirement_sets[key] for key in keys if key in _requirement_sets}


def queued_requirement_keys():
    """The distinct requirement sets queued requests need: a loose index scan over the partial index
    ``genreq_queued_req_idx`` (one probe per distinct set, not one row per queued request)."""
    table = GenerationRequest._meta.db_table
    sql = f"""
        WITH RECURSIVE needed(k) AS (
            SELECT MIN(requirements_id) FROM {table} WHERE status = %s AND requirements_id IS NOT NULL
            UNION ALL
            SELECT (SELECT MIN(q.requirements_id) FROM {table} q
                    WHERE q.status = %s AND q.requirements_id IS NOT NULL AND q.requirements_id > needed.k)
            FROM needed WHERE needed.k IS NOT NULL
        )
        SELECT k FROM needed WHERE k IS NOT NULL
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [Status.QUEUED.value, Status.QUEUED.value])
        return [row[0] for row in cursor.fetchall()]


def able_to_run(rows, keys):
    """``{requirement-set key: URLs among the ``BackendState`` ``rows`` whose recorded capabilities hold
    it}`` (a backend whose capabilities were never read counts as able: the runner checks it). Each
    (set, backend, recorded version) is judged once per process."""
    needs = _requirements(keys)
    able = {key: set() for key in needs}
    for row in rows:
        for key, requirements in needs.items():
            memo = (key, row.url, row.capabilities_at)
            if memo not in _able:
                if len(_able) > 16384:
                    _able.clear()
                caps = _capabilities_of(row)
                _able[memo] = caps is None or not requirements.missing_on(*caps)
            if _able[memo]:
                able[key].add(row.url)
    return able


def eligibility(rows, free_urls):
    """``{requirement-set key: URLs of free backends that can run it}`` for the sets queued requests need."""
    keys = queued_requirement_keys()
    if not keys:
        return {}
    return able_to_run([row for row in rows if row.url in free_urls], keys)


def _locked_backends(urls):
    """The configured backends' rows, locked in URL order (created or corrected first if settings changed)."""
    locked = (BackendState.objects.select_for_update().filter(url__in=urls).order_by("url")
              .only("url", "capacity", "is_healthy", "loaded_checkpoint", "capabilities_at"))
    rows = list(locked)
    capacity = {b["url"]: b["capacity"] for b in settings.COMFYUI_BACKENDS}
    if len(rows) != len(urls) or any(row.capacity != capacity[row.url] for row in rows):
        sync_backends()
        rows = list(locked.all())
    return rows


def _window(rows, free_urls):
    """The fair-order window of requests the free backends may run, and ``eligible`` for :func:`choose`.

    Usually every request in the window can run on some free backend: then the window read without
    any requirement filter is the filtered one (a user's place does not depend on it), and only the
    window's requirement sets are judged. Otherwise the sets every queued request needs are read and
    the window is read again keeping only requests a free backend can run."""
    free_rows = [row for row in rows if row.url in free_urls]
    candidates = fair_order()
    eligible = able_to_run(free_rows, sorted({c.requirements for c in candidates if c.requirements}))
    if all(c.requirements is None or eligible.get(c.requirements) for c in candidates):
        return candidates, eligible
    eligible = eligibility(rows, free_urls)
    return fair_order(requirements={key for key, able in eligible.items() if able}), eligible


def claim_next(*, affinity=None):
    """Claim the next (request, backend) pair: mark the request running on that backend and
    return a :class:`Claim`, or ``None`` when no backend has a free slot or nothing is queued
    that a free backend can run now.

    The claim is one conditional update (queued → running, ``attempts`` +1, derived
    ``comfyui_prompt_id``, ``deadline_at``) and a fresh :class:`~generation.models.RunState` lease,
    made while holding the lock on every backend row, so capacity is never exceeded and no request
    is claimed twice. A request goes only to a backend whose recorded capabilities hold every node
    class and model file it needs, and not before its ``not_before`` (retry backoff).
    """
    affinity = settings.GENERATION["AFFINITY"] if affinity is None else affinity
    urls = sorted(b["url"] for b in settings.COMFYUI_BACKENDS)
    if not urls:
        return None
    for _ in range(_CLAIM_RETRIES):
        with transaction.atomic():
            rows = [row for row in _locked_backends(urls) if row.is_healthy]
            if not rows:
                return None
            # counted after the lock is held (a new statement, so a fresh snapshot under READ COMMITTED:
            # counting in the locking statement itself would see the claims it waited for as not made);
            # a job whose prompt ComfyUI has finished (outputs being stored) no longer holds a slot
            running = dict(GenerationRequest.objects.filter(status=Status.RUNNING, executed_at__isnull=True,
                                                            backend__in=[r.url for r in rows])
                           .values("backend").annotate(n=Count("id")).values_list("backend", "n"))
            backends = [_Backend(r.url, r.capacity, running.get(r.url, 0), r.loaded_checkpoint) for r in rows]
            free_urls = {b.url for b in backends if b.free > 0}
            if not free_urls:
                return None
            candidates, eligible = _window(rows, free_urls)
            picked = choose(candidates, backends, affinity=affinity, eligible=eligible)
            if picked is None:
                return None
            candidate, backend, skipped = picked
            claim = _claim(candidate, backend.url)
            if claim is None:
                continue  # cancelled (or claimed) since we read it: decide again
            if skipped:
                GenerationRequest.objects.filter(pk__in=[c.id for c in skipped], status=Status.QUEUED).update(
                    affinity_skips=F("affinity_skips") + 1)
            DispatchTurn.objects.bulk_create(  # one INSERT … ON CONFLICT DO UPDATE
                [DispatchTurn(user_id=candidate.user_id, last_dispatched_at=claim.lease)],
                update_conflicts=True, unique_fields=["user"], update_fields=["last_dispatched_at"])
            # a graph without a checkpoint leaves the loaded one in place
            if candidate.checkpoint and candidate.checkpoint != backend.loaded_checkpoint:
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
        backend=backend_url, attempts=attempt, comfyui_prompt_id=prompt_id, started_at=now,
        deadline_at=now + timedelta(seconds=settings.GENERATION["JOB_DEADLINE_SECONDS"]),
        affinity_skips=0, executed_at=None, not_before=None,
    )
    if not won:
        return None
    RunState.objects.bulk_create(  # the new attempt's lease, progress from zero (one INSERT … ON CONFLICT)
        [RunState(request_id=candidate.id, attempt=attempt, heartbeat_at=now)], update_conflicts=True,
        unique_fields=["request"], update_fields=["attempt", "heartbeat_at", "progress", "current_node",
                                                  "current_step", "total_steps"])
    return Claim(candidate.id, backend_url, attempt, prompt_id, now)
