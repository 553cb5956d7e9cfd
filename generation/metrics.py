"""Generation-aware metrics: counters recorded where events happen, and ``/metrics`` for Prometheus.

Everything ``/metrics`` shows is read from PostgreSQL at scrape time: the current state (requests
waiting or running, queue depth and oldest wait, backends up or down, slots in use) from the request and
backend rows, and what the rows do not keep (finished requests by outcome, failures by reason, requeues,
checkpoint loads, webhook deliveries, queue-wait and execution-time histograms) from
:class:`~generation.models.MetricCounter` rows, incremented by the process where the event happens. So any
web process on any host answers the same figures, a SIGKILLed worker loses nothing it had counted, and
nothing per process has to be collected host by host (which prometheus_client's multi-process mode would
need: one scrape target per worker host, and counters that vanish with a host's files).

Counter writes happen once per event (a transition, a checkpoint load, a webhook attempt), after the event's
own transaction commits, never on the per-progress path; a failed counter write is logged, never raised.
A scrape costs five small queries whatever the history holds (``bench/ops_bench.py``).
"""

import hmac
import json
import logging
import time
from bisect import bisect_left

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Min
from django.http import Http404, HttpResponse, HttpResponseForbidden
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from generation.models import BackendState, GenerationRequest, MetricCounter
from generation.states import ACTIVE, TERMINAL, Status

logger = logging.getLogger(__name__)

