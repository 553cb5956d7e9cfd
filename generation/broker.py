"""Django-Q's ORM broker on PostgreSQL, woken by ``NOTIFY`` instead of waiting out its poll.

Django-Q2's ORM broker (the embedded default) finds new tasks by polling its table every ``Q_POLL``
seconds (0.2): on average half of that was added to every job before a worker even saw its wake-up.
This broker is that broker plus two things: ``enqueue`` sends ``pg_notify`` on the queue's channel
(PostgreSQL delivers it when the enqueuing transaction commits, and drops it on rollback), and the
pusher, when it finds nothing to do, waits on a connection that ``LISTEN``s to that channel for at
most ``Q_POLL`` seconds instead of sleeping that long. A task is still found by the poll when a
notification is missed (the listening connection lost, a task whose lock expired for a retry), so
nothing depends on notifications arriving; they only make the common case immediate.

``LISTEN`` needs a session of its own, so this is used only on a direct PostgreSQL connection
(``genonaut/settings.py`` picks it; behind PgBouncer in transaction mode, or on SQLite, the plain
ORM broker polls as before).
"""

import hashlib
import logging
import os
import time

from django.db import connections
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf

logger = logging.getLogger(__name__)

RECONNECT_SECONDS = 5.0  # after the listening connection failed, poll only for this long before retrying


def channel_for(list_key):
    """The notification channel of a queue (an identifier of at most 63 bytes, whatever the queue's name)."""
    return "django_q_" + hashlib.sha256(str(list_key).encode()).hexdigest()[:32]


class NotifyingORM(ORM):
    """:class:`django_q.brokers.orm.ORM` whose pusher is woken by ``NOTIFY`` (see the module docstring)."""

    def __init__(self, list_key=None):
        super().__init__(list_key=list_key)
        self.channel = channel_for(self.list_key)
        self._listener = None
        self._listener_pid = None
        self._retry_listen_at = 0.0

    def enqueue(self, task):
        pk = super().enqueue(task)
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [self.channel])
        return pk

    def dequeue(self):
        # as ORM.dequeue (Django-Q2 1.x), with the empty-queue sleep replaced by waiting for a notification;
        # the listener is set up before the query, so a task enqueued after it is never waited out
        listener = self._listening()
        tasks = self.get_connection().filter(key=self.list_key, lock__lt=timezone.now())[0:Conf.BULK]
        if tasks:
            task_list = []
            for task in tasks:
                if self.get_connection().filter(id=task.id, lock=task.lock).update(lock=self.timeout(task)):
                    task_list.append((task.pk, task.payload))
                # else another cluster was faster than us on that task
            return task_list
        self._wait(listener, Conf.POLL)
        return None

    def _wait(self, listener, seconds):
        """Until a notification on our channel arrives or ``seconds`` pass (a plain sleep without listener)."""
        if listener is None:
            time.sleep(seconds)
            return
        try:
            for _ in listener.notifies(timeout=seconds, stop_after=1):
                pass
            for _ in listener.notifies(timeout=0):  # several wake-ups at once need one look at the table
                pass
        except Exception as exc:  # the connection went away: poll until it can be opened again
            logger.warning("broker: listening on %s failed (%s); polling every %s s meanwhile", self.channel, exc,
                           seconds)
            self._close_listener()
            time.sleep(seconds)

    def _listening(self):
        """The connection that LISTENs on our channel, opened in this process (the pusher is a forked
        child: a parent's connection is never shared), or ``None`` while it cannot be opened."""
        if self._listener is not None and self._listener_pid == os.getpid() and not self._listener.closed:
            return self._listener
        self._listener = None
        if time.monotonic() < self._retry_listen_at:
            return None
        import psycopg
        from psycopg import sql

        params = connections[Conf.ORM].get_connection_params()
        params.pop("cursor_factory", None)
        try:
            listener = psycopg.connect(**params, autocommit=True)
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except Exception as exc:
            logger.warning("broker: cannot listen on %s (%s); polling every %s s", self.channel, exc, Conf.POLL)
            self._retry_listen_at = time.monotonic() + RECONNECT_SECONDS
            return None
        self._listener, self._listener_pid = listener, os.getpid()
        return listener

    def _close_listener(self):
        if self._listener is not None:
            try:
                self._listener.close()
            except Exception:
                logger.debug("broker: closing the listener failed", exc_info=True)
        self._listener = None
        self._retry_listen_at = time.monotonic() + RECONNECT_SECONDS
