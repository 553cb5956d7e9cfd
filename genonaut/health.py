"""Liveness and readiness endpoints for load balancers (no authentication, no secrets)."""

from django.db import connection
from django.http import JsonResponse


def liveness(request):
    """The process answers."""
    return JsonResponse({"status": "ok"})


def readiness(request):
    """The process can serve: the database answers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any database error means not ready
        return JsonResponse({"status": "unavailable", "database": str(exc)[:200]}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})