PREFIX = "genonaut_"
# upper bounds (seconds) of each histogram's buckets; +Inf is implied
BUCKETS = {
    "queue_wait_seconds": (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    "execution_seconds": (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200),
    "checkpoint_load_seconds": (0.5, 1, 2, 5, 10, 20, 30, 60, 120),
}
# node classes that load a checkpoint: one that executes (ComfyUI did not reuse its cached output) is a load
CHECKPOINT_LOADERS = frozenset({"CheckpointLoaderSimple", "CheckpointLoader", "ImageOnlyCheckpointLoader",
                                "unCLIPCheckpointLoader"})

HELP = {
    "requests": "Requests waiting or running, by workflow and status.",
    "requests_finished": "Requests that reached a final status, by workflow and status.",
    "queue_depth": "Requests queued in Genonaut waiting for a backend slot.",
    "queue_oldest_wait_seconds": "How long the longest-waiting queued request has waited (0 when none).",
    "queue_wait_seconds": "Time from queued to dispatched to a backend, per dispatch, by workflow.",
    "execution_seconds": "Time from dispatch to completed (ComfyUI's queue, run, storing), by workflow.",
    "checkpoint_load_seconds": "Checkpoint loads on each backend (a loader node that ran, not cached) and "
                               "their time; _count is the number of checkpoint switches.",
    "backend_up": "1 while a configured backend is in rotation, 0 while it is out (not answering).",
    "backend_capacity": "Jobs Genonaut keeps on a backend at once (its configured capacity).",
    "backend_running": "Jobs holding a slot on a backend (not yet finished on ComfyUI).",
    "failures": "Requests that failed, by workflow and reason (validation, execution, interrupted, storage, "
                "retries_exhausted, deadline, …).",
    "requeues": "Jobs sent back to the queue for another attempt (backend lost, restarted or failing), by workflow.",
    "webhook_deliveries": "Webhook delivery attempts by outcome (delivered, retry, gave_up).",
    "task_queue_depth": "Tasks waiting in the broker, per Django-Q queue (jobs, housekeeping, webhooks).",
    "broker_up": "1 when the broker answered the queue-size question during this scrape.",
}


# --- recording ---------------------------------------------------------------------------------------------

def _key(labels):
    return json.dumps(labels or {}, sort_keys=True, separators=(",", ":"))


def _add(name, labels, *, count, total=0.0):
    key = _key(labels)
    rows = MetricCounter.objects.filter(name=name, labels=key)
    if rows.update(count=F("count") + count, total=F("total") + total):
        return
    try:
        with transaction.atomic():  # a savepoint: losing the race to create the row must not end an outer transaction
            MetricCounter.objects.create(name=name, labels=key, count=count, total=total)
    except IntegrityError:
        rows.update(count=F("count") + count, total=F("total") + total)


def count(name, labels=None, *, by=1):
    """Add ``by`` to counter ``name`` with ``labels`` (a dict of label values)."""
    _add(name, labels, count=by)


def observe(name, value, labels=None):
    """Record ``value`` in histogram ``name`` (a key of :data:`BUCKETS`): one row update, its bucket's."""
    bounds = BUCKETS[name]
    index = bisect_left(bounds, value)
    le = "+Inf" if index == len(bounds) else _number(bounds[index])
    _add(name, {**(labels or {}), "le": le}, count=1, total=float(value))


def _recorded(function):
    """Counting must never break the work it counts: any failure to count is logged and dropped."""
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception:  # a lost count is better than a job that fails (or a completion undone) over it
            logger.exception("could not record a metric (%s)", function.__name__)
    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper


@_recorded
def record_transition(request_id, status, *, requeued=False, error_detail=None):
    """After a committed status change of ``request_id`` to ``status``: a dispatch observes its queue wait,
    a requeue counts, a final status counts by outcome (a failure by reason, a completion its execution time).
    A pending → queued change costs nothing (the submit path stays as it was)."""
    status = Status(status)
    if status == Status.QUEUED and not requeued:
        return
    row = GenerationRequest.objects.filter(pk=request_id).values(
        "workflow_slug", "queued_at", "started_at", "finished_at").first()
    if row is None:
        return
    workflow = {"workflow": row["workflow_slug"]}
    if status == Status.RUNNING:
        if row["queued_at"] and row["started_at"]:
            observe("queue_wait_seconds", _seconds(row["started_at"] - row["queued_at"]), workflow)
    elif status == Status.QUEUED:
        count("requeues", workflow)
    elif status in TERMINAL:
        count("requests_finished", {**workflow, "status": status.value})
        if status == Status.FAILED:
            detail = error_detail or {}
            count("failures", {**workflow, "reason": str(detail.get("type") or detail.get("reason") or "other")})
        elif status == Status.COMPLETED and row["started_at"] and row["finished_at"]:
            observe("execution_seconds", _seconds(row["finished_at"] - row["started_at"]), workflow)


@_recorded
def record_webhook(outcome):
    """One webhook delivery attempt ended with ``outcome`` (``delivered``, ``retry``, ``gave_up``)."""
    count("webhook_deliveries", {"outcome": outcome})


class CheckpointLoadTimer:
    """Times checkpoint loads on ``backend`` from one prompt's events: a loader node of ``graph``
    (:data:`CHECKPOINT_LOADERS`) that executes runs from its ``executing`` event to the next node's.

    Feed it every event with :meth:`see`; it writes one counter row per load it saw end, nothing else.
    A cached loader sends no ``executing`` event, so it is not counted. Events that reach us only through
    the ``/history`` fallback (websocket lost) carry no timing and are not counted either.
    """

    def __init__(self, backend, graph, *, clock=time.monotonic):
        self.backend = backend
        self.loaders = {node_id for node_id, node in (graph or {}).items()
                        if isinstance(node, dict) and node.get("class_type") in CHECKPOINT_LOADERS}
        self.clock = clock
        self.loading = None  # (node id, started) while a loader runs

    def see(self, event):
        from generation.comfyui import events as ev

        if isinstance(event, ev.Executing):
            if self.loading is not None and event.node != self.loading[0]:
                self._loaded()
            if self.loading is None and event.node in self.loaders:
                self.loading = (event.node, self.clock())
        elif isinstance(event, (ev.Progress, ev.Executed, ev.ExecutionSuccess)):
            self._loaded()  # the loader is done once anything after it happens
        elif isinstance(event, ev.TERMINAL):
            self.loading = None  # an error or interrupt inside the loader is not a load

    @_recorded
    def _loaded(self):
        if self.loading is not None:
            _, started = self.loading
            self.loading = None
            observe("checkpoint_load_seconds", max(0.0, self.clock() - started), {"backend": self.backend})


def _seconds(delta):
    return max(0.0, delta.total_seconds())


def _number(value):
    return repr(float(value)) if isinstance(value, float) else str(value)


# --- exposition ---------------------------------------------------------------------------------------------

class _Collector:
    """Builds every metric family from the database when the registry is collected (once per scrape)."""

    def collect(self):
        now = timezone.now()
        yield from self._requests(now)
        yield from self._counters()
        yield from self._backends()
        yield from self._task_queues()

    def _requests(self, now):
        active = GaugeMetricFamily(PREFIX + "requests", HELP["requests"], labels=["workflow", "status"])
        depth, oldest = 0, None
        rows = (GenerationRequest.objects.filter(status__in=sorted(ACTIVE)).order_by()
                .values("workflow_slug", "status").annotate(n=Count("*"), first_queued=Min("queued_at")))
        for row in rows:
            active.add_metric([row["workflow_slug"], row["status"]], row["n"])
            if row["status"] == Status.QUEUED:
                depth += row["n"]
                if row["first_queued"] and (oldest is None or row["first_queued"] < oldest):
                    oldest = row["first_queued"]
        yield active
        yield GaugeMetricFamily(PREFIX + "queue_depth", HELP["queue_depth"], value=depth)
        yield GaugeMetricFamily(PREFIX + "queue_oldest_wait_seconds", HELP["queue_oldest_wait_seconds"],
                                value=_seconds(now - oldest) if oldest else 0.0)

    def _counters(self):
        plain, histograms = {}, {}
        for name, key, value, total in MetricCounter.objects.values_list("name", "labels", "count", "total"):
            labels = json.loads(key)
            if name in BUCKETS:
                le = labels.pop("le", "+Inf")
                series = histograms.setdefault(name, {}).setdefault(tuple(sorted(labels.items())), {})
                bucket = series.setdefault(le, [0, 0.0])
                bucket[0] += value
                bucket[1] += total
            else:
                plain.setdefault(name, []).append((labels, value))
        for name, label_names in (("requests_finished", ["workflow", "status"]),
                                  ("failures", ["workflow", "reason"]), ("requeues", ["workflow"]),
                                  ("webhook_deliveries", ["outcome"])):
            family = CounterMetricFamily(PREFIX + name, HELP[name], labels=label_names)
            for labels, value in plain.get(name, []):
                family.add_metric([str(labels.get(label, "")) for label in label_names], value)
            yield family
        for name, label_names in (("queue_wait_seconds", ["workflow"]), ("execution_seconds", ["workflow"]),
                                  ("checkpoint_load_seconds", ["backend"])):
            family = HistogramMetricFamily(PREFIX + name, HELP[name], labels=label_names)
            for labels, buckets in histograms.get(name, {}).items():
                values = dict(labels)
                family.add_metric([str(values.get(label, "")) for label in label_names],
                                  *_cumulative(BUCKETS[name], buckets))
            yield family

    def _backends(self):
        families = {name: GaugeMetricFamily(PREFIX + name, HELP[name], labels=["backend"])
                    for name in ("backend_up", "backend_capacity", "backend_running")}
        urls = [backend["url"] for backend in settings.COMFYUI_BACKENDS]
        states = {row.url: row for row in BackendState.objects.filter(url__in=urls)}
        running = dict(GenerationRequest.objects.filter(status=Status.RUNNING, executed_at__isnull=True,
                                                        backend__in=urls)
                       .values("backend").annotate(n=Count("*")).values_list("backend", "n"))
        for backend in settings.COMFYUI_BACKENDS:
            state = states.get(backend["url"])
            # a backend no worker has looked at yet has no row: it counts as up, as the dispatcher treats it
            families["backend_up"].add_metric([backend["url"]], 1 if state is None or state.is_healthy else 0)
            families["backend_capacity"].add_metric([backend["url"]], backend["capacity"])
            families["backend_running"].add_metric([backend["url"]], running.get(backend["url"], 0))
        yield from families.values()

    def _task_queues(self):
        from generation import enqueue

        depth = GaugeMetricFamily(PREFIX + "task_queue_depth", HELP["task_queue_depth"], labels=["queue"])
        try:
            for role, size in enqueue.queue_sizes().items():
                depth.add_metric([role], size)
            answered = 1
        except Exception:  # a broker outage is what this gauge reports, not a failed scrape
            logger.warning("metrics: the broker did not answer", exc_info=True)
            answered = 0
        yield depth
        yield GaugeMetricFamily(PREFIX + "broker_up", HELP["broker_up"], value=answered)


def _cumulative(bounds, buckets):
    """``(buckets, sum)`` for HistogramMetricFamily: cumulative counts per bound of ``bounds`` and +Inf from
    per-bucket ``{le: [count, total]}`` rows (a row whose bound is not one of ``bounds`` counts in the next)."""
    stored = sorted(((float(le), value) for le, value in buckets.items()), key=lambda item: item[0])
    result, running, index = [], 0, 0
    for bound in (*bounds, float("inf")):
        while index < len(stored) and stored[index][0] <= bound:
            running += stored[index][1][0]
            index += 1
        result.append(["+Inf" if bound == float("inf") else _number(bound), running])
    return result, sum(value[1] for value in buckets.values())


def render():
    """The Prometheus text exposition (format 0.0.4) of every metric, read from the database now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)


def may_read(request):
    """``True`` for staff, or for ``Authorization: Bearer <METRICS_TOKEN>`` when that setting is set; ``False``
    for a bearer token that does not match (403: the scraper's configuration is wrong); ``None`` otherwise."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        token = settings.METRICS_TOKEN
        return bool(token) and hmac.compare_digest(header[7:].strip().encode(), token.encode())
    user = getattr(request, "user", None)
    return True if user is not None and user.is_authenticated and user.is_staff else None


def metrics_view(request):
    """``GET /metrics``: staff, or a scraper with the bearer token; a wrong token 403, anyone else 404."""
    allowed = may_read(request)
    if allowed is False:
        return HttpResponseForbidden("A bearer token is accepted only when it equals METRICS_TOKEN.\n",
                                     content_type="text/plain")
    if not allowed:
        raise Http404("No such page.")
    response = HttpResponse(render(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response["Cache-Control"] = "no-store"
    return response
