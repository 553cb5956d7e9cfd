"""Fault-injected soak test of the whole pipeline, on loopback only, bounded in time and traffic.

    .venv/bin/python bench/soak.py                      # 2,000 requests, 20 users, Redis broker
    .venv/bin/python bench/soak.py --broker orm         # the same on Django-Q's ORM broker
    .venv/bin/python bench/soak.py --requests 200 --deadline 120

What runs: ``--backends`` ComfyUI simulators (separate processes, ``tests.plugins.simulator``)
with ``--error-rate`` of executions failing, ``--clusters`` Django-Q clusters (``manage.py
qcluster`` subprocesses, ``tests.plugins.cluster``) sharing one database and one broker, and
this process as the users (``--users`` people submitting through ``services.submit_generation``,
each kept under the per-user active limit like a real client retrying after a 429) and as the
reconciler host (``reconcile()`` every ``--reconcile-every`` seconds: production runs it every
minute from the Django-Q schedule; the soak compresses time, as it does with a 5 s stale-heartbeat).

Faults, each once, triggered by the share of requests finished:
  25 %  one backend restarted (queue, history and sockets forgotten, like a ComfyUI restart);
  45 %  one worker cluster killed with SIGKILL (the whole process group: master and workers),
        restarted ``--cluster-down`` seconds later;
  65 %  every database connection of the clusters terminated (``pg_terminate_backend``, only
        on the soak's own database — the PostgreSQL server keeps running).

At the end it checks, and prints one screen: every request terminal, failed ones with a reason,
completed ones with every image and thumbnail on storage (and the image's PNG parameters naming
the request's seed), no prompt submitted or executed twice on a backend, no orphan files,
nothing left running on any backend, every cluster process gone.

The standalone run creates (and drops first) the database named in ``--database-url``, which
must contain "soak"; the pytest version (tests/soak/test_soak.py) uses the test database.
"""

import argparse
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHECKPOINTS = ("tiny-sd15-random.safetensors", "dreamshaper-8.safetensors", "sdxl-base-1.0.safetensors")
THUMBNAIL_SIZES = ("small", "medium", "large")


@dataclass
class SoakConfig:
    requests: int = 2000
    users: int = 20
    backends: int = 4
    capacity: int = 2
    clusters: int = 2
    workers_per_cluster: int = 0  # 0: total backend capacity, so either cluster alone keeps every backend busy
    error_rate: float = 0.05
    step_time: float = 0.01
    load_time: float = 0.05
    deadline: float = 900.0  # seconds for the whole run, faults and drain included
    reconcile_every: float = 2.0
    stale_heartbeat: int = 5
    cluster_down: float = 3.0
    seed: int = 7
    faults: bool = True

    @property
    def workers(self):
        return self.workers_per_cluster or self.backends * self.capacity


@dataclass
class SoakResult:
    summary: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    @property
    def ok(self):
        return not self.problems


# --- the run --------------------------------------------------------------------------------

