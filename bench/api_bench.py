"""API benchmark: submit throughput/latency and list-page latency, against PostgreSQL and gunicorn.

    .venv/bin/python bench/api_bench.py [--clients 32] [--duration 10] [--workers 4] [--threads 1]
                                        [--rows 1000000] [--broker orm|redis|both] [--skip-submit] [--skip-list]

Everything runs on loopback in its own database (``genonaut_api_bench``, dropped and re-created) and,
for the Redis broker, Redis db 14 (only the bench's queue key is deleted afterwards).

1. Submit: gunicorn (``--workers`` sync workers, production settings: DEBUG off) serves
   ``POST /api/v1/comfyui/generate/``; ``--clients`` concurrent aiohttp clients, one user each,
   submit for ``--duration`` seconds after a 2 s warm-up. A submit is the whole thing: token
   auth, validation, the per-user active-limit check under a row lock, the insert, the on-commit
   pending → queued transition and the broker wake-up, and the response with the queue position.
   The submit throttle and active limit are raised so they do not answer 429 here.
2. List: ``--rows`` requests for one user are bulk-inserted (INSERT … SELECT generate_series),
   then single-client GETs of the first page and of pages at random depths (cursor built from the
   row's created_at, exactly as the API encodes it), with status filters and the other orderings.
"""

import argparse
import asyncio
import base64
import datetime
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import support  # bench/support.py: the script's own folder is on sys.path
from support import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "genonaut_api_bench"  # its own: other benches use genonaut_bench
PG = "postgres://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/14"
DATA_DIR = Path(tempfile.mkdtemp(prefix="genonaut-bench-"))
ENV = {
    "DJANGO_SETTINGS_MODULE": "genonaut.settings",
    "DATABASE_URL": f"{PG}/{DB_NAME}",
    "DATABASE_CONN_MAX_AGE": "600",
    "DEBUG": "0",
    "SECRET_KEY": "genonaut-bench-only-secret-key-0123456789abcdef",
    "ALLOWED_HOSTS": "127.0.0.1",
    "SECURE_SSL_REDIRECT": "0",
    "COMFYUI_URL": "http://127.0.0.1:9",  # nothing listens: no worker runs, requests stay queued
    "SUBMIT_THROTTLE_RATE": "10000000/min",
    "MAX_ACTIVE_PER_USER": "100000000",
    "LOG_LEVEL": "WARNING",
    "GENONAUT_DATA_DIR": str(DATA_DIR),
}
BASE_TIME = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(latencies_ms):
    if not latencies_ms:
        return {"n": 0}
    return {"n": len(latencies_ms), "p50_ms": round(percentile(latencies_ms, 50), 2),
            "p95_ms": round(percentile(latencies_ms, 95), 2), "p99_ms": round(percentile(latencies_ms, 99), 2),
            "max_ms": round(max(latencies_ms), 2), "mean_ms": round(statistics.fmean(latencies_ms), 2)}


def recreate_database():
    support.recreate_database(DB_NAME, ENV)


def database_exists():
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone() is not None


def setup_django():
    os.environ.update(ENV)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def postgres_backends():
    import psycopg  # not Django's connection: this runs inside the load generator's event loop

    with psycopg.connect(f"{PG}/postgres") as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [DB_NAME]).fetchall()
    return [row[0] for row in rows]


class Gunicorn:
    def __init__(self, *, workers, threads=1, extra_env=None):
        self.port = support.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # threads > 1: gunicorn's gthread worker (keeps connections alive); 1: the sync worker
        self.process = subprocess.Popen(
            [str(ROOT / ".venv/bin/gunicorn"), "genonaut.wsgi", "-w", str(workers), "--threads", str(threads),
             "-b", f"127.0.0.1:{self.port}", "--backlog", "256", "--log-level", "warning"],
            cwd=ROOT, env={**os.environ, **ENV, **(extra_env or {})}, start_new_session=True)
        if not support.wait_for_port(self.port):
            self.stop()
            raise RuntimeError("gunicorn did not start within 30 s")

    def worker_pids(self):
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
            return [int(pid) for pid in children.split()]
        except FileNotFoundError:
            return []

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def make_users(prefix, count):
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    users = get_user_model().objects
    tokens = []
    for index in range(count):
        user, _ = users.get_or_create(username=f"{prefix}{index}")
        tokens.append(Token.objects.get_or_create(user=user)[0].key)
    return tokens


def make_checkpoint():
    from models_registry.models import AvailableModel, ModelType

    AvailableModel.objects.get_or_create(name="tiny-sd15-random.safetensors", type=ModelType.CHECKPOINT)


SUBMIT_BODY = {"prompt": "a lighthouse at dusk, volumetric light", "negative_prompt": "blurry",
               "checkpoint_model": "tiny-sd15-random.safetensors", "width": 512, "height": 512,
               "sampler_params": {"steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal"}}


