"""Rate limits counted in the database, and the client address they are counted by.

A limit is counted in one row per (scope, who) — a user or a client address — holding the start
of the current fixed window and its hits, bumped by one atomic upsert. So a limit holds across
every web process and host, with or without Redis, and concurrent requests cannot slip through
between a read and a write. A window is fixed, not sliding: right around a window's end up to
twice the rate can pass in a short burst. The reconciler purges rows of windows long gone.

The client address is ``REMOTE_ADDR``, unless Genonaut runs behind proxies
(``TRUSTED_PROXY_COUNT``, which needs ``BEHIND_TLS_PROXY``): then it is the ``X-Forwarded-For``
entry that the outermost trusted proxy appended — never one a client wrote itself.
"""

import math
import time

from django.conf import settings
from django.db import connection, models

PURGE_AFTER_SECONDS = 2 * 86400  # longer than the longest period a rate can name (a day)


def client_address(request):
    """The address a request came from, as far as our trusted proxies vouch for it."""
    count = settings.TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "") if count else ""
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    if hops:
        return hops[-min(count, len(hops))][:64]
    return request.META.get("REMOTE_ADDR", "")[:64]


class RateCounter(models.Model):
    """Hits of one scope by one client in the current window (see :func:`hit`)."""

    scope = models.CharField(max_length=32)
    who = models.CharField(max_length=128)
    window_start = models.BigIntegerField(help_text="Unix seconds")
    hits = models.PositiveIntegerField()

    class Meta:
        app_label = "generation"
        constraints = [models.UniqueConstraint(fields=["scope", "who"], name="ratecounter_unique_scope_who")]

    def __str__(self):
        return f"{self.scope} {self.who}: {self.hits} since {self.window_start}"


def hit(scope, who, *, period, now=None):
    """Count one hit of ``scope`` by ``who``; return ``(hits in this window, seconds until it ends)``.

    One statement: a request stamped with an older window (a host whose clock lags) counts
    against the newer one instead of resetting it.
    """
    now = time.time() if now is None else now
    window = int(now // period * period)
    table = connection.ops.quote_name(RateCounter._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (scope, who, window_start, hits) VALUES (%s, %s, %s, 1) "
            f"ON CONFLICT (scope, who) DO UPDATE SET "
            f"hits = CASE WHEN excluded.window_start > {table}.window_start THEN 1 ELSE {table}.hits + 1 END, "
            f"window_start = CASE WHEN excluded.window_start > {table}.window_start "
            f"THEN excluded.window_start ELSE {table}.window_start END "
            f"RETURNING hits, window_start",
            [scope, who[:128], window])
        hits, start = cursor.fetchone()
    return hits, max(1, math.ceil(start + period - now))


def purge_stale_counters(now=None):
    """Delete counters whose window ended long ago; return how many."""
    now = time.time() if now is None else now
    deleted, _ = RateCounter.objects.filter(window_start__lt=now - PURGE_AFTER_SECONDS).delete()
    return deleted
