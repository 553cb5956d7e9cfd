"""ComfyUI backends: the configured list ↔ ``BackendState`` rows, health with backoff, overview.

``settings.COMFYUI_BACKENDS`` says which backends exist and their capacity; the rows hold what
every worker host must agree on: whether a backend is in rotation (``is_healthy``), until when
it is left alone (``down_until``, exponential backoff), and which checkpoint it has loaded.

A backend leaves rotation the first time a job or a probe cannot reach it, and comes back
when a probe (``GET /queue``) answers. Probes happen when its backoff expires: from the
``watch_backend`` task chain started by the healthy → down change, and from the reconciler as
a safety net.
"""

import logging
from datetime import timedelta
from itertools import chain

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, Q
from django.utils import timezone

from generation.comfyui.client import ComfyUIClient
from generation.comfyui.errors import BackendUnavailable
from generation.live import bus
from generation.models import BackendState, GenerationRequest
from generation.states import Status

logger = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 1.0  # first retry after 1 s, doubling up to GENERATION["BACKEND_BACKOFF_MAX_SECONDS"]
RECENT = timedelta(hours=1)


def configured_urls():
    return [backend["url"] for backend in settings.COMFYUI_BACKENDS]


def configured_capacity():
    """Slots of all configured backends together: the most :func:`free_slots` can ever answer."""
    return sum(backend["capacity"] for backend in settings.COMFYUI_BACKENDS)


def client_for(url):
    return ComfyUIClient(url, timeout=settings.COMFYUI_TIMEOUT, retries=2)


def sync_backends():
    """Make sure every configured backend has a row with the configured capacity; return those rows."""
    rows = {row.url: row for row in BackendState.objects.filter(url__in=configured_urls())}
    for backend in settings.COMFYUI_BACKENDS:
        row = rows.get(backend["url"])
        if row is None:
            row, _ = BackendState.objects.get_or_create(url=backend["url"], defaults={"capacity": backend["capacity"]})
            rows[row.url] = row
        if row.capacity != backend["capacity"]:
            BackendState.objects.filter(pk=row.pk).update(capacity=backend["capacity"])
            row.capacity = backend["capacity"]
    return [rows[url] for url in configured_urls()]


def backoff_seconds(consecutive_failures):
    cap = settings.GENERATION["BACKEND_BACKOFF_MAX_SECONDS"]
    return min(cap, BACKOFF_BASE_SECONDS * 2 ** max(0, consecutive_failures - 1))


def mark_down(url, error):
    """Take ``url`` out of rotation until its backoff expires; return True if it was in rotation
    (the caller that sees True starts the ``watch_backend`` chain, so there is one per outage)."""
    now = timezone.now()
    row = BackendState.objects.filter(url=url).first()
    failures = (row.consecutive_failures if row else 0) + 1
    values = {"is_healthy": False, "consecutive_failures": F("consecutive_failures") + 1,
              "down_until": now + timedelta(seconds=backoff_seconds(failures)),
              "last_error": str(error)[:2000], "last_checked_at": now, "updated_at": now}
    was_healthy = BackendState.objects.filter(url=url, is_healthy=True).update(**values) == 1
    if not was_healthy:
        BackendState.objects.filter(url=url).update(**values)
    if was_healthy:
        logger.warning("backend %s is out of rotation: %s", url, error)
        bus.publish({"k": "backend"})
    return was_healthy


def mark_up(url):
    """Put ``url`` back in rotation; return True if it was out."""
    now = timezone.now()
    came_back = BackendState.objects.filter(url=url, is_healthy=False).update(
        is_healthy=True, consecutive_failures=0, down_until=None, last_ok_at=now, last_checked_at=now,
        updated_at=now) == 1
    if came_back:
        logger.warning("backend %s is back in rotation", url)
        bus.publish({"k": "backend"})
    else:
        BackendState.objects.filter(url=url).update(last_ok_at=now, last_checked_at=now)
    return came_back


def probe(url):
    """Ask the backend for its queue; mark it up or down accordingly. Return whether it answered."""
    try:
        client_for(url).queue()
    except BackendUnavailable as exc:
        mark_down(url, exc)
        return False
    mark_up(url)
    return True


