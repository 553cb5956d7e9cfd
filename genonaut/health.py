"""Liveness and readiness endpoints for load balancers (no authentication, no secrets).

``/healthz`` says the process answers. ``/readyz`` says this web process can serve: it is 503
only when the database does not answer, because without it nothing works. The broker and the
ComfyUI backends are reported but do not gate readiness: with Redis down a submit is still
stored (the reconciler re-sends lost wake-ups) and history still loads, and with every backend
down requests wait in the queue — taking every web node out of rotation would turn a partial
outage into a full one. Each check is one cheap round trip with a short timeout.
"""

from functools import lru_cache

from django.conf import settings
from django.db import connection
from django.http import JsonResponse

BROKER_TIMEOUT_SECONDS = 0.5


def liveness(request):
    """The process answers."""
    return JsonResponse({"status": "ok"})


def readiness(request):
    """The process can serve: the database answers; broker and backends are reported alongside."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any database error means not ready
        return JsonResponse({"status": "unavailable", "database": str(exc)[:200]}, status=503)
    return JsonResponse({"status": "ok", "database": "ok", "broker": _broker_status(),
                         "backends": _backends_status()})


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
    """Healthy/total configured backends as the workers last saw them (one indexed query)."""
    from generation.models import BackendState

    urls = [backend["url"] for backend in settings.COMFYUI_BACKENDS]
    try:
        down = BackendState.objects.filter(url__in=urls, is_healthy=False).count()
    except Exception as exc:
        return {"error": str(exc)[:200]}
    return {"total": len(urls), "healthy": len(urls) - down}
