"""Server-sent event streams (``text/event-stream``): what a client watching requests receives.

A stream is a small synchronous state machine (:class:`RequestStream`, :class:`BackendsStream`) fed
by a :class:`~generation.live.bus.Subscription`; :func:`sync_frames` drives it in a thread (WSGI:
``runserver``, tests) and :func:`async_frames` on an event loop (ASGI: ``uvicorn``, where an open stream
costs no thread). There, database work runs on a small shared thread pool; progress and previews need none.

Contract (docs/api.md "Live events"): first ``retry:``, then the current state (or, after a
``Last-Event-ID``, every logged change since it, then the current progress); then changes as they
happen. Every event has an ``id:`` (the :class:`~generation.live.log.Cursor`); a stream of one request
ends after its terminal event; comment heartbeats keep idle connections open.
"""

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections
from django.urls import reverse

from generation.live import log, previews
from generation.live.bus import Subscription, hub
from generation.representation import waiting_reason_data
from generation.states import TERMINAL, WAITING, Status

RETRY_MS = 2000
POSITION_REFRESH_SECONDS = 1.0  # queue positions re-read at most this often when the queue moves
BACKENDS_MIN_SECONDS = 1.0  # the backends event at most this often …
BACKENDS_MAX_SECONDS = 10.0  # … and at least this often (load changes that log nothing)
RECHECK_HEARTBEATS = 4  # an idle stream re-reads the log every 4th heartbeat (60 s by default)
TERMINAL_EVENTS = {Status.COMPLETED: "completed", Status.FAILED: "failed", Status.CANCELLED: "cancelled"}


def _recheck_seconds():
    return RECHECK_HEARTBEATS * settings.LIVE["HEARTBEAT_SECONDS"]


def frame(event, data, event_id=None):
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return "\n".join(lines) + "\n\n"


