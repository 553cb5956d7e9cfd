"""The event log: status changes as streams deliver them, and the cursors that resume them.

A change is written by :func:`record` in the transaction that makes it, so the log holds exactly the
committed changes. Event ids come from a sequence, which hands them out in insertion order, not commit
order: two requests of one user finishing at once on two workers may commit ids 7 and 6 in that order.
A stream that only remembered "the last id I sent" would skip 6. A :class:`Cursor` therefore remembers a
*settled* id (everything at or below it was delivered, and it is older than any transition could stay
uncommitted) and the ids delivered above it; it is the SSE ``id:`` a client sends back as
``Last-Event-ID``, so a reconnect resumes with no gap and nothing twice.
"""

import re
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from generation.states import Status

# no transition stays uncommitted this long after writing its event (they are single short transactions)
SETTLE_SECONDS = 30
CURSOR_PATTERN = r"^([0-9]{1,19})(?::([0-9]{1,19}(?:,[0-9]{1,19}){0,499}))?$"
_CURSOR = re.compile(CURSOR_PATTERN)


class BadCursor(ValueError):
    """A ``Last-Event-ID`` this service never sent."""


@dataclass
class Cursor:
    settled: int = 0
    above: set = field(default_factory=set)  # ids > settled already delivered
    times: dict = field(default_factory=dict, repr=False)  # id in above -> its created_at, when known

    @classmethod
    def parse(cls, text):
        match = _CURSOR.match(text.strip())
        if not match:
            raise BadCursor("Last-Event-ID must be an event id this stream sent (digits, optionally ':' and a "
                            "comma-separated list of ids)")
        above = {int(n) for n in match.group(2).split(",")} if match.group(2) else set()
        settled = int(match.group(1))
        return cls(settled, {n for n in above if n > settled})

    def __str__(self):
        if not self.above:
            return str(self.settled)
        return f"{self.settled}:{','.join(str(n) for n in sorted(self.above))}"

    def advance(self, events, *, queried_at):
        """Note ``events`` as delivered by the query that started at ``queried_at``, then settle up to the
        newest delivered event older than ``SETTLE_SECONDS`` before that query: every event with a
        smaller id was inserted before it and committed within ``SETTLE_SECONDS``, so that query saw it
        (and it was delivered, now or earlier). Call it after every query, with or without events."""
        for event in events:
            if event.id > self.settled:
                self.above.add(event.id)
                self.times[event.id] = event.created_at
        horizon = queried_at - timedelta(seconds=SETTLE_SECONDS)
        old = [n for n, at in self.times.items() if at < horizon]
        if old:
            self.settled = max(self.settled, *old)
        self.above = {n for n in self.above if n > self.settled}
        self.times = {n: at for n, at in self.times.items() if n > self.settled}


def record(request_id, status, *, notify=None):
    """Log that ``request_id`` changed to ``status`` (call inside the transaction that changed it);
    return the new event's ``(id, user_id)``, or ``None`` when the request is gone.

    ``notify`` (a PostgreSQL channel) also sends the fan-out's ``event`` message in the same statement
    (:mod:`generation.live.bus`): delivered when the transaction commits, one round trip for both."""
    from generation.models import RequestEvent

    table = RequestEvent._meta.db_table
    request_table = RequestEvent._meta.get_field("request").related_model._meta.db_table
    insert = (f"INSERT INTO {table} (request_id, user_id, status, created_at) "
              f"SELECT id, user_id, %s, %s FROM {request_table} WHERE id = %s RETURNING id, user_id, request_id")
    request_id_field = RequestEvent._meta.get_field("request").target_field
    params = [str(Status(status)), timezone.now(),
              request_id_field.get_db_prep_value(request_id_field.to_python(request_id), connection)]
    if notify:
        insert = (f"WITH e AS ({insert}) SELECT id, user_id, pg_notify(%s, json_build_object("
                  f"'k', 'event', 'u', user_id, 'r', request_id::text, 'e', id, 's', %s)::text) FROM e")
        params += [notify, str(Status(status))]
    with connection.cursor() as cursor:  # one statement: the owner comes from the row itself
        cursor.execute(insert, params)
        row = cursor.fetchone()
    return (row[0], row[1]) if row else None


def events_after(cursor, *, user_id, request_id=None, limit=500):
    """The events of ``user_id`` (of one request with ``request_id``) the cursor has not delivered, oldest
    first (at most ``limit``)."""
    from generation.models import RequestEvent

    scope = {"user_id": user_id} if request_id is None else {"request_id": request_id}
    rows = RequestEvent.objects.filter(id__gt=cursor.settled, **scope)
    if cursor.above:
        rows = rows.exclude(id__in=cursor.above)
    return list(rows.order_by("id")[:limit])


def latest_id(*, user_id, request_id=None):
    """The id of the newest event of ``user_id`` (of one request), 0 without any."""
    from generation.models import RequestEvent

    scope = {"user_id": user_id} if request_id is None else {"request_id": request_id}
    return RequestEvent.objects.filter(**scope).order_by("-id").values_list("id", flat=True).first() or 0


def purge(now=None, *, batch=5000):
    """Forget events older than ``LIVE["EVENT_RETENTION_HOURS"]`` (a batch per call); return how many."""
    from django.conf import settings

    from generation.models import RequestEvent

    cutoff = (now or timezone.now()) - timedelta(hours=settings.LIVE["EVENT_RETENTION_HOURS"])
    newest = RequestEvent.objects.order_by("-id").values_list("id", flat=True).first()
    # the newest event stays: SQLite numbers a row max(id) + 1, and ids must never go back (cursors hold them)
    ids = list(RequestEvent.objects.filter(created_at__lt=cutoff).exclude(id=newest).order_by("created_at")
               .values_list("id", flat=True)[:batch])
    return RequestEvent.objects.filter(id__in=ids).delete()[0] if ids else 0
