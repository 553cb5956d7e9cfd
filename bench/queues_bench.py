"""Dispatch and recovery during a webhook storm: one queue for everything (main) against a cluster per role.

    .venv/bin/python bench/queues_bench.py [--storm 200] [--hold 3] [--jobs 2] [--before main] [--cap 120]
                                           [--redis redis://127.0.0.1:6379/10]

Its own PostgreSQL database (``genonaut_queues_bench``, re-created), one simulator (capacity 2, 4 steps of
20 ms), the ORM broker or, with ``--redis``, the Redis broker on that database (flushed: give it its own).
Per layout: ``--storm`` finished requests whose webhook receivers (one loopback server,
a path each) answer after ``--hold`` seconds have their deliveries queued; then, while they drain,
a ``resume`` is sent the way the reconciler sends it (recovery delay = its enqueue → its end, from
Django-Q's task table) and ``--jobs`` requests are submitted at once (dispatch delay = ``started_at −
queued_at``). Waits are capped at ``--cap`` seconds. The "before" layout is ``--before`` (exported
with ``git archive``) running its single cluster (``Q_WORKERS`` = capacity + 2); "after" is this checkout's
three clusters (jobs, housekeeping, webhooks; 4 webhook workers).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import support  # bench/support.py: the script's own folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "genonaut_queues_bench"
ENV = {
    "DJANGO_SETTINGS_MODULE": "genonaut.test_settings",
    "DATABASE_URL": f"{support.PG}/{DB_NAME}",
    "DATABASE_CONN_MAX_AGE": "0",
    "Q_POLL": "0.05",
    "WEBHOOK_ALLOW_PRIVATE": "1",
    "WEBHOOK_TIMEOUT": "10",
    "MAX_ACTIVE_PER_USER": "1000",
    "LOG_LEVEL": "INFO",  # the clusters' " running." line
    "PYTHONUNBUFFERED": "1",
    "GENONAUT_DATA_DIR": tempfile.mkdtemp(prefix="genonaut-queues-bench-"),
}


class SlowReceivers:
    def __init__(self, hold):
        self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receivers.release.wait(hold)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        receivers = self
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()


def start_clusters(code_dir, env, roles, log_path):
    """One qcluster per role (``None``: the old single cluster), waited for until each says it runs."""
    processes = []
    with open(log_path, "ab") as log:
        for role in roles:
            role_env = {**env, **({"Q_ROLE": role} if role else {})}
            processes.append(subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=code_dir, env=role_env,
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + 60
    while Path(log_path).read_text(errors="replace").count(" running.") < len(roles):
        assert time.monotonic() < deadline, Path(log_path).read_text()[-3000:]
        time.sleep(0.1)
    return processes


def stop_clusters(processes):
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def layout(name, *, code_dir, roles, site, args, simulator, user):
    from django.conf import settings
    from django.utils import timezone
    from django_q.conf import Conf
    from django_q.models import Task

    from generation import enqueue
    from generation.models import GenerationRequest
    from generation.services import submit_generation
    from genonaut.settings import queues_for

    # this process enqueues where that layout's clusters consume: main had one queue, the site's name
    settings.Q_QUEUES = queues_for(site) if roles != [None] else dict.fromkeys(queues_for(site), site)
    Conf.PREFIX = site
    if args.redis:
        Conf.ORM, Conf.REDIS = None, args.redis
    env = {**os.environ, **ENV, "Q_CLUSTER_NAME": site, "REDIS_URL": args.redis or "",
           "COMFYUI_URL": f"{simulator.url};capacity=2",
           "Q_WORKERS": "4", "Q_WEBHOOK_WORKERS": "4", "Q_HOUSEKEEPING_WORKERS": "2"}
    receivers = SlowReceivers(args.hold)
    processes = start_clusters(code_dir, env, roles, Path(ENV["GENONAUT_DATA_DIR"]) / f"{site}.log")
    try:
        rows = GenerationRequest.objects.bulk_create([
            GenerationRequest(user=user, prompt=f"storm {n}", status="completed", finished_at=timezone.now(),
                              webhook_url=f"{receivers.url}/receiver/{n}") for n in range(args.storm)])
        for row in rows:
            enqueue.deliver_webhook(row.pk)
        time.sleep(1.0)  # every webhook worker holds a delivery
        # while the storm is queued: a resume the way the reconciler sends it, and jobs submitted at once
        sent = timezone.now()
        enqueue.resume_job(uuid.uuid4(), 1, sent)  # a lease nobody holds: the task returns at once
        ids = [submit_generation(user=user, data=job_params(n))[0].pk for n in range(args.jobs)]
        waiting_then = enqueue.queue_sizes()
        deadline = time.monotonic() + args.cap
        while time.monotonic() < deadline:
            task = Task.objects.filter(func=enqueue.RESUME, started__gte=sent).first()
            started = GenerationRequest.objects.filter(pk__in=ids, started_at__isnull=False).count()
            if task and started == len(ids):
                break
            time.sleep(0.1)
        dispatch = [(row.started_at - row.queued_at).total_seconds() if row.started_at else None
                    for row in GenerationRequest.objects.filter(pk__in=ids)]
        recovery = (task.stopped - sent).total_seconds() if task else None  # it returns at once: stopped ≈ started
    finally:
        stop_clusters(processes)
        receivers.close()
        GenerationRequest.objects.filter(prompt__startswith="storm ").delete()
    waits = [d for d in dispatch if d is not None]
    result = {"dispatch_delay_s": {"median": round(statistics.median(waits), 2) if waits else None,
                                   "max": round(max(waits), 2) if waits else None,
                                   "not_dispatched_within_cap": dispatch.count(None)},
              "recovery_delay_s": round(recovery, 2) if recovery is not None else f"> {args.cap}",
              "tasks_waiting_when_submitted": waiting_then}
    print(json.dumps({name: result}), flush=True)
    return result


def job_params(n):
    return {"prompt": f"bench {n}", "checkpoint_model": "tiny-sd15-random.safetensors", "width": 64, "height": 64,
            "sampler_params": {"seed": n, "steps": 4, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal"}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storm", type=int, default=200)
    parser.add_argument("--hold", type=float, default=3.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cap", type=float, default=120.0)
    parser.add_argument("--before", default="main")
    parser.add_argument("--redis", help="use the Redis broker on this URL (its database is flushed)")
    args = parser.parse_args()
    if args.redis:
        import redis

        redis.Redis.from_url(args.redis).flushdb()

    before_dir = Path(tempfile.mkdtemp(prefix="genonaut-before-"))
    archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before_dir)], input=archive, check=True)
    os.environ.update(ENV)
    support.recreate_database(DB_NAME, ENV)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from models_registry.models import AvailableModel
    from tests.plugins.simulator import start_simulator

    AvailableModel.objects.create(name="tiny-sd15-random.safetensors", type="checkpoint")
    user = get_user_model().objects.create_user("bench")
    simulator = start_simulator(step_time=0.02, load_time=0.1)
    settings.COMFYUI_BACKENDS = [{"url": simulator.url, "capacity": 2}]
    try:
        before = layout(f"one queue ({args.before})", code_dir=before_dir, roles=[None], site="qbench-one", args=args,
                        simulator=simulator, user=user)
        after = layout("a cluster per role (this checkout)", code_dir=ROOT, roles=["jobs", "housekeeping", "webhooks"],
                       site="qbench-roles", args=args, simulator=simulator, user=user)
    finally:
        simulator.stop()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    broker = "Redis" if args.redis else "ORM"
    print(f"\n| {broker} broker, during a storm of {args.storm} webhooks ({args.hold} s each) | one queue "
          "| a cluster per role |")
    print("|---|---|---|")
    for key, label in (("median", "dispatch delay, median"), ("max", "dispatch delay, max")):
        print(f"| {label} | {before['dispatch_delay_s'][key]} s | {after['dispatch_delay_s'][key]} s |")
    print(f"| requests not dispatched within {args.cap} s | {before['dispatch_delay_s']['not_dispatched_within_cap']}"
          f" of {args.jobs} | {after['dispatch_delay_s']['not_dispatched_within_cap']} of {args.jobs} |")
    print(f"| resume: enqueued → started | {before['recovery_delay_s']} s | {after['recovery_delay_s']} s |")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