class RequestStream:
    """The events of one user's requests (``request_id``: of that one only).

    ``cursor`` is the client's ``Last-Event-ID`` (a :class:`~generation.live.log.Cursor`) or ``None`` for
    a fresh connection; ``absolute`` makes image URLs absolute (``request.build_absolute_uri``).
    """

    def __init__(self, *, user_id, request_id=None, cursor=None, absolute=None):
        self.user_id, self.request_id = user_id, request_id
        self.cursor = cursor
        self.resumed = cursor is not None
        self.absolute = absolute
        self.ended = False
        self.waiting = {}  # request id -> (status, queue position, waiting reason code) last sent, while waiting
        self.progress_sent = {}  # request id -> progress tuple last sent
        self.running = set()  # ids of the requests whose last status sent is running
        self.positions_due = None  # monotonic time to re-read queue positions (the queue moved)
        self.last_sent = self.checked_at = time.monotonic()  # checked_at: the last read of the log

    def subscription(self, loop=None):
        return Subscription(user_id=self.user_id, request_id=None if self.request_id is None else str(self.request_id),
                            loop=loop)

    # --- what the drivers call ------------------------------------------------------------------

    def start(self):
        """The opening frames (database)."""
        frames = [f"retry: {RETRY_MS}\n\n"]
        if self.cursor is None:
            frames += self._fresh()
        else:
            frames += self.catch_up()
            if not self.ended:
                frames += self._current_progress()
        return self._sent(frames)

    def is_light(self, messages, overflowed, moved):
        """Whether :meth:`react` needs no database for these messages."""
        return not (overflowed or moved) and self.tick_is_light() and all(
            m.get("k") in ("progress", "preview") for m in messages)

    def react(self, messages, overflowed=False, moved=False):
        """Frames for what the subscription received (database unless :meth:`is_light`)."""
        frames = []
        if overflowed or any(m.get("k") in ("event", "resync") for m in messages):
            frames += self.catch_up()
        if self.ended:
            return self._sent(frames)
        latest = {}  # coalesced: the newest progress per request
        for message in messages:
            kind = message.get("k")
            if kind == "progress":
                latest[message["r"]] = message
            elif kind == "preview":
                frames.append(self._preview_frame(message["r"], message.get("n")))
        for request_id, message in latest.items():
            if request_id not in self.running:
                continue  # it ended (or went back to the queue) since: its progress would come after its end
            frames += self._progress_frames(request_id, message.get("f", 0.0), message.get("st", 0),
                                            message.get("t", 0), message.get("n", ""))
        if moved and self.waiting and self.positions_due is None:
            self.positions_due = time.monotonic() + POSITION_REFRESH_SECONDS
        frames += self.tick()
        return self._sent(frames)

    def timeout(self):
        """Seconds until :meth:`tick` has something to do."""
        due = self.last_sent + settings.LIVE["HEARTBEAT_SECONDS"]
        if self.positions_due is not None:
            due = min(due, self.positions_due)
        return max(0.0, due - time.monotonic())

    def tick_is_light(self):
        """Whether :meth:`tick` needs no database now (a heartbeat alone)."""
        now = time.monotonic()
        return not (self.positions_due is not None and now >= self.positions_due) and \
            now - self.checked_at < _recheck_seconds()

    def tick(self):
        """Time-driven frames: refreshed queue positions; the heartbeat comment, and with every
        ``RECHECK_HEARTBEATS``-th a re-read of the log (a message lost on the way costs at most that long;
        reading it at every heartbeat cost each idle stream ~1 ms of CPU per heartbeat)."""
        frames = []
        now = time.monotonic()
        if self.positions_due is not None and now >= self.positions_due:
            self.positions_due = None
            frames += self._positions()
        if not frames and now - self.last_sent >= settings.LIVE["HEARTBEAT_SECONDS"]:
            if now - self.checked_at >= _recheck_seconds():
                frames += self.catch_up()
            frames.append(": keepalive\n\n")
        return self._sent(frames) if frames else frames

    # --- the log ------------------------------------------------------------------------------------

    def catch_up(self):
        """Frames for every logged change the cursor has not delivered."""
        from django.utils import timezone

        self.checked_at = time.monotonic()
        frames = []
        while not self.ended:
            queried_at = timezone.now()
            events = log.events_after(self.cursor, user_id=self.user_id, request_id=self.request_id)
            self.cursor.advance(events, queried_at=queried_at)
            if not events:
                break
            rows = self._rows({e.request_id for e in events})
            places = _places(rows.values())
            for event in events:
                row = rows.get(event.request_id)
                if row is None:
                    continue  # deleted since
                frames.append(self._status_frame(row, Status(event.status), places))
                if self.request_id is not None and event.status in TERMINAL:
                    self.ended = True
                    break
            if len(events) < 500:
                break
        return frames

    def _fresh(self):
        self.cursor = log.Cursor(log.latest_id(user_id=self.user_id, request_id=self.request_id))
        if self.request_id is not None:
            rows = self._rows({self.request_id})
        else:
            from generation.models import GenerationRequest

            active = GenerationRequest.objects.filter(user_id=self.user_id, status__in=[
                Status.PENDING, Status.QUEUED, Status.RUNNING]).values_list("pk", flat=True)
            rows = self._rows(set(active))
        frames = []
        places = _places(rows.values())
        numbers = previews.numbers([pk for pk, row in rows.items() if row.status == Status.RUNNING])
        for row in sorted(rows.values(), key=lambda r: r.created_at):
            frames.append(self._status_frame(row, Status(row.status), places))
            if row.status in TERMINAL:
                self.ended = self.request_id is not None
            elif row.status == Status.RUNNING:
                frames += self._progress_frames(str(row.pk), row.progress, row.current_step, row.total_steps,
                                                row.current_node)
                number = numbers.get(str(row.pk))
                if number:
                    frames.append(self._preview_frame(str(row.pk), number))
        return frames

    def _current_progress(self):
        from generation.models import GenerationRequest

        rows = GenerationRequest.objects.select_related("run").filter(user_id=self.user_id, status=Status.RUNNING)
        if self.request_id is not None:
            rows = rows.filter(pk=self.request_id)
        frames = []
        for row in rows:
            self.running.add(str(row.pk))
            frames += self._progress_frames(str(row.pk), row.progress, row.current_step, row.total_steps,
                                            row.current_node)
        return frames

    def _rows(self, ids):
        from generation.models import GenerationRequest

        return {row.pk: row for row in GenerationRequest.objects.select_related("user", "run").filter(
            pk__in=ids, user_id=self.user_id)}

    # --- frames ---------------------------------------------------------------------------------------

    def _status_frame(self, row, status, places):
        """The frame of ``row``'s change to ``status``; ``places`` is :func:`_places` of the batch."""
        from generation.representation import request_representation

        key = str(row.pk)
        if status == Status.RUNNING:
            self.running.add(key)
        else:
            self.running.discard(key)
        if status in TERMINAL:
            self.waiting.pop(key, None)
            self.progress_sent.pop(key, None)
            if status == Status.COMPLETED:
                data = request_representation(row, absolute=self.absolute)
            elif status == Status.FAILED:
                data = {"id": key, "status": "failed", "error": row.error}
            else:
                data = {"id": key, "status": "cancelled"}
            return frame(TERMINAL_EVENTS[status], data, self.cursor)
        position = reason = None
        if status in WAITING and row.status in WAITING:
            position, reason = places[0].get(row.pk), places[1].get(row.pk)
            self.waiting[key] = (position, (reason or {}).get("code"))
        else:
            self.waiting.pop(key, None)
        if status != Status.RUNNING:
            self.progress_sent.pop(key, None)
        return frame("status", {"id": key, "status": str(status), "queue_position": position,
                                "waiting_reason": waiting_reason_data(reason)}, self.cursor)

    def _positions(self):
        """Status frames for waiting requests whose place in the queue (or reason to wait) changed."""
        from generation.models import GenerationRequest

        rows = list(GenerationRequest.objects.filter(pk__in=list(self.waiting), status__in=list(WAITING)))
        positions, reasons = _places(rows)
        frames = []
        for row in rows:
            key = str(row.pk)
            now = (positions.get(row.pk), (reasons.get(row.pk) or {}).get("code"))
            if self.waiting.get(key) != now:
                self.waiting[key] = now
                data = {"id": key, "status": str(row.status), "queue_position": now[0],
                        "waiting_reason": waiting_reason_data(reasons.get(row.pk))}
                frames.append(frame("status", data, self.cursor))
        return frames

    def _progress_frames(self, request_id, fraction, step, total, node):
        values = (round(fraction or 0.0, 4), step or 0, total or 0, node or "")
        if self.progress_sent.get(request_id) == values:
            return []
        self.progress_sent[request_id] = values
        return [frame("progress", {"id": request_id, "fraction": values[0], "step": values[1],
                                   "total_steps": values[2], "node": values[3]}, self.cursor)]

    def _preview_frame(self, request_id, number):
        url = reverse("generation-preview", kwargs={"pk": request_id}) + f"?n={number or 0}"
        return frame("preview", {"id": request_id, "url": self.absolute(url) if self.absolute else url},
                     self.cursor)

    def _sent(self, frames):
        if frames:
            self.last_sent = time.monotonic()
        return frames


