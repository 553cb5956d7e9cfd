"""Fixtures that run real Django-Q clusters (``manage.py qcluster``) against the test database.

- ``cluster_factory(backends, **options)``: start the qcluster subprocesses of one deployment — one per
  role (``jobs``, ``housekeeping``, ``webhooks``: ``Q_ROLE``), as production runs them — whose ComfyUI
  backends are the given simulator URLs (``url`` or ``(url, capacity)``), with short heartbeat / stale /
  backoff settings; the test process's settings are switched to the same values and queues, so services,
  the dispatcher and the reconciler called from the test agree with the workers, and the live server's event
  streams hear them (the test process takes the site's name: the fan-out channel is the site's). Options:
  ``workers`` (of the jobs cluster), ``redis_url`` (use the Redis broker instead of the ORM one),
  ``generation`` (``GENERATION`` overrides), ``name`` (the site; give several deployments one name to share
  its queues), ``roles`` (a subset of the roles to start). Returns a :class:`Cluster`; every cluster is
  killed after the test.
- ``wait_for_request(request_id, *statuses, timeout)``: poll the row until it reaches a status.

Tests using them need ``@pytest.mark.django_db(transaction=True)`` (the workers must see
committed rows) and ``@pytest.mark.integration``.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
TEST_GENERATION = {
    "HEARTBEAT_SECONDS": 0.1,
    "STALE_HEARTBEAT_SECONDS": 2,
    "BACKEND_BACKOFF_MAX_SECONDS": 1,
    "JOB_DEADLINE_SECONDS": 60,
    "MAX_ATTEMPTS": 3,
    "REQUEUE_BACKOFF_SECONDS": 0.2,
    "REQUEUE_BACKOFF_MAX_SECONDS": 1,
}
_ENV_NAMES = {  # GENERATION key -> environment variable read by genonaut/settings.py
    "HEARTBEAT_SECONDS": "HEARTBEAT_SECONDS",
    "STALE_HEARTBEAT_SECONDS": "STALE_HEARTBEAT_SECONDS",
    "STALL_SECONDS": "STALL_SECONDS",
    "REQUEUE_BACKOFF_SECONDS": "REQUEUE_BACKOFF_SECONDS",
    "REQUEUE_BACKOFF_MAX_SECONDS": "REQUEUE_BACKOFF_MAX_SECONDS",
    "STORAGE_RETRIES": "STORAGE_RETRIES",
    "STORAGE_RETRY_SECONDS": "STORAGE_RETRY_SECONDS",
    "BACKEND_BACKOFF_MAX_SECONDS": "BACKEND_BACKOFF_MAX_SECONDS",
    "JOB_DEADLINE_SECONDS": "JOB_DEADLINE_SECONDS",
    "MAX_ATTEMPTS": "MAX_ATTEMPTS",
    "AFFINITY": "DISPATCH_AFFINITY",
    "AFFINITY_MAX_SKIPS": "AFFINITY_MAX_SKIPS",
    "MAX_ACTIVE_PER_USER": "MAX_ACTIVE_PER_USER",
    "RETENTION_DAYS": "RETENTION_DAYS",
}


def database_url():
    """The URL of the database this test uses (the test database, not the configured one)."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"])
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def backend_list(backends):
    result = []
    for backend in backends:
        url, capacity = (backend, 2) if isinstance(backend, str) else backend
        result.append({"url": getattr(url, "url", url).rstrip("/"), "capacity": capacity})
    return result


ROLES = ("jobs", "housekeeping", "webhooks")


def use_queues(name, *, redis_url=None):
    """Point this process's enqueues at the queues of the site ``name`` (what its clusters consume)."""
    from django.conf import settings
    from django_q.conf import Conf

    from genonaut.settings import queues_for

    settings.Q_QUEUES = queues_for(name)
    Conf.PREFIX = name  # the ORM broker signs task payloads with it: it must be the clusters' name
    Conf.CLUSTER_NAME = settings.Q_QUEUES["jobs"]
    if redis_url:
        Conf.ORM, Conf.REDIS, Conf.BROKER_CLASS = None, redis_url, None  # as the clusters' settings say


