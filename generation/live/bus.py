"""The fan-out: workers publish what happened; every web process listens and hands it to its streams.

Three transports, one message format (a small JSON object, never an image):

- ``redis``: Redis pub/sub on one channel per site (``REDIS_URL`` set);
- ``postgres``: ``NOTIFY`` / ``LISTEN`` on one channel (a direct PostgreSQL connection). A notification
  sent inside a transaction is delivered when it commits and dropped on rollback;
- ``poll``: nothing is sent; each web process reads the database every ``LIVE["POLL_SECONDS"]`` (new
  events, progress of the running requests its streams watch, new previews). The embedded default
  (SQLite) and PgBouncer in transaction mode (no ``LISTEN``) use it.

Messages (``k`` is the kind; ``u`` the owner's user id; ``r`` the request id):
``{"k": "event", "u", "r", "e": event id, "s": status}`` — a status change was logged (the stream reads
the log: it is the truth, the message only wakes it); ``{"k": "progress", "u", "r", "f", "st", "t", "n"}``;
``{"k": "preview", "u", "r", "n": number}``; ``{"k": "backend"}`` — a backend's state changed;
``{"k": "resync"}`` — the listener reconnected: messages may have been lost, streams re-read the log.

Publishing never raises: a lost message costs a stream at most its next heartbeat's re-read of the log
(status) or one coalesced progress step.
"""

import hashlib
import json
import logging
import threading
import time

from django.conf import settings
from django.db import connection, transaction

logger = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0


def fanout():
    """The transport in use: ``LIVE["FANOUT"]``, or with ``auto`` the best the configuration allows."""
    chosen = settings.LIVE["FANOUT"]
    if chosen != "auto":
        return chosen
    if settings.REDIS_URL:
        return "redis"
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("postgresql") and not db.get("DISABLE_SERVER_SIDE_CURSORS"):
        return "postgres"  # (DISABLE_SERVER_SIDE_CURSORS is how settings mark PgBouncer's transaction mode)
    return "poll"


def channel():
    """The site's channel (a PostgreSQL identifier of at most 63 bytes, whatever the site's name)."""
    return "genonaut_live_" + hashlib.sha256(settings.Q_CLUSTER["name"].encode()).hexdigest()[:24]


# --- publishing -----------------------------------------------------------------------------------

_redis_client = None


def _redis():
    global _redis_client
    if _redis_client is None:
        import redis

        _redis_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    return _redis_client


def publish(message):
    """Send ``message`` to every web process now (outside a transaction: see :func:`publish_on_commit`)."""
    mode = fanout()
    if mode == "poll":
        return
    payload = json.dumps(message, separators=(",", ":"))
    try:
        if mode == "redis":
            _redis().publish(channel(), payload)
        else:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", [channel(), payload])
    except Exception as exc:
        logger.warning("live: could not publish %s (%s)", message.get("k"), exc)


def publish_on_commit(message):
    """Send ``message`` once the current transaction commits (never when it rolls back)."""
    if fanout() == "postgres":
        publish(message)  # NOTIFY is transactional itself: sent at commit, dropped on rollback
    else:
        transaction.on_commit(lambda: publish(message), robust=True)


# --- listening: one hub per web process -------------------------------------------------------------

class Subscription:
    """What one stream wants: the messages of ``user_id`` (of one request: ``request_id``), or with
    ``everything`` all messages. The hub's thread calls :meth:`push`; the stream waits with
    :meth:`wait` (a thread under WSGI) or :meth:`wait_async` (under ASGI, on the loop it subscribed from).
    ``others_moved`` is set when another user's request changed status (queue positions may have moved).
    """

    MAX_INBOX = 1000

    def __init__(self, *, user_id=None, request_id=None, everything=False, kinds=None, loop=None):
        self.user_id, self.request_id, self.everything = user_id, request_id, everything
        self.kinds = kinds  # with everything: only these kinds (and resync)
        self.loop = loop
        self.inbox = []
        self.overflowed = False
        self.others_moved = False
        self.watch_others = False  # set by the stream while one of its requests waits in the queue
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._async_event = None
        if loop is not None:
            import asyncio

            self._async_event = asyncio.Event()

    def wants(self, message):
        if message.get("k") == "resync":
            return True
        if self.everything:
            return self.kinds is None or message.get("k") in self.kinds
        if message.get("u") != self.user_id:
            return False
        return self.request_id is None or message.get("r") == self.request_id

    def push(self, message):
        with self._lock:
            if self.wants(message):
                if len(self.inbox) >= self.MAX_INBOX:
                    self.overflowed = True  # the stream re-reads the log and the current state instead
                    self.inbox.clear()
                self.inbox.append(message)
            elif message.get("k") == "event" and self.watch_others:
                self.others_moved = True
            else:
                return
        self._wake()

    def _wake(self):
        if self.loop is None:
            self._event.set()
            return
        try:
            self.loop.call_soon_threadsafe(self._async_event.set)
        except RuntimeError:  # the loop is closed: the stream is gone
            pass

    def take(self):
        """``(messages, overflowed, others_moved)`` since the last call."""
        with self._lock:
            messages, self.inbox = self.inbox, []
            overflowed, self.overflowed = self.overflowed, False
            moved, self.others_moved = self.others_moved, False
            self._event.clear()
            if self._async_event is not None:
                self._async_event.clear()
        return messages, overflowed, moved

    def wait(self, timeout):
        self._event.wait(timeout)

    async def wait_async(self, timeout):
        import asyncio

        try:
            await asyncio.wait_for(self._async_event.wait(), timeout)
        except TimeoutError:
            pass