def _places(rows):
    """``(queue positions, waiting reasons)`` of the waiting ones among ``rows``, in one query each (none
    when none waits), for a batch of status frames."""
    from generation.selectors import queue_positions, waiting_reasons

    rows = list(rows)
    return queue_positions(rows), waiting_reasons(rows)


class BackendsStream:
    """Staff: the backends overview (the list ``GET /api/v1/comfyui/backends/`` returns) on connect, after
    status and backend changes (at most once per ``BACKENDS_MIN_SECONDS``) and every
    ``BACKENDS_MAX_SECONDS``."""

    ended = False

    def __init__(self):
        self.sent_at = 0.0
        self.dirty = False
        self.last_sent = time.monotonic()

    def subscription(self, loop=None):
        return Subscription(everything=True, kinds={"event", "backend"}, loop=loop)

    def start(self):
        return [f"retry: {RETRY_MS}\n\n", *self._overview()]

    def is_light(self, messages, overflowed, moved):
        return False

    def react(self, messages, overflowed=False, moved=False):
        if messages or overflowed:
            self.dirty = True
        return self.tick()

    def timeout(self):
        if self.dirty:
            return max(0.0, self.sent_at + BACKENDS_MIN_SECONDS - time.monotonic())
        return max(0.0, self.sent_at + BACKENDS_MAX_SECONDS - time.monotonic())

    def tick_is_light(self):
        return self.timeout() > 0

    def tick(self):
        return self._overview() if self.timeout() <= 0 else []

    def _overview(self):
        from generation.api.serializers import BackendSerializer
        from generation.backends import backend_overview

        self.dirty = False
        self.sent_at = self.last_sent = time.monotonic()
        return [frame("backends", BackendSerializer(backend_overview(), many=True).data)]