def probe_due_backends():
    """Probe every configured backend whose backoff has expired; return the URLs that came back."""
    now = timezone.now()
    due = BackendState.objects.filter(url__in=configured_urls(), is_healthy=False).filter(
        Q(down_until__isnull=True) | Q(down_until__lte=now)).values_list("url", flat=True)
    return [url for url in due if probe(url)]


def check_idle_backends():
    """Probe the backends in rotation that run nothing for us: one that died while idle leaves
    rotation now, instead of costing the next job an attempt. Return the URLs that went down."""
    busy = set(GenerationRequest.objects.filter(status=Status.RUNNING).values_list("backend", flat=True))
    idle = [row.url for row in sync_backends() if row.is_healthy and row.url not in busy]
    return [url for url in idle if not probe(url)]


# --- capabilities: which node classes and model files each backend has --------------------------------

def capabilities_of(object_info):
    """``(node classes, {folder: [files]})`` a backend's ``/object_info`` shows."""
    return sorted(object_info.node_classes), {folder: sorted(names) for folder, names in
                                              object_info.model_lists().items()}


def record_capabilities(url, object_info):
    """Store what ``url``'s ``object_info`` says it can run (the dispatcher and submit read it)."""
    nodes, lists = capabilities_of(object_info)
    now = timezone.now()  # it answered /object_info: proof it is reachable, as a probe would be
    values = {"node_classes": nodes, "model_lists": lists, "capabilities_at": now, "last_ok_at": now}
    if not BackendState.objects.filter(url=url).update(**values) and url in configured_urls():
        sync_backends()  # a configured backend nobody dispatched to yet has no row
        BackendState.objects.filter(url=url).update(**values)
    return nodes, lists


_noted = {}  # url -> capabilities digest this process recorded last


def note_object_info(url, object_info):
    """Record ``object_info``'s capabilities unless this process recorded the same ones already (the
    client caches one copy per URL; a fresh copy with equal node classes and model lists costs nothing)."""
    digest = object_info.capabilities_digest
    if _noted.get(url) != digest:
        record_capabilities(url, object_info)
        _noted[url] = digest


def refresh_capabilities(url, client=None):
    """Fetch ``url``'s ``/object_info`` afresh and record it; raises ``BackendUnavailable``."""
    info = (client or client_for(url)).object_info(refresh=True)
    record_capabilities(url, info)
    _noted[url] = info.capabilities_digest
    return info


def unmet_everywhere(requirements):
    """``{backend url: [what it lacks]}`` when every configured backend is known to lack part of
    ``requirements`` (a request nobody could run), else ``{}``. A backend whose capabilities were never
    read counts as able: the check at dispatch decides for it."""
    rows = sync_backends()
    lacking = {}
    for row in rows:
        if row.capabilities_at is None:
            return {}
        missing = requirements.missing_on(set(row.node_classes), row.model_lists)
        if not missing:
            return {}
        lacking[row.url] = missing
    return lacking


def record_outcome(url, *, completed):
    """Count a finished job; a completed one is also proof the backend answered."""
    field = "jobs_completed" if completed else "jobs_failed"
    extra = {"last_ok_at": timezone.now()} if completed else {}
    BackendState.objects.filter(url=url).update(**{field: F(field) + 1}, **extra)


def free_slots():
    """Total free capacity of the backends in rotation (how many jobs could start right now)."""
    rows = sync_backends()
    running = dict(GenerationRequest.objects.filter(status=Status.RUNNING, executed_at__isnull=True,
                                                    backend__in=[r.url for r in rows])
                   .values_list("backend").annotate(n=Count("id")).values_list("backend", "n"))
    return sum(max(0, row.capacity - running.get(row.url, 0)) for row in rows if row.is_healthy)