async def submit_load(url, tokens, *, duration, warmup=2.0, on_start=None):
    import aiohttp

    latencies, statuses, counts = [], {}, {"all": 0}
    body = json.dumps(SUBMIT_BODY)
    measure_from = stop_at = 0.0

    async def client(session, token):
        headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        while True:
            sent = time.monotonic()
            if sent >= stop_at:
                return
            async with session.post(f"{url}/api/v1/comfyui/generate/", data=body, headers=headers) as response:
                await response.read()
            done = time.monotonic()
            counts["all"] += 1
            if sent >= measure_from:
                latencies.append((done - sent) * 1000)
                statuses[response.status] = statuses.get(response.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=len(tokens) + 4)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # every worker loads the URLconf, DRF and the object_info catalogue on its first request
        for _ in range(3):
            await asyncio.gather(*(warm(session, url, token) for token in tokens))
        start = time.monotonic()
        measure_from, stop_at = start + warmup, start + warmup + duration
        if on_start:
            on_start()
        await asyncio.gather(*(client(session, token) for token in tokens))
    return latencies, statuses, counts["all"]


async def warm(session, url, token):
    async with session.get(f"{url}/api/v1/comfyui/models/", headers={"Authorization": f"Token {token}"}) as response:
        await response.read()


def bench_submit(args, broker):
    extra = {"REDIS_URL": REDIS_URL} if broker == "redis" else {}
    tokens = make_users(f"submit-{broker}-", args.clients)
    from generation.models import GenerationRequest

    GenerationRequest.objects.filter(user__username__startswith="submit-").delete()  # a --reuse run starts clean
    server = Gunicorn(workers=args.workers, threads=args.threads, extra_env=extra)
    cpu = {}

    def snapshot():
        cpu["pids"] = server.worker_pids(), postgres_backends()
        cpu["before"] = cpu_seconds(cpu["pids"][0]), cpu_seconds(cpu["pids"][1]), time.process_time()

    try:
        latencies, statuses, total = asyncio.run(submit_load(server.url, tokens, duration=args.duration,
                                                             on_start=snapshot))
        after = cpu_seconds(cpu["pids"][0]), cpu_seconds(cpu["pids"][1]), time.process_time()
    finally:
        server.stop()
    if broker == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter("django_q:genonaut:*"):
            client.delete(key)
    ok = statuses.get(201, 0)
    result = {"broker": broker, "clients": args.clients, "gunicorn_workers": args.workers, "threads": args.threads,
              "seconds": args.duration, "statuses": statuses, "submits_per_second": round(ok / args.duration, 1),
              **summary(latencies),
              # CPU spent per submit (all submits incl. warm-up), whatever else the machine was doing
              "cpu_ms_per_submit": {"gunicorn": round((after[0] - cpu["before"][0]) * 1000 / total, 2),
                                    "postgres": round((after[1] - cpu["before"][1]) * 1000 / total, 2),
                                    "load_generator": round((after[2] - cpu["before"][2]) * 1000 / total, 2)},
              "load_average_after": os.getloadavg()[0]}
    print(json.dumps({"submit": result}), flush=True)
    return result