class Hub:
    """The web process's one listener (a daemon thread started with the first subscription) and the
    subscriptions it feeds."""

    def __init__(self):
        self._subscriptions = set()
        self._by_user = {}  # user id (None: subscriptions of everything) -> its subscriptions
        self._lock = threading.Lock()
        self._thread = None
        self._stop = threading.Event()
        self.mode = None
        self.connected = threading.Event()  # the listener is up (tests and benchmarks wait on it)

    def subscribe(self, subscription):
        with self._lock:
            self._subscriptions.add(subscription)
            self._by_user.setdefault(subscription.user_id, set()).add(subscription)
            if self._thread is None or not self._thread.is_alive():
                self.mode = fanout()
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="genonaut-live-hub", daemon=True)
                self._thread.start()
        return subscription

    def unsubscribe(self, subscription):
        with self._lock:
            self._subscriptions.discard(subscription)
            mine = self._by_user.get(subscription.user_id)
            if mine is not None:
                mine.discard(subscription)
                if not mine:
                    del self._by_user[subscription.user_id]

    @property
    def subscriptions(self):
        with self._lock:
            return list(self._subscriptions)

    def dispatch(self, message):
        """Hand ``message`` to the subscriptions that may want it: a status change and a resync to all (a
        status change moves others' queue positions), progress and previews only to their owner's (and
        to those that want everything), so a busy process does not offer each of them to every stream."""
        with self._lock:
            if message.get("k") in ("event", "resync"):
                targets = list(self._subscriptions)
            else:
                targets = self._by_user.get(message.get("u"), set()) | self._by_user.get(None, set())
        for subscription in targets:
            subscription.push(message)

    def stop(self):
        """Stop the listener (tests); the next subscription starts a new one."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        self._thread = None
        self.connected.clear()

    def _run(self):
        listen = {"redis": self._listen_redis, "postgres": self._listen_postgres, "poll": self._poll}[self.mode]
        first = True
        while not self._stop.is_set():
            try:
                if not first:
                    self.dispatch({"k": "resync"})
                first = False
                listen()
            except Exception as exc:
                logger.warning("live: the %s listener failed (%s); reconnecting in %s s", self.mode, exc,
                               RECONNECT_SECONDS)
                self.connected.clear()
                self._stop.wait(RECONNECT_SECONDS)
            finally:
                from django.db import close_old_connections

                close_old_connections()

    def _deliver(self, payload):
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if isinstance(message, dict):
            self.dispatch(message)

    def _listen_redis(self):
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, health_check_interval=10)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(channel())
            self.connected.set()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message and message.get("type") == "message":
                    self._deliver(message["data"])
        finally:
            pubsub.close()
            client.close()

    def _listen_postgres(self):
        import psycopg
        from psycopg import sql

        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        with psycopg.connect(**params, autocommit=True) as listener:
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel())))
            self.connected.set()
            while not self._stop.is_set():
                for notify in listener.notifies(timeout=1.0):
                    self._deliver(notify.payload)
                    if self._stop.is_set():
                        break

    def _poll(self):
        from generation.live.polling import Poller

        poller = Poller()
        self.connected.set()
        while not self._stop.is_set():
            started = time.monotonic()
            wanted_users = {s.user_id for s in self.subscriptions if s.user_id is not None}
            everything = any(s.everything for s in self.subscriptions)
            for message in poller.poll(wanted_users, everything=everything):
                self.dispatch(message)
            self._stop.wait(max(0.0, settings.LIVE["POLL_SECONDS"] - (time.monotonic() - started)))


hub = Hub()