class Soak:
    """One soak run. ``simulators`` are started; ``start_cluster(index)`` starts a cluster and
    returns a ``tests.plugins.cluster.Cluster`` (``.pid``, ``.kill()`` = SIGKILL to its process
    group, ``.start()`` again, ``.stop()``)."""

    def __init__(self, config, *, simulators, start_cluster, media_root, log=print):
        self.config = config
        self.simulators = simulators
        self.start_cluster = start_cluster
        self.media_root = Path(media_root)
        self.log = log
        self.rng = random.Random(config.seed)
        self.timeline = []
        self.clusters = []
        self.submitted = []
        self.t0 = time.monotonic()

    def note(self, what):
        elapsed = time.monotonic() - self.t0
        self.timeline.append((round(elapsed, 1), what))
        self.log(f"[soak {elapsed:6.1f}s] {what}")

    def run(self):
        from django.db import close_old_connections

        from generation.reconciler import reconcile

        config = self.config
        users = self.make_users()
        self.make_models()
        for simulator in self.simulators:
            simulator.set_faults(execution_error_rate=config.error_rate)
        self.clusters = [self.start_cluster(index) for index in range(config.clusters)]
        self.note(f"{len(self.simulators)} backends, {len(self.clusters)} clusters × {config.workers} workers; "
                  f"{config.requests} requests from {config.users} users")
        remaining = {user.pk: config.requests // config.users + (i < config.requests % config.users)
                     for i, user in enumerate(users)}
        faults = self.fault_plan()
        deadline = self.t0 + config.deadline
        next_reconcile = time.monotonic() + config.reconcile_every
        restart_cluster_at = None
        while time.monotonic() < deadline:
            close_old_connections()
            try:
                self.submit_round(users, remaining)
                finished = self.finished_count()
            except Exception as exc:  # our own connection is never terminated, but be robust
                self.note(f"driver database error, retrying: {exc.__class__.__name__}")
                close_old_connections()
                time.sleep(0.2)
                continue
            share = finished / config.requests
            while faults and share >= faults[0][0]:
                _, name, action = faults.pop(0)
                self.note(f"fault at {share:.0%} finished: {name}")
                result = action()
                if name.startswith("kill -9"):
                    restart_cluster_at = time.monotonic() + config.cluster_down
                    self.note(f"  cluster pid {result} killed")
            if restart_cluster_at and time.monotonic() >= restart_cluster_at:
                self.clusters[0].start()
                restart_cluster_at = None
                self.note("killed cluster restarted")
            if time.monotonic() >= next_reconcile:
                try:
                    report = reconcile()
                    if any(report.values()):
                        self.note(f"reconcile: { {k: v for k, v in report.items() if v} }")
                except Exception as exc:
                    self.note(f"reconcile failed (retried next round): {exc.__class__.__name__}: {exc}")
                next_reconcile = time.monotonic() + config.reconcile_every
            if finished >= config.requests and not any(remaining.values()) and restart_cluster_at is None:
                break
            time.sleep(0.1)
        self.drained_at = time.monotonic()
        self.note(f"{self.finished_count()} of {config.requests} requests finished")
        self.wait_backends_idle(timeout=10)
        for cluster in self.clusters:
            cluster.stop()
        self.note("clusters stopped")
        return self.check()

    # --- users and requests --------------------------------------------------------------

    def make_users(self):
        from django.contrib.auth import get_user_model

        User = get_user_model()
        return [User.objects.create_user(username=f"soak-user-{i:02}", password="soak-password")
                for i in range(self.config.users)]

    def make_models(self):
        from models_registry.models import AvailableModel, ModelType

        for name in CHECKPOINTS:
            AvailableModel.objects.get_or_create(name=name, defaults={"type": ModelType.CHECKPOINT})

    def params(self):
        rng = self.rng
        return {"prompt": f"soak {rng.randrange(10**6)} a lighthouse at dusk", "negative_prompt": "blurry",
                "checkpoint_model": rng.choice(CHECKPOINTS), "width": 64, "height": 64,
                "batch_size": rng.choice((1, 1, 1, 2)),
                "sampler_params": {"seed": rng.randrange(2**31), "steps": rng.randrange(3, 9), "cfg": 7.0,
                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}

    def submit_round(self, users, remaining):
        """Each user with requests left submits one; a user at the active limit waits (a 429)."""
        from generation.errors import TooManyActiveRequests
        from generation.services import submit_generation

        for user in users:
            if not remaining[user.pk]:
                continue
            try:
                request, _ = submit_generation(user=user, data=self.params())
            except TooManyActiveRequests:
                continue
            remaining[user.pk] -= 1
            self.submitted.append(request.pk)

    def finished_count(self):
        from generation.models import GenerationRequest
        from generation.states import TERMINAL

        return GenerationRequest.objects.filter(status__in=sorted(TERMINAL)).count()

    # --- faults ----------------------------------------------------------------------------

    def fault_plan(self):
        if not self.config.faults:
            return []
        return [
            (0.25, "restart the busiest backend", self.restart_busiest_backend),
            (0.45, "kill -9 worker cluster 1", self.kill_cluster),
            (0.65, "terminate the clusters' database connections", self.drop_database_connections),
        ]

    def restart_busiest_backend(self):
        """Restart the backend holding the most prompts, so the restart really loses work."""
        deadline = time.monotonic() + 5
        while True:
            loads = [(s.stats()["queue_remaining"], i) for i, s in enumerate(self.simulators)]
            busiest, index = max(loads)
            if busiest or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.simulators[index].restart()
        self.note(f"  backend {index + 1} restarted while holding {busiest} prompt(s)")
        return index

    def kill_cluster(self):
        cluster = self.clusters[0]
        cluster.kill()
        return cluster.pid

    def drop_database_connections(self):
        """pg_terminate_backend on every other connection to this database, three times over ~1 s,
        so connections re-opened right away are dropped too. The server itself stays up."""
        from django.db import connection

        total = 0
        for _ in range(3):
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                total += cursor.fetchone()[0]
            time.sleep(0.4)
        self.note(f"  {total} database connections terminated")
        return total

    def wait_backends_idle(self, *, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.stats()["queue_remaining"] == 0 for s in self.simulators):
                return
            time.sleep(0.2)

    # --- the verdict -------------------------------------------------------------------------

    def check(self):
        from generation.models import GenerationRequest
        from generation.states import TERMINAL, Status

        result = SoakResult()
        problems = result.problems
        rows = list(GenerationRequest.objects.values(
            "id", "status", "error", "error_detail", "outputs", "thumbnails", "batch_size", "backend",
            "comfyui_prompt_id", "attempts", "params", "created_at", "finished_at"))
        statuses = Counter(row["status"] for row in rows)
        if len(rows) != self.config.requests:
            problems.append(f"{len(rows)} requests stored, {self.config.requests} wanted")
        not_terminal = [row for row in rows if row["status"] not in TERMINAL]
        if not_terminal:
            problems.append(f"{len(not_terminal)} requests not terminal: "
                            f"{Counter(r['status'] for r in not_terminal)}")

        stats = [s.stats() for s in self.simulators]
        by_url = {s.url: st for s, st in zip(self.simulators, stats, strict=True)}
        submissions_twice = [(url, pid, n) for url, st in by_url.items()
                             for pid, n in st["submissions"].items() if n > 1]
        executions_twice = [(url, pid, n) for url, st in by_url.items()
                            for pid, n in st["executions"].items() if n > 1]
        if submissions_twice:
            problems.append(f"{len(submissions_twice)} prompts submitted twice, e.g. {submissions_twice[:3]}")
        if executions_twice:
            problems.append(f"{len(executions_twice)} prompts executed twice, e.g. {executions_twice[:3]}")
        left_running = {url: (st["running"], len(st["pending"])) for url, st in by_url.items()
                        if st["queue_remaining"]}
        if left_running:
            problems.append(f"backends still busy after the run: {left_running}")

        referenced = set()
        reasons = Counter()
        for row in rows:
            referenced.update(row["outputs"])
            for thumbs in row["thumbnails"]:
                referenced.update(thumbs.values())
            if row["status"] == Status.FAILED:
                if not row["error"].strip():
                    problems.append(f"failed request {row['id']} has no reason")
                elif not _explained_by_injected_fault(row):
                    problems.append(f"failed request {row['id']} (attempt {row['attempts']} on {row['backend']}): "
                                    f"no injected fault explains {row['error'][:120]!r}")
                reasons[_reason(row)] += 1
            elif row["status"] == Status.COMPLETED:
                problems.extend(self.check_completed(row, by_url))
            elif row["status"] == Status.CANCELLED:
                reasons["cancelled"] += 1
        on_storage = set(_walk(self.media_root))
        orphans = on_storage - referenced
        missing = referenced - on_storage
        if orphans:
            problems.append(f"{len(orphans)} orphan files on storage, e.g. {sorted(orphans)[:3]}")
        if missing:
            problems.append(f"{len(missing)} referenced files missing, e.g. {sorted(missing)[:3]}")
        alive = [pid for c in self.clusters for pid in c.pids if _group_alive(pid)]
        if alive:
            problems.append(f"cluster processes still alive: {alive}")

        try:
            from django_q.brokers import get_broker

            broker_left = get_broker().queue_size()  # dispatch wake-ups never consumed (the jobs queue)
        except Exception as exc:
            broker_left = f"unknown ({exc.__class__.__name__})"
        elapsed = self.drained_at - self.t0
        completed = [r for r in rows if r["status"] == Status.COMPLETED]
        latencies = sorted((r["finished_at"] - r["created_at"]).total_seconds() for r in rows if r["finished_at"])
        result.summary = {
            "requests": len(rows), "users": self.config.users, "backends": len(self.simulators),
            "clusters": self.config.clusters, "statuses": dict(statuses), "failure_reasons": dict(reasons),
            "attempts": dict(sorted(Counter(r["attempts"] for r in rows).items())),
            "images": sum(len(r["outputs"]) for r in completed),
            "files_on_storage": len(on_storage), "orphans": len(orphans), "missing": len(missing),
            "executions_per_backend": {url: sum(st["executions"].values()) for url, st in by_url.items()},
            "execution_errors_injected_rate": self.config.error_rate,
            "max_submissions_per_prompt": max((n for st in stats for n in st["submissions"].values()), default=0),
            "max_executions_per_prompt": max((n for st in stats for n in st["executions"].values()), default=0),
            "backend_restarts": sum(st["restarts"] for st in stats),
            "broker_tasks_left": broker_left,
            "wall_seconds": round(elapsed, 1), "requests_per_second": round(len(rows) / elapsed, 1),
            "latency_p50_s": _pct(latencies, 50), "latency_p99_s": _pct(latencies, 99),
            "timeline": self.timeline,
        }
        return result

    def check_completed(self, row, by_url):
        from PIL import Image

        problems = []
        rid = row["id"]
        if len(row["outputs"]) != row["batch_size"]:
            problems.append(f"completed {rid} has {len(row['outputs'])} images for batch {row['batch_size']}")
        if len(row["thumbnails"]) != len(row["outputs"]):
            problems.append(f"completed {rid} has thumbnails for {len(row['thumbnails'])} of {len(row['outputs'])}")
        for thumbs in row["thumbnails"]:
            if set(thumbs) != set(THUMBNAIL_SIZES):
                problems.append(f"completed {rid} thumbnail sizes {sorted(thumbs)}")
        for name in row["outputs"] + [p for t in row["thumbnails"] for p in t.values()]:
            path = self.media_root / name
            if not path.is_file() or path.stat().st_size == 0:
                problems.append(f"completed {rid}: {name} missing or empty")
        if row["outputs"] and (self.media_root / row["outputs"][0]).is_file():
            with Image.open(self.media_root / row["outputs"][0]) as image:
                parameters = image.info.get("parameters", "")
            if f"Seed: {row['params']['sampler_params']['seed']}" not in parameters:
                problems.append(f"completed {rid}: image parameters do not name its seed")
        executed = by_url.get(row["backend"], {}).get("executions", {}).get(row["comfyui_prompt_id"], 0)
        if executed != 1:
            problems.append(f"completed {rid}: its prompt ran {executed} times on {row['backend']}")
        return problems


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _explained_by_injected_fault(row):
    """The soak knows which faults it caused: injected execution errors fail a request; a backend
    restart, a killed cluster or dropped connections must only delay one, unless it ran out of
    attempts. Any other failure would be a status that does not tell the truth."""
    detail = row["error_detail"] or {}
    if "Simulated failure" in (detail.get("exception_message") or ""):
        return True
    return detail.get("type") == "retries_exhausted"


def _reason(row):
    detail = row["error_detail"] or {}
    if detail.get("exception_message"):
        return f"execution: {detail['exception_message'][:60]}"
    return row["error"].split(":")[0][:60]


def _walk(root):
    root = Path(root)
    if not root.exists():
        return
    for path in root.rglob("*"):
        if path.is_file():
            yield path.relative_to(root).as_posix()


def _pct(values, pct):
    if not values:
        return None
    return round(values[min(len(values) - 1, int(len(values) * pct / 100))], 2)


def format_summary(result):
    s = result.summary
    lines = [
        "=" * 78,
        f"SOAK {'PASSED' if result.ok else 'FAILED'}: {s['requests']} requests, {s['users']} users, "
        f"{s['backends']} backends, {s['clusters']} clusters ({s.get('broker', '?')} broker), {s['wall_seconds']} s "
        f"({s['requests_per_second']} req/s, latency p50 {s['latency_p50_s']} s, p99 {s['latency_p99_s']} s)",
        f"statuses: {s['statuses']}",
        f"failure reasons: {s['failure_reasons']}",
        f"attempts per request: {s['attempts']}",
        f"images: {s['images']}; files on storage: {s['files_on_storage']}; orphans: {s['orphans']}; "
        f"missing: {s['missing']}",
        f"executions per backend: {list(s['executions_per_backend'].values())}; backend restarts: "
        f"{s['backend_restarts']}; max submissions/executions per prompt_id: "
        f"{s['max_submissions_per_prompt']}/{s['max_executions_per_prompt']}; "
        f"broker tasks left unconsumed: {s['broker_tasks_left']}",
        "timeline:",
        *[f"  {t:7.1f}s  {what}" for t, what in s["timeline"]],
    ]
    if result.problems:
        lines.append(f"PROBLEMS ({len(result.problems)}):")
        lines += [f"  - {p}" for p in result.problems[:15]]
    lines.append("=" * 78)
    return "\n".join(lines)


# --- standalone ---------------------------------------------------------------------------

def _recreate_database(url):
    import psycopg

    from genonaut.test_settings import database_from_url

    db = database_from_url(url, data_dir=ROOT / "var")
    if "soak" not in db["NAME"]:
        raise SystemExit(f"refusing to drop {db['NAME']!r}: the soak database name must contain 'soak'")
    admin = {"host": db["HOST"] or None, "port": db["PORT"] or None, "user": db["USER"] or None,
             "password": db["PASSWORD"] or None, "dbname": "postgres", "autocommit": True}
    with psycopg.connect(**{k: v for k, v in admin.items() if v is not None}) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db["NAME"]}"')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--backends", type=int, default=4)
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--broker", choices=("redis", "orm"), default="redis")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/genonaut_soak")
    parser.add_argument("--error-rate", type=float, default=0.05)
    parser.add_argument("--deadline", type=float, default=900.0)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--json", help="also write the summary as JSON to this file")
    args = parser.parse_args(argv)
    config = SoakConfig(requests=args.requests, users=args.users, backends=args.backends, clusters=args.clusters,
                        error_rate=args.error_rate, deadline=args.deadline, faults=not args.no_faults)

    import tempfile

    from tests.plugins.cluster import TEST_GENERATION, Cluster
    from tests.plugins.simulator import start_simulator

    workdir = Path(tempfile.mkdtemp(prefix="genonaut-soak-"))
    media = workdir / "media"
    simulators = [start_simulator(step_time=config.step_time, load_time=config.load_time, seed=config.seed + i)
                  for i in range(config.backends)]
    clusters = []
    try:
        generation = {**TEST_GENERATION, "STALE_HEARTBEAT_SECONDS": config.stale_heartbeat}
        env = {
            "DJANGO_SETTINGS_MODULE": "genonaut.test_settings",
            "DATABASE_URL": args.database_url,
            "DATABASE_CONN_MAX_AGE": "0",
            "REDIS_URL": args.redis_url if args.broker == "redis" else "",
            "Q_CLUSTER_NAME": f"soak{os.getpid()}",
            "Q_POLL": "0.02",
            "COMFYUI_URL": ",".join(f"{s.url};capacity={config.capacity}" for s in simulators),
            "COMFYUI_TIMEOUT": "2",
            "Q_WORKERS": str(config.workers),
            "MEDIA_ROOT": str(media),
            "GENONAUT_DATA_DIR": str(workdir),
            "LOG_LEVEL": "INFO",  # the cluster's "running." line is how Cluster.start() knows it is up
            "PYTHONUNBUFFERED": "1",
            **{name: str(value) for name, value in generation.items()},
        }
        os.environ.update(env, LOG_LEVEL="ERROR")  # this process prints its own timeline
        _recreate_database(args.database_url)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        if args.broker == "redis":
            import redis

            redis.Redis.from_url(args.redis_url).flushdb()  # db 13 belongs to the soak

        def launch(index):
            cluster = Cluster({**os.environ, **env}, str(workdir / f"cluster-{index}.log"))
            clusters.append(cluster)
            return cluster.start()

        soak = Soak(config, simulators=simulators, start_cluster=launch, media_root=media)
        result = soak.run()
        result.summary["broker"] = args.broker
        print(format_summary(result))
        print(f"logs: {workdir}")
        if args.json:
            Path(args.json).write_text(json.dumps({"ok": result.ok, "problems": result.problems,
                                                   **result.summary}, default=str, indent=2))
        return 0 if result.ok else 1
    finally:
        for cluster in clusters:
            cluster.stop()
        for simulator in simulators:
            simulator.stop()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
