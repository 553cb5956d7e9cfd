"""Pipeline benchmark: orchestration overhead, success → completed latency, thumbnails,
throughput over 4 backends, model affinity against plain round-robin, HOT updates of a 200-job run.

    .venv/bin/python bench/pipeline_bench.py [--only overhead,thumbnails,throughput,affinity,hot]
                                             [--jobs 500] [--samples 20] [--affinity-jobs 16]
                                             [--hot-jobs 200] [--redis URL]

The cluster runs with the product's defaults (``Q_POLL`` 0.2 s for the ORM broker) unless
``BENCH_Q_POLL`` says otherwise.

Runs on PostgreSQL in a database of its own (``genonaut_pipeline_bench_<pid>`` on ``BENCH_POSTGRES``,
default ``postgres://postgres@127.0.0.1:5432``; created, migrated, dropped at the end — two runs
sharing a database would dispatch each other's requests) with Django-Q's ORM broker
(``--redis URL`` for the Redis broker). Simulators and the worker cluster are real processes on
free loopback ports, started and stopped (by PID) by this script. See bench/README.md.
"""

import argparse
import io
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_SERVER = "postgres://postgres@127.0.0.1:5432"
CHECKPOINTS = ("tiny-sd15-random.safetensors", "dreamshaper-8.safetensors")


