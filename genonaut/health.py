"""Liveness and readiness endpoints for load balancers (no authentication, no secrets).

``/healthz`` says the process answers. ``/readyz`` says this deployment can serve: the database
answers, and at least one configured ComfyUI backend has answered at least once. Until then it is
503 with a JSON ``reason`` — a fresh deployment whose ``COMFYUI_URL`` points nowhere stays out of
rotation instead of accepting requests that would wait forever.

Once a backend has answered, later backend outages and a broker outage are reported but do not
gate readiness: with every backend down requests wait in the queue and history still loads, and
with Redis down a submit is still stored (the reconciler re-sends lost wake-ups); taking every web
node out of rotation would turn a partial outage into a full one.

Cheap by construction: the steady state is one query on ``BackendState`` (``last_ok_at`` is
stamped by the workers' probes and by every completed job). Only while no backend has ever
answered does ``/readyz`` ask the backends itself (``GET /queue``, in parallel, 0.5 s timeout, at
most once per :data:`PROBE_INTERVAL_SECONDS` per process), and records an answer with
:func:`generation.backends.mark_up`.

Backends are named by their position in ``COMFYUI_URL`` (1-based), never by URL: this endpoint is
public, and ComfyUI has no authentication. The staff page ``/backends/`` names them.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

from django.conf import settings
from django.db import connection
from django.http import JsonResponse

BROKER_TIMEOUT_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 0.5
PROBE_INTERVAL_SECONDS = 5.0
MAX_PARALLEL_PROBES = 8

_probe_lock = threading.Lock()
_next_probe_at = 0.0  # time.monotonic() before which this process does not probe again


def liveness(request):
    """The process answers."""
    return JsonResponse({"status": "ok"})


def readiness(request):
    """Ready: the database answers and a configured backend has answered; broker and backends reported."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any database error means not ready
        return JsonResponse({"status": "unavailable", "database": str(exc)[:200]}, status=503)
    backends = _backends_status()
    body = {"status": "ok", "database": "ok", "broker": _broker_status(), "backends": backends}
    if not settings.COMFYUI_BACKENDS:
        return _unavailable(body, "no ComfyUI backend is configured (set COMFYUI_URL)")
    if "error" in backends:
        return _unavailable(body, "the backends' state could not be read")
    if not backends["answered"]:
        return _unavailable(body, f"no configured ComfyUI backend has answered yet (0 of {backends['total']}); "
                                  "check COMFYUI_URL and that ComfyUI is reachable from this host")
    return JsonResponse(body)


def _unavailable(body, reason):
    return JsonResponse({**body, "status": "unavailable", "reason": reason}, status=503)


@lru_cache(maxsize=1)
def _redis_client(url):
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=BROKER_TIMEOUT_SECONDS,
                                socket_timeout=BROKER_TIMEOUT_SECONDS)


def _broker_status():
    if "redis" not in settings.Q_CLUSTER:
        return "ok (orm)"  # the ORM broker is the database checked above
    try:
        _redis_client(settings.Q_CLUSTER["redis"]).ping()
    except Exception as exc:  # report, don't gate: see the module docstring
        return f"error: {str(exc)[:200]}"
    return "ok (redis)"


def _backends_status():
    """``{"total", "healthy", "answered", "answering", "not_answering"}``; the last two are positions.

    ``answered``: some configured backend has ever answered. ``answering``: in rotation and has
    answered; ``not_answering``: the others (out of rotation, or never heard from).
    """
    from generation.models import BackendState

    urls = [backend["url"] for backend in settings.COMFYUI_BACKENDS]
    try:
        states = _states(BackendState, urls)
        if urls and not any(ok_at for _, ok_at in states.values()) and _probe_due():
            _probe(urls)
            states = _states(BackendState, urls)
    except Exception as exc:
        return {"error": str(exc)[:200]}
    answering = [n for n, url in enumerate(urls, 1) if url in states and all(states[url])]
    return {"total": len(urls),
            "healthy": sum(1 for url in urls if states.get(url, (True,))[0]),  # no row yet: nothing went wrong
            "answered": any(ok_at for _, ok_at in states.values()),
            "answering": answering,
            "not_answering": [n for n in range(1, len(urls) + 1) if n not in answering]}


def _states(model, urls):
    return {url: (healthy, ok_at) for url, healthy, ok_at in
            model.objects.filter(url__in=urls).values_list("url", "is_healthy", "last_ok_at")}


def _probe_due():
    global _next_probe_at
    with _probe_lock:
        now = time.monotonic()
        if now < _next_probe_at:
            return False
        _next_probe_at = now + PROBE_INTERVAL_SECONDS
        return True


def _probe(urls):
    """Ask every backend for its queue at once; stamp the ones that answer (rows created if needed)."""
    from generation import backends

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(urls))) as pool:
        answers = list(pool.map(_answers, urls))
    backends.sync_backends()
    for url, answered in zip(urls, answers, strict=True):
        if answered:
            backends.mark_up(url)


def _answers(url):
    from generation.comfyui.client import ComfyUIClient
    from generation.comfyui.errors import BackendUnavailable

    try:
        ComfyUIClient(url, timeout=PROBE_TIMEOUT_SECONDS, retries=0).queue()
    except (BackendUnavailable, ValueError, TypeError, AttributeError, LookupError):  # no answer, or not ComfyUI's
        return False
    return True