class Cluster:
    """The running ``qcluster`` processes of one deployment: one per role, each in its own process group,
    all writing to one log."""

    def __init__(self, env, log_path, roles=ROLES):
        from genonaut.settings import queues_for

        self.env = env
        self.log_path = log_path
        self.roles = tuple(roles)
        self.queues = queues_for(env.get("Q_CLUSTER_NAME") or "genonaut")
        self.processes = {}

    def start(self):
        log = open(self.log_path, "ab")  # noqa: SIM115 - the children write to it for their whole life
        for role in self.roles:
            self.processes[role] = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "qcluster"], cwd=ROOT, env={**self.env, "Q_ROLE": role},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for role, process in self.processes.items():
                if process.poll() is not None:
                    self.kill()
                    raise RuntimeError(f"the {role} qcluster exited: {self.log()[-3000:]}")
            text = self.log()
            # "Q Cluster <id> [<queue>] running." (Redis names the queue django_q:<queue>:q)
            if all(f"[{self.queues[role]}] running." in text or f":{self.queues[role]}:q] running." in text
                   for role in self.roles):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"qcluster did not start within {START_TIMEOUT}s: {self.log()[-3000:]}")

    def log(self):
        return Path(self.log_path).read_text(errors="replace")

    @property
    def pid(self):
        """The jobs cluster's process (or the first role's)."""
        return self.processes[self.roles[0]].pid

    @property
    def pids(self):
        return [process.pid for process in self.processes.values()]

    def kill(self, role=None):
        """SIGKILL every cluster, or only ``role``'s (each its own process group: parent, sentinel, workers,
        monitor)."""
        for name, process in self.processes.items():
            if role not in (None, name):
                continue
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)

    def stop(self, timeout=5.0):
        running = [process for process in self.processes.values() if process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # whatever is left of the groups (a worker still in a task)

    def restart(self):
        self.kill()
        return self.start()


@pytest.fixture
def cluster_factory(transactional_db, settings, _media_root):
    """Start qcluster subprocesses; each is stopped (then its group killed) after the test."""
    from django_q.brokers import get_broker
    from django_q.conf import Conf

    from generation.live import bus as live_bus

    started = []
    saved_conf = {name: getattr(Conf, name) for name in ("ORM", "REDIS", "BROKER_CLASS", "CLUSTER_NAME", "PREFIX")}

    def factory(backends, *, workers=None, redis_url=None, generation=None, env=None, name=None, roles=ROLES):
        backends = backend_list(backends)
        overrides = {**TEST_GENERATION, **(generation or {})}
        settings.COMFYUI_BACKENDS = backends
        settings.GENERATION = {**settings.GENERATION, **overrides}
        name = name or f"genonaut-test-{uuid.uuid4().hex[:8]}"  # deployments given one name share its queues
        child_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "genonaut.test_settings",
            "DATABASE_URL": database_url(),
            "DATABASE_CONN_MAX_AGE": "0",
            "COMFYUI_URL": ",".join(f"{b['url']};capacity={b['capacity']}" for b in backends),
            "COMFYUI_TIMEOUT": "2",
            "MEDIA_ROOT": str(_media_root),
            "Q_WORKERS": str(workers or max(2, sum(b["capacity"] for b in backends))),
            "Q_HOUSEKEEPING_WORKERS": "2",
            "Q_WEBHOOK_WORKERS": "2",
            "Q_POLL": "0.02",
            "Q_CLUSTER_NAME": name,
            "REDIS_URL": redis_url or "",
            "LOG_LEVEL": "INFO",  # the readiness line " running." is logged at INFO
            "PYTHONUNBUFFERED": "1",
        }
        for key, value in overrides.items():
            child_env[_ENV_NAMES[key]] = str(int(value) if isinstance(value, bool) else value)
        child_env.update(env or {})
        use_queues(name, redis_url=redis_url)  # the test process enqueues to the same broker and queues
        # and its event streams (live_server) hear the workers: the fan-out channel is the site's, and the
        # listener, which otherwise lives as long as the process, starts again on it
        settings.Q_CLUSTER = {**settings.Q_CLUSTER, "name": name}
        live_bus.hub.stop()
        log = tempfile.NamedTemporaryFile(prefix="qcluster-", suffix=".log", delete=False)  # noqa: SIM115
        log.close()
        cluster = Cluster(child_env, log.name, roles=roles)
        started.append(cluster)
        return cluster.start()

    yield factory
    live_bus.hub.stop()
    for cluster in started:
        cluster.kill()  # a graceful stop waits for tasks in flight; tests have nothing left to save
        Path(cluster.log_path).unlink(missing_ok=True)
    if Conf.REDIS and not Conf.ORM:  # leave nothing behind in the shared Redis database
        for queue in settings.Q_QUEUES.values():
            get_broker(queue).delete_queue()
    for name, value in saved_conf.items():
        setattr(Conf, name, value)


@pytest.fixture
def wait_for_request():
    """``wait_for_request(id, "completed", "failed", timeout=10)`` → the row once it has one of those statuses."""
    from generation.models import GenerationRequest

    def wait(request_id, *statuses, timeout=15.0, interval=0.02):
        deadline = time.monotonic() + timeout
        while True:
            row = GenerationRequest.objects.get(pk=request_id)
            if row.status in statuses:
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"request {request_id} is {row.status} (progress {row.progress}, "
                                     f"error {row.error!r}), not {statuses}, after {timeout}s")
            time.sleep(interval)

    return wait