def setup_django(database_url, media_root):
    os.environ["DATABASE_URL"] = database_url
    os.environ["MEDIA_ROOT"] = str(media_root)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "genonaut.test_settings")
    _create_database(database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _create_database(url):
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(url):
    import psycopg
    from django.db import connections

    connections.close_all()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_data():
    from django.contrib.auth import get_user_model

    from generation.models import BackendState, GenerationRequest
    from models_registry.models import AvailableModel, ModelType

    GenerationRequest.objects.all().delete()
    BackendState.objects.all().delete()
    from django_q.models import OrmQ

    OrmQ.objects.all().delete()
    for name in CHECKPOINTS:
        AvailableModel.objects.update_or_create(name=name, defaults={"type": ModelType.CHECKPOINT, "is_active": True,
                                                                     "is_present": True})
    user, _ = get_user_model().objects.get_or_create(username="bench")
    return user


def params(*, checkpoint=CHECKPOINTS[0], size=64, steps=4, seed=None, batch=1):
    return {"prompt": "a lighthouse at dusk", "negative_prompt": "blurry", "checkpoint_model": checkpoint,
            "width": size, "height": size, "batch_size": batch,
            "sampler_params": {"seed": seed if seed is not None else time.monotonic_ns() % 2**48, "steps": steps,
                               "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}


class Harness:
    """Simulators + one worker cluster, configured like tests/plugins/cluster.py does."""

    def __init__(self, redis_url=None):
        self.redis_url = redis_url
        self.simulators = []
        self.cluster = None

    def simulators_up(self, count, **options):
        from tests.plugins.simulator import start_simulator

        self.simulators_down()
        self.simulators = [start_simulator(**options) for _ in range(count)]
        return self.simulators

    def simulators_down(self):
        for sim in self.simulators:
            sim.stop()
        self.simulators = []

    def cluster_up(self, *, capacity=2, generation=None, workers=None):
        import uuid

        from django.conf import settings

        from tests.plugins.cluster import _ENV_NAMES, Cluster, database_url, use_queues

        self.cluster_down()
        backends = [{"url": s.url, "capacity": capacity} for s in self.simulators]
        overrides = {"HEARTBEAT_SECONDS": 0.5, "MAX_ACTIVE_PER_USER": 100000, **(generation or {})}
        settings.COMFYUI_BACKENDS = backends
        settings.GENERATION = {**settings.GENERATION, **overrides}
        name = f"genonaut-bench-{uuid.uuid4().hex[:8]}"
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "genonaut.test_settings", "DATABASE_URL": database_url(),
               "COMFYUI_URL": ",".join(f"{b['url']};capacity={b['capacity']}" for b in backends),
               "Q_WORKERS": str(workers or sum(b["capacity"] for b in backends)),
               **({"Q_POLL": os.environ["BENCH_Q_POLL"]} if "BENCH_Q_POLL" in os.environ else {}),
               "Q_CLUSTER_NAME": name, "REDIS_URL": self.redis_url or "", "LOG_LEVEL": "INFO",
               "MEDIA_ROOT": os.environ["MEDIA_ROOT"], "PYTHONUNBUFFERED": "1"}
        for key, value in overrides.items():
            env[_ENV_NAMES[key]] = str(int(value) if isinstance(value, bool) else value)
        use_queues(name, redis_url=self.redis_url)  # this process enqueues where the clusters consume
        log = tempfile.NamedTemporaryFile(prefix="bench-qcluster-", suffix=".log", delete=False)  # noqa: SIM115
        log.close()
        self.cluster = Cluster(env, log.name)  # known before it starts: a stop while it boots kills it too
        self.cluster.start()
        time.sleep(0.5)  # workers finish forking after the "running" line
        return self.cluster

    def cluster_down(self):
        if self.cluster is not None:
            self.cluster.kill()
            Path(self.cluster.log_path).unlink(missing_ok=True)
            self.cluster = None

    def close(self):
        self.cluster_down()
        self.simulators_down()


def wait_all(ids, *, timeout, interval=0.002):
    from generation.models import GenerationRequest
    from generation.states import TERMINAL

    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending:
        done = set(GenerationRequest.objects.filter(pk__in=pending, status__in=list(TERMINAL))
                   .values_list("pk", flat=True))
        pending -= done
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} requests not finished after {timeout}s")
        if pending:
            time.sleep(interval)
    return time.monotonic()


def history_times(sim, prompt_id):
    """(execution_start, execution_success) in epoch seconds from the simulator's history messages."""
    entry = sim.client().history(prompt_id) or {}
    times = {kind: data.get("timestamp") for kind, data in (entry.get("status") or {}).get("messages", [])}
    return (times.get("execution_start") or 0) / 1000, (times.get("execution_success") or 0) / 1000


def median_ms(values):
    return round(statistics.median(values) * 1000, 1)


def p95_ms(values):
    return round(sorted(values)[max(0, int(len(values) * 0.95) - 1)] * 1000, 1)


# --- figures -----------------------------------------------------------------------------------


def bench_direct(sim, samples, size):
    """The same job straight to the simulator: submit, follow to success, download the image."""
    import uuid

    from generation.comfyui import events as ev
    from generation.workflows import get_workflow

    client = sim.client()
    timings = []
    for i in range(samples):
        p = params(size=size, seed=10_000 + i)
        txt2img = get_workflow("txt2img")
        workflow = txt2img.build({**p, "lora_models": [], "width": size, "height": size, "batch_size": 1},
                                 files={}, filename_prefix=f"direct/{i}")
        prompt_id = str(uuid.uuid4())
        start = time.monotonic()
        with client.event_stream(prompt_id) as events:
            client.submit(workflow, prompt_id=prompt_id, client_id=prompt_id)
            for event in events.follow(prompt_id, idle_interval=0.5):
                if isinstance(event, ev.TERMINAL):
                    break
        save_node = txt2img.output_nodes(workflow)[0]
        image = client.history(prompt_id)["outputs"][save_node]["images"][0]
        with client.view(image["filename"], image["subfolder"], image["type"]) as chunks:
            data = b"".join(chunks)
        timings.append(time.monotonic() - start)
    return timings, data


def bench_overhead(harness, user, samples):
    """Our added latency: the row's created_at → finished_at (images and thumbnails stored) against the
    same job sent straight to the simulator (``bench_direct``), medians and their ratio."""
    from generation.models import GenerationRequest
    from generation.services import submit_generation

    size = 1024
    sim = harness.simulators_up(1, step_time=0.01, load_time=0.0)[0]
    direct, png = bench_direct(sim, samples, size)
    harness.cluster_up()
    # warm up: the first job per worker fetches object_info and opens connections
    warm = [submit_generation(user=user, data=params(size=size))[0].pk for _ in range(2)]
    wait_all(warm, timeout=60)
    ours, client_side, success_to_completed = [], [], []
    phases = {"created → claimed": [], "claimed → execution_start": [], "execution_start → success": []}
    for _ in range(samples):
        start = time.monotonic()
        request, _ = submit_generation(user=user, data=params(size=size))
        wait_all([request.pk], timeout=60)
        client_side.append(time.monotonic() - start)
        row = GenerationRequest.objects.get(pk=request.pk)
        assert row.status == "completed", row.error
        ours.append((row.finished_at - row.created_at).total_seconds())
        started, success = history_times(sim, row.comfyui_prompt_id)
        success_to_completed.append(row.finished_at.timestamp() - success)
        phases["created → claimed"].append((row.started_at - row.created_at).total_seconds())
        phases["claimed → execution_start"].append(started - row.started_at.timestamp())
        phases["execution_start → success"].append(success - started)
    harness.cluster_down()
    return {
        "direct_median_ms": median_ms(direct),
        "ours_median_ms (created_at → finished_at)": median_ms(ours),
        "overhead_median_ms": round(median_ms(ours) - median_ms(direct), 1),
        "ratio_to_direct": round(statistics.median(ours) / statistics.median(direct), 2),
        "ours_p95_ms": p95_ms(ours),
        "submit_call_to_seen_completed_median_ms": median_ms(client_side),
        "success_to_completed_median_ms": median_ms(success_to_completed),
        "success_to_completed_p95_ms": p95_ms(success_to_completed),
        "phases_median_ms": {name: median_ms(values) for name, values in phases.items()},
        "broker": "redis" if harness.redis_url else f"orm (Q_POLL {os.environ.get('BENCH_Q_POLL', 'default')})",
        "samples": samples,
        "load_average": round(os.getloadavg()[0], 2),
    }, png


def bench_thumbnails(png, samples):
    from generation.thumbnails import make_thumbnails

    timings = []
    for _ in range(samples):
        start = time.perf_counter()
        make_thumbnails(io.BytesIO(png))
        timings.append(time.perf_counter() - start)
    return {"png_bytes": len(png), "median_ms": median_ms(timings), "p95_ms": p95_ms(timings), "samples": samples}


def merge(intervals):
    """Sorted, non-overlapping union of ``(start, end)`` intervals."""
    merged = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def overlap(xs, ys):
    """Total length of the intersection of two merged interval lists."""
    total, i, j = 0.0, 0, 0
    while i < len(xs) and j < len(ys):
        a, b = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        total += max(0.0, b - a)
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return total


def bench_throughput(harness, user, jobs):
    from generation.models import GenerationRequest
    from generation.services import submit_generation

    sims = harness.simulators_up(4, step_time=0.02, load_time=0.0)
    harness.cluster_up()
    start = time.monotonic()
    start_epoch = time.time()
    ids = [submit_generation(user=user, data=params(steps=10))[0].pk for _ in range(jobs)]
    submitted = time.monotonic() - start
    end = wait_all(ids, timeout=600, interval=0.05)
    wall = end - start
    end_epoch = start_epoch + wall
    rows = list(GenerationRequest.objects.filter(pk__in=ids).values("status", "backend", "comfyui_prompt_id",
                                                                    "queued_at", "started_at"))
    # "work waiting": some request was queued in our fair queue (not yet claimed)
    waiting = merge([(r["queued_at"].timestamp(), r["started_at"].timestamp()) for r in rows if r["started_at"]])
    waiting_total = sum(b - a for a, b in waiting)
    by_url = {sim.url: sim for sim in sims}
    utilisation = {}
    for url, sim in by_url.items():
        intervals = merge([t for t in (history_times(sim, r["comfyui_prompt_id"]) for r in rows if r["backend"] == url)
                           if t[0] and t[1]])
        busy = sum(b - a for a, b in intervals)
        utilisation[url.rsplit(":", 1)[1]] = {
            "jobs": sum(1 for r in rows if r["backend"] == url),
            "utilisation_overall": round(busy / (end_epoch - start_epoch), 3),
            "busy_while_work_waited": round(overlap(intervals, waiting) / waiting_total, 3) if waiting_total else None,
        }
    pure = sum(0.02 * 10 for _ in rows) / len(sims)
    harness.cluster_down()
    return {"jobs": jobs, "completed": sum(r["status"] == "completed" for r in rows), "wall_s": round(wall, 1),
            "submit_s": round(submitted, 1), "jobs_per_s": round(jobs / wall, 1),
            "ideal_wall_s (sampling only)": round(pure, 1), "per_backend": utilisation}


def bench_affinity(harness, user, jobs):
    from generation.models import GenerationRequest
    from generation.services import submit_generation

    results = {}
    for affinity in (False, True):
        sims = harness.simulators_up(2, step_time=0.01, load_time=2.0)
        harness.cluster_up(generation={"AFFINITY": affinity})
        start = time.monotonic()
        ids = [submit_generation(user=user, data=params(checkpoint=CHECKPOINTS[i % 2]))[0].pk for i in range(jobs)]
        wall = wait_all(ids, timeout=300, interval=0.02) - start
        completed = GenerationRequest.objects.filter(pk__in=ids, status="completed").count()
        loads = sum(sim.stats()["checkpoint_loads"] for sim in sims)
        results["affinity" if affinity else "round_robin"] = {"wall_s": round(wall, 2), "completed": completed,
                                                              "checkpoint_loads": loads,
                                                              "jobs_per_s": round(jobs / wall, 2)}
        harness.cluster_down()
    results["speedup"] = round(results["affinity"]["jobs_per_s"] / results["round_robin"]["jobs_per_s"], 2)
    return results


def table_updates():
    """``{table: (n_tup_upd, n_tup_hot_upd)}`` of the request tables, as PostgreSQL counts them."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                       "WHERE relname IN ('generation_generationrequest', 'generation_runstate')")
        return {name: (updates, hot) for name, updates, hot in cursor.fetchall()}


def bench_hot(harness, user, jobs):
    """HOT share of the updates during ``jobs`` jobs (40 steps × 20 ms, so a job writes progress and
    heartbeats many times) over 2 backends: per table, updates and HOT updates, after minus before.
    The cluster is stopped before the second reading, so its backends' statistics are flushed."""
    from generation.services import submit_generation

    harness.simulators_up(2, step_time=0.02, load_time=0.0)
    harness.cluster_up()
    before = table_updates()
    start = time.monotonic()
    ids = [submit_generation(user=user, data=params(steps=40))[0].pk for _ in range(jobs)]
    wait_all(ids, timeout=900, interval=0.1)
    wall = time.monotonic() - start
    harness.cluster_down()
    time.sleep(1.5)  # PostgreSQL publishes a backend's counts at most every second
    after = table_updates()
    tables = {}
    for name in after:
        updates = after[name][0] - before.get(name, (0, 0))[0]
        hot = after[name][1] - before.get(name, (0, 0))[1]
        tables[name] = {"updates": updates, "hot_updates": hot,
                        "hot_share": round(hot / updates, 3) if updates else None,
                        "updates_per_job": round(updates / jobs, 1)}
    return {"jobs": jobs, "wall_s": round(wall, 1), "tables": tables}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="overhead,thumbnails,throughput,affinity")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--affinity-jobs", type=int, default=24)
    parser.add_argument("--hot-jobs", type=int, default=200)
    parser.add_argument("--redis", default="", help="use the Redis broker at this URL (e.g. redis://127.0.0.1:6379/15)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    media = tempfile.TemporaryDirectory(prefix="bench-media-")
    database = f"{os.environ.get('BENCH_POSTGRES', DEFAULT_SERVER)}/genonaut_pipeline_bench_{os.getpid()}"
    setup_django(database, media.name)
    user = reset_data()
    harness = Harness(redis_url=args.redis or None)
    import json

    def report(name, value):
        print(f"{name}: {json.dumps(value, indent=2, default=str)}", flush=True)

    try:
        png = None
        if "overhead" in only or "thumbnails" in only:
            overhead, png = bench_overhead(harness, user, args.samples)
            if "overhead" in only:
                report("overhead (one 1024x1024 image, incl. thumbnails)", overhead)
        if "thumbnails" in only:
            report("thumbnails (1024x1024 PNG from the simulator, all three sizes)", bench_thumbnails(png, 30))
        if "throughput" in only:
            report(f"throughput ({args.jobs} jobs, 4 backends x capacity 2)",
                   bench_throughput(harness, user, args.jobs))
        if "affinity" in only:
            report(f"affinity vs round-robin ({args.affinity_jobs} jobs, 2 checkpoints alternating, 2 backends, "
                   "2 s load)", bench_affinity(harness, user, args.affinity_jobs))
        if "hot" in only:
            report(f"HOT updates ({args.hot_jobs} jobs of 40 steps, 2 backends x capacity 2)",
                   bench_hot(harness, user, args.hot_jobs))
    finally:
        harness.close()
        media.cleanup()
        drop_database(database)


if __name__ == "__main__":
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the servers this started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