def bulk_insert(rows):
    """``rows`` completed/failed/cancelled requests for one user, created one second apart, newest at
    BASE_TIME; copied from a template row so every column (present or future) gets a valid value."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from generation.models import GenerationRequest
    from models_registry.models import AvailableModel

    user, _ = get_user_model().objects.get_or_create(username="lister")
    token = Token.objects.get_or_create(user=user)[0].key
    if GenerationRequest.objects.filter(user=user).count() >= rows:
        print(json.dumps({"bulk_insert": {"rows": rows, "reused": True}}), flush=True)
        return token
    checkpoint = AvailableModel.objects.get(name="tiny-sd15-random.safetensors")
    template = GenerationRequest.objects.create(
        user=user, prompt="template", checkpoint_model=checkpoint.name, checkpoint=checkpoint, status="completed",
        finished_at=BASE_TIME, params={"prompt": "template", "negative_prompt": "", "checkpoint_model": checkpoint.name,
                                       "lora_models": [], "width": 512, "height": 512, "batch_size": 1,
                                       "sampler_params": {"seed": 1, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                                                          "scheduler": "normal", "denoise": 1.0}})
    table = GenerationRequest._meta.db_table
    columns = [field.column for field in GenerationRequest._meta.concrete_fields]
    overrides = {
        "id": "gen_random_uuid()",
        "prompt": "'request ' || g || CASE WHEN g %% 7 = 0 THEN ' lighthouse at dusk' ELSE ' a red fox' END",
        "status": "CASE g %% 10 WHEN 0 THEN 'failed' WHEN 1 THEN 'cancelled' ELSE 'completed' END",
        "created_at": "%(base)s - g * interval '1 second'",
        "queued_at": "%(base)s - g * interval '1 second'",
        "started_at": "%(base)s - g * interval '1 second' + interval '100 ms'",
        "finished_at": "%(base)s - g * interval '1 second' + interval '500 ms'",
        "updated_at": "%(base)s - g * interval '1 second' + interval '500 ms'",
    }
    select = ", ".join(overrides.get(column, f't."{column}"') for column in columns)
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(f'INSERT INTO {table} ({", ".join(chr(34) + c + chr(34) for c in columns)}) '
                       f"SELECT {select} FROM {table} t, generate_series(1, %(rows)s) g WHERE t.id = %(template)s",
                       {"base": BASE_TIME, "rows": rows, "template": template.pk})
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [template.pk])
        cursor.execute(f"ANALYZE {table}")
    print(json.dumps({"bulk_insert": {"rows": rows, "seconds": round(time.monotonic() - started, 1)}}), flush=True)
    return token


def cursor_for(position_time, reverse=False):
    tokens = {"p": str(position_time)}
    if reverse:
        tokens["r"] = "1"
    return base64.b64encode(urllib.parse.urlencode(tokens).encode()).decode()


def bench_list(args):
    import requests

    token = bulk_insert(args.rows)
    server = Gunicorn(workers=args.workers, threads=args.threads)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    rng = random.Random(5)
    results = {}

    def timed(name, url, params, samples=args.list_samples):
        latencies = []
        for _ in range(samples):
            query = params() if callable(params) else params
            sent = time.perf_counter()
            response = session.get(url, params=query, timeout=10)
            latencies.append((time.perf_counter() - sent) * 1000)
            assert response.status_code == 200, (name, response.status_code, response.text[:300])
            assert response.json()["results"], (name, query)
        results[name] = summary(latencies)
        print(json.dumps({"list": {name: results[name]}}), flush=True)

    def deep(**extra):
        def params():
            k = rng.randrange(20, args.rows - 40)
            return {"cursor": cursor_for(BASE_TIME - datetime.timedelta(seconds=k)), **extra}
        return params

    def deep_ascending():
        k = rng.randrange(40, args.rows - 20)
        return {"ordering": "created_at", "cursor": cursor_for(BASE_TIME - datetime.timedelta(seconds=k))}

    url = f"{server.url}/api/v1/comfyui/"
    try:
        for _ in range(20):  # warm up every worker's connection and caches
            session.get(url, timeout=10)
        timed("first page", url, {})
        timed("deep page (random depth)", url, deep())
        timed("deep page, previous (reverse cursor)", url, lambda: {
            "cursor": cursor_for(BASE_TIME - datetime.timedelta(seconds=rng.randrange(40, args.rows - 20)),
                                 reverse=True)})
        timed("first page, 100 per page", url, {"page_size": 100})
        timed("first page, status=failed", url, {"status": "failed"})
        timed("deep page, status=failed", url, deep(status="failed"))
        timed("deep page, status=completed,cancelled", url, deep(status="completed,cancelled"))
        timed("first page, oldest first", url, {"ordering": "created_at"})
        timed("deep page, oldest first", url, deep_ascending)
        timed("first page, by updated", url, {"ordering": "-updated_at"})
        middle_day = (BASE_TIME - datetime.timedelta(seconds=args.rows // 2)).date()
        timed("created date range (one day in the middle)", url, {
            "created_after": middle_day.isoformat(),
            "created_before": (middle_day + datetime.timedelta(days=1)).isoformat()})
        timed("search in prompt (lighthouse), first page", url, {"search": "lighthouse"}, samples=50)
        # following next links from the start: the path a client walks
        latencies, next_url = [], url
        for _ in range(args.list_samples):
            sent = time.perf_counter()
            body = session.get(next_url, timeout=10).json()
            latencies.append((time.perf_counter() - sent) * 1000)
            next_url = body["next"]
        results["walking next links"] = summary(latencies)
        print(json.dumps({"list": {"walking next links": results["walking next links"]}}), flush=True)
    finally:
        server.stop()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (> 1: gthread worker)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--list-samples", type=int, default=200)
    parser.add_argument("--broker", choices=["orm", "redis", "both"], default="both")
    parser.add_argument("--skip-submit", action="store_true")
    parser.add_argument("--skip-list", action="store_true")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the database of an earlier run (and its list rows) instead of re-creating it")
    args = parser.parse_args()

    if not (args.reuse and database_exists()):
        recreate_database()
    setup_django()
    make_checkpoint()
    if not args.skip_submit:
        for broker in (["orm", "redis"] if args.broker == "both" else [args.broker]):
            bench_submit(args, broker)
    if not args.skip_list:
        bench_list(args)


if __name__ == "__main__":
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the servers this started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
