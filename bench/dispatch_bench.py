"""Dispatch benchmark: what one claim costs with a long history, and what the capability check adds.

    .venv/bin/python bench/dispatch_bench.py [--history 1000000] [--queued 10000] [--users 100]
                                             [--claims 300] [--backends 4,16] [--explain] [--reuse]

Two PostgreSQL databases of its own, ``genonaut_dispatch_bench_empty`` and ``…_history`` (re-created
unless ``--reuse``), hold the same queue: ``--queued`` requests from ``--users`` users, each with one
of four requirement sets (txt2img with one of four checkpoints). ``…_history`` also holds
``--history`` finished requests of those users and 900 others (INSERT … SELECT generate_series).
Backends are configured but never contacted (the claim only reads and writes rows): every even one
has all four checkpoints in its recorded capabilities, every odd one two of them (a mixed fleet).

One sample is one ``dispatcher.claim_next()`` call in this process (wall time, ``perf_counter``; and
the CPU time it cost this process and its PostgreSQL backend, which load on the machine does not change);
after it, outside the timing, the claimed request goes back to ``queued`` so the queue and the free
slots stay the same. Samples alternate between the two databases in rounds of 20 (so load on the
machine hits both alike), for each backend count, with and without requirement sets on the queued
rows ("without": ``requirements_id`` NULL, the claim's cost before capability-aware dispatch).
``--explain`` prints ``EXPLAIN (ANALYZE, BUFFERS)`` of every SELECT one claim runs, on the history
database. See bench/README.md.
"""

import argparse
import datetime
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import support  # bench/support.py: the script's own folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG = support.PG
DATABASES = {"empty": "genonaut_dispatch_bench_empty", "history": "genonaut_dispatch_bench_history"}
CHECKPOINTS = ("ckpt-a.safetensors", "ckpt-b.safetensors", "ckpt-c.safetensors", "ckpt-d.safetensors")
ROUND = 20
BASE_TIME = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def env_for(name):
    # DEBUG off: Django would otherwise log every query of every claim
    return {"DJANGO_SETTINGS_MODULE": "genonaut.test_settings", "DATABASE_URL": f"{PG}/{name}", "DEBUG": "0",
            "LOG_LEVEL": "WARNING"}


def database_ready(name):
    import psycopg

    try:
        with psycopg.connect(f"{PG}/{name}", autocommit=True) as conn:
            return conn.execute("SELECT to_regclass('generation_generationrequest') IS NOT NULL").fetchone()[0]
    except psycopg.OperationalError:
        return False


def use(name):
    """Point Django's default connection at database ``name`` (closed now, reopened by the next query)."""
    from django.db import connections

    connection = connections["default"]
    connection.close()
    connection.settings_dict["NAME"] = name


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(seconds):
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p95_ms": round(percentile(ms, 95), 2),
            "p99_ms": round(percentile(ms, 99), 2), "mean_ms": round(statistics.fmean(ms), 2)}


# --- data ------------------------------------------------------------------------------------------


def txt2img_params(checkpoint):
    return {"prompt": "a lighthouse at dusk", "negative_prompt": "", "checkpoint_model": checkpoint,
            "lora_models": [], "width": 512, "height": 512, "batch_size": 1,
            "sampler_params": {"seed": 1, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                               "denoise": 1.0}}


def requirement_sets():
    """One RequirementSet per checkpoint, as a submit stores them; returns their keys in CHECKPOINTS order."""
    from generation.models import RequirementSet
    from generation.workflows import get_workflow

    workflow = get_workflow("txt2img")
    keys = []
    for checkpoint in CHECKPOINTS:
        requirements = workflow.requirements(txt2img_params(checkpoint))
        RequirementSet.objects.get_or_create(key=requirements.key, defaults={
            "nodes": list(requirements.nodes), "model_files": requirements.as_json()["models"]})
        keys.append(requirements.key)
    return keys


def insert_copies(template, rows, overrides, params):
    """``rows`` copies of ``template`` (every column, present or future, gets a valid value)."""
    from django.db import connection

    from generation.models import GenerationRequest

    table = GenerationRequest._meta.db_table
    columns = [field.column for field in GenerationRequest._meta.concrete_fields]
    select = ", ".join(overrides.get(column, f't."{column}"') for column in columns)
    with connection.cursor() as cursor:
        cursor.execute(f'INSERT INTO {table} ({", ".join(chr(34) + c + chr(34) for c in columns)}) '
                       f"SELECT {select} FROM {table} t, generate_series(0, %(rows)s - 1) g WHERE t.id = %(template)s",
                       {**params, "rows": rows, "template": template.pk})