# --- drivers -----------------------------------------------------------------------------------------

def _remaining(deadline):
    return deadline - time.monotonic()


def sync_frames(stream):
    """Drive ``stream`` in this thread (WSGI): yields encoded chunks until it ends, the client goes, or
    ``LIVE["STREAM_MAX_SECONDS"]`` pass."""
    subscription = hub.subscribe(stream.subscription())
    deadline = time.monotonic() + settings.LIVE["STREAM_MAX_SECONDS"]
    try:
        yield "".join(stream.start()).encode()
        while not stream.ended and _remaining(deadline) > 0:
            subscription.watch_others = bool(getattr(stream, "waiting", None))
            subscription.wait(min(stream.timeout(), _remaining(deadline)))
            messages, overflowed, moved = subscription.take()
            frames = stream.react(messages, overflowed, moved) if (messages or overflowed or moved) else stream.tick()
            if frames:
                yield "".join(frames).encode()
    finally:
        hub.unsubscribe(subscription)


_db_pool = None
_db_pool_lock = threading.Lock()


def _database_threads():
    """The few threads that do every stream's database work in an ASGI process. Not Django's
    ``sync_to_async``: under ASGI its thread-sensitive mode gives each request (each open stream) a thread
    and a database connection of its own — 500 streams, 500 connections."""
    global _db_pool
    with _db_pool_lock:
        if _db_pool is None:
            _db_pool = ThreadPoolExecutor(max_workers=settings.LIVE["DB_THREADS"],
                                          thread_name_prefix="genonaut-live-db")
        return _db_pool


def _with_connection(func, *args):
    close_old_connections()  # a pooled thread's connection may have died or aged since its last use
    return func(*args)


async def _in_database_thread(func, *args):
    return await asyncio.get_running_loop().run_in_executor(_database_threads(), _with_connection, func, *args)


async def async_frames(stream):
    """Drive ``stream`` on the running event loop (ASGI): as :func:`sync_frames`, holding no thread while
    it waits; database work runs on a small shared pool (``LIVE["DB_THREADS"]``)."""
    subscription = hub.subscribe(stream.subscription(loop=asyncio.get_running_loop()))
    deadline = time.monotonic() + settings.LIVE["STREAM_MAX_SECONDS"]
    try:
        yield "".join(await _in_database_thread(stream.start)).encode()
        while not stream.ended and _remaining(deadline) > 0:
            subscription.watch_others = bool(getattr(stream, "waiting", None))
            await subscription.wait_async(min(stream.timeout(), _remaining(deadline)))
            messages, overflowed, moved = subscription.take()
            if messages or overflowed or moved:
                if stream.is_light(messages, overflowed, moved):
                    frames = stream.react(messages)
                else:
                    frames = await _in_database_thread(stream.react, messages, overflowed, moved)
            elif stream.tick_is_light():
                frames = stream.tick()
            else:
                frames = await _in_database_thread(stream.tick)
            if frames:
                yield "".join(frames).encode()
    finally:
        hub.unsubscribe(subscription)