def backend_overview(*, recent_failures=5):
    """What the staff page and the API show: one dict per configured backend, in settings order.

    Keys: ``url``, ``healthy``, ``down_until``, ``consecutive_failures``, ``last_error``, ``last_ok_at``,
    ``last_checked_at``, ``capacity``, ``running`` (jobs assigned to it), ``executing`` (of those,
    started on ComfyUI), ``waiting_on_backend`` (of those, still in ComfyUI's own queue),
    ``storing_outputs`` (of those, finished on ComfyUI, images being stored: they hold no slot),
    ``free_slots``, ``loaded_checkpoint`` ("" for a backend that never answered), ``jobs_completed`` /
    ``jobs_failed`` (all time), ``completed_last_hour`` / ``failed_last_hour``, ``recent_failures`` (newest first:
    ``{"request_id", "finished_at", "error"}``).

    Costs four queries and none grows with history: running rows come from their partial index, the
    last hour and the recent failures from ``genreq_backend_finished_idx`` (backend, status, finished_at).
    """
    rows = sync_backends()
    urls = [row.url for row in rows]
    running = {row["backend"]: row for row in GenerationRequest.objects.filter(
        status=Status.RUNNING, backend__in=urls).values("backend").annotate(
        n=Count("id"), storing=Count("id", filter=Q(executed_at__isnull=False)),
        executing=Count("id", filter=Q(executed_at__isnull=True) & (Q(run__current_node__gt="")
                                                                    | Q(run__progress__gt=0))))}
    last_hour = finished_since(timezone.now() - RECENT, urls=urls)
    failures = recent_failures_of(urls, limit=recent_failures)
    overview = []
    for row in rows:
        counts = running.get(row.url, {"n": 0, "executing": 0, "storing": 0})
        on_backend = counts["n"] - counts["storing"]
        overview.append({
            "url": row.url,
            "healthy": row.is_healthy,
            "down_until": row.down_until,
            "consecutive_failures": row.consecutive_failures,
            "last_error": row.last_error,
            "last_ok_at": row.last_ok_at,
            "last_checked_at": row.last_checked_at,
            "capacity": row.capacity,
            "running": counts["n"],
            "executing": counts["executing"],
            "waiting_on_backend": on_backend - counts["executing"],
            "storing_outputs": counts["storing"],
            "free_slots": max(0, row.capacity - on_backend) if row.is_healthy else 0,
            # the checkpoint of the last job sent there: unknown until the backend has ever answered
            "loaded_checkpoint": row.loaded_checkpoint if row.last_ok_at else "",
            "jobs_completed": row.jobs_completed,
            "jobs_failed": row.jobs_failed,
            "completed_last_hour": last_hour.get((row.url, Status.COMPLETED), 0),
            "failed_last_hour": last_hour.get((row.url, Status.FAILED), 0),
            "recent_failures": failures.get(row.url, []),
        })
    return overview


def finished_since(since, *, urls):
    """``{(backend url, status): n}`` of requests completed or failed on ``urls`` since ``since``:
    one index range per (backend, status) pair, so it costs what the window holds, not the history."""
    counts = (GenerationRequest.objects.filter(backend__in=urls, status__in=[Status.COMPLETED, Status.FAILED],
                                               finished_at__gte=since)
              .order_by().values("backend", "status").annotate(n=Count("*")).values_list("backend", "status", "n"))
    return {(backend, status): n for backend, status, n in counts}


def recent_failures_of(urls, *, limit=5):
    """``{backend url: [{"request_id", "finished_at", "error"}, …]}``, newest first, at most ``limit`` each:
    one index scan per backend (a single UNION ALL query where the database allows sliced parts)."""
    failed = GenerationRequest.objects.filter(status=Status.FAILED, finished_at__isnull=False)
    parts = [failed.filter(backend=url).order_by("-finished_at").values_list("backend", "id", "finished_at", "error")
             [:limit] for url in urls]
    if len(parts) > 1 and connection.features.supports_slicing_ordering_in_compound:
        rows = parts[0].union(*parts[1:], all=True)
    else:
        rows = chain.from_iterable(parts)
    result = {}
    for backend, request_id, finished_at, error in rows:
        result.setdefault(backend, []).append({"request_id": str(request_id), "finished_at": finished_at,
                                               "error": error})
    for failures in result.values():  # a union keeps no order between its parts' rows
        failures.sort(key=lambda failure: failure["finished_at"], reverse=True)
    return result