def populate(*, history, queued, users):
    """The queue (and, with ``history`` > 0, the history) of the current database."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from generation.models import GenerationRequest

    User = get_user_model()
    User.objects.bulk_create([User(username=f"user{n:04d}") for n in range(users + 900)], ignore_conflicts=True)
    ids = list(User.objects.filter(username__startswith="user").order_by("username").values_list("id", flat=True))
    keys = requirement_sets()
    template = GenerationRequest.objects.create(
        user_id=ids[0], prompt="template", checkpoint_model=CHECKPOINTS[0], status="completed",
        finished_at=BASE_TIME, params=txt2img_params(CHECKPOINTS[0]), requirements_id=keys[0])
    started = time.monotonic()
    first_id, all_users = min(ids), len(ids)
    if history:
        # history of everyone (the queue's users among them), one request a second up to BASE_TIME
        insert_copies(template, history, {
            "id": "gen_random_uuid()",
            "user_id": f"{first_id} + (g %% {all_users})",
            "status": "CASE g %% 20 WHEN 0 THEN 'failed' WHEN 1 THEN 'cancelled' ELSE 'completed' END",
            "created_at": "%(base)s - (%(rows)s - g) * interval '1 second'",
            "queued_at": "%(base)s - (%(rows)s - g) * interval '1 second'",
            "started_at": "%(base)s - (%(rows)s - g) * interval '1 second' + interval '100 ms'",
            "finished_at": "%(base)s - (%(rows)s - g) * interval '1 second' + interval '5 s'",
            "updated_at": "%(base)s - (%(rows)s - g) * interval '1 second' + interval '5 s'",
            "attempts": "1",
            "backend": "'http://127.0.0.1:' || (20000 + g %% 16)",
            "requirements_id": "(ARRAY[%(k0)s, %(k1)s, %(k2)s, %(k3)s])[1 + g %% 4]",
        }, {"base": BASE_TIME, **{f"k{i}": key for i, key in enumerate(keys)}})
    # the queue: the first `users` users, submitted in turn, one request every 10 ms
    now = datetime.datetime.now(datetime.UTC)
    insert_copies(template, queued, {
        "id": "gen_random_uuid()",
        "user_id": f"{first_id} + (g %% {users})",
        "status": "'queued'",
        "created_at": "%(now)s - (%(rows)s - g) * interval '10 ms'",
        "queued_at": "%(now)s - (%(rows)s - g) * interval '10 ms'",
        "started_at": "NULL", "finished_at": "NULL", "attempts": "0",
        "checkpoint_model": "(ARRAY[%(c0)s, %(c1)s, %(c2)s, %(c3)s])[1 + g %% 4]",
        "requirements_id": "(ARRAY[%(k0)s, %(k1)s, %(k2)s, %(k3)s])[1 + g %% 4]",
    }, {"now": now, **{f"k{i}": key for i, key in enumerate(keys)}, **{f"c{i}": c for i, c in enumerate(CHECKPOINTS)}})
    GenerationRequest.objects.filter(pk=template.pk).delete()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return round(time.monotonic() - started, 1)


def configure_backends(count):
    """``count`` backends (capacity 2) with recorded capabilities: even ones have every checkpoint,
    odd ones the first two."""
    from django.conf import settings
    from django.utils import timezone

    from generation.backends import capabilities_of
    from generation.comfyui.object_info import recorded_object_info
    from generation.models import BackendState

    nodes, lists = capabilities_of(recorded_object_info())
    urls = [f"http://127.0.0.1:{20000 + n}" for n in range(count)]
    settings.COMFYUI_BACKENDS = [{"url": url, "capacity": 2} for url in urls]
    BackendState.objects.exclude(url__in=urls).delete()
    for n, url in enumerate(urls):
        models = {**lists, "checkpoints": list(CHECKPOINTS if n % 2 == 0 else CHECKPOINTS[:2])}
        BackendState.objects.update_or_create(url=url, defaults={
            "capacity": 2, "is_healthy": True, "node_classes": nodes, "model_lists": models,
            "capabilities_at": timezone.now(), "loaded_checkpoint": ""})


def set_requirements(on):
    """Queued requests with their requirement sets (``on``) or none (no capability check)."""
    from django.db import connection

    from generation.models import GenerationRequest

    keys = {checkpoint: key for checkpoint, key in zip(CHECKPOINTS, requirement_sets(), strict=True)}
    queued = GenerationRequest.objects.filter(status__in=["queued", "running"])
    if on:
        for checkpoint, key in keys.items():
            queued.filter(checkpoint_model=checkpoint).update(requirements_id=key)
    else:
        queued.update(requirements_id=None)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {GenerationRequest._meta.db_table}")


def put_back(claim):
    """The claimed request waits again (outside the timing): the queue stays as it was."""
    from generation.models import GenerationRequest

    GenerationRequest.objects.filter(pk=claim.request_id).update(status="queued", attempts=0, backend="",
                                                                 started_at=None, executed_at=None)


def backend_cpu_seconds():
    """CPU time so far of the PostgreSQL backend serving our connection (same machine: /proc)."""
    from django.db import connection

    connection.ensure_connection()
    if getattr(connection, "_bench_connection", None) is not connection.connection:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            connection._bench_backend_pid = cursor.fetchone()[0]
        connection._bench_connection = connection.connection
    fields = Path(f"/proc/{connection._bench_backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def claim_once():
    """One timed claim: (wall seconds, CPU seconds of this process + of its PostgreSQL backend)."""
    from generation.dispatcher import claim_next

    server_before, client_before = backend_cpu_seconds(), time.process_time()
    start = time.perf_counter()
    claim = claim_next()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - client_before + backend_cpu_seconds() - server_before
    if claim is None:
        raise RuntimeError("claim_next() found nothing to claim")
    put_back(claim)
    return elapsed, cpu


def measure(claims):
    """``claims`` samples per database, alternating in rounds of ROUND."""
    samples = {name: [] for name in DATABASES}
    cpu = {name: 0.0 for name in DATABASES}
    for name in DATABASES:  # warm-up: caches of this process and of PostgreSQL
        use(DATABASES[name])
        for _ in range(10):
            claim_once()
    while any(len(s) < claims for s in samples.values()):
        for name, db in DATABASES.items():
            use(db)
            for _ in range(min(ROUND, claims - len(samples[name]))):
                wall, spent = claim_once()
                samples[name].append(wall)
                cpu[name] += spent
    # CPU (client + server) does not depend on what else the machine runs; wall time does
    return {name: {**summary(values), "cpu_ms_per_claim": round(cpu[name] * 1000 / len(values), 2)}
            for name, values in samples.items()}


def explain():
    """EXPLAIN (ANALYZE, BUFFERS) of each SELECT one claim runs, on the history database."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from generation.dispatcher import claim_next

    use(DATABASES["history"])
    with CaptureQueriesContext(connection) as captured:
        claim = claim_next()
    put_back(claim)
    plans = []
    for query in captured.captured_queries:
        sql = query["sql"]
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")) or "FOR UPDATE" in sql.upper():
            continue
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}")
            plans.append({"sql": sql, "plan": [row[0] for row in cursor.fetchall()]})
    return {"queries_per_claim": len(captured.captured_queries), "selects": plans}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--backends", default="4,16")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="keep the databases of an earlier run")
    args = parser.parse_args()

    fresh = {}
    for kind, name in DATABASES.items():
        fresh[kind] = not (args.reuse and database_ready(name))
        if fresh[kind]:
            support.recreate_database(name, env_for(name))
    os.environ.update(env_for(DATABASES["empty"]))
    import django

    django.setup()
    for kind, name in DATABASES.items():
        if fresh[kind]:
            use(name)
            seconds = populate(history=args.history if kind == "history" else 0, queued=args.queued, users=args.users)
            print(json.dumps({"populated": {"database": name, "seconds": seconds}}), flush=True)

    results = {"history_rows": args.history, "queued": args.queued, "users": args.users,
               "load_average_at_start": round(os.getloadavg()[0], 2)}
    for count in [int(n) for n in args.backends.split(",")]:
        for with_check in (True, False):
            for db in DATABASES.values():
                use(db)
                configure_backends(count)
                set_requirements(with_check)
            label = f"{count} backends, {'with' if with_check else 'without'} capability check"
            results[label] = measure(args.claims)
            results[label]["history / empty, p95"] = round(
                results[label]["history"]["p95_ms"] / results[label]["empty"]["p95_ms"], 2)
            print(json.dumps({label: results[label]}), flush=True)
        for db in DATABASES:
            with_ = results[f"{count} backends, with capability check"][db]["p50_ms"]
            without = results[f"{count} backends, without capability check"][db]["p50_ms"]
            results[f"{count} backends: capability check ratio (p50, {db})"] = round(with_ / without, 2)
    if args.explain:
        for db in DATABASES.values():
            use(db)
            configure_backends(4)
            set_requirements(True)
        results["explain"] = explain()
    results["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2), flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
