"""Operator queries and the metrics scrape at 1,000,000 history rows, old code against new, in one run.

    .venv/bin/python bench/ops_bench.py [--rows 1000000] [--queued 10000] [--samples 40] [--before main]

Its own PostgreSQL database (``genonaut_ops_bench``, re-created). ``--before`` (a git revision, default
``main``) is exported with ``git archive`` into a temporary folder; the database is migrated with that
code, filled (``INSERT … SELECT generate_series``: ``--rows`` finished requests over 4 backends and 100
users, one a second up to now, so the last hour holds 3,600; files kept for the last 8 days; plus
``--queued`` queued and 8 running requests), and that code is measured under gunicorn (production
settings, one sync worker, sequential requests). Then the database is migrated with this checkout's code
(the time the new indexes take is printed) and the same requests are measured again, plus ``/metrics``.
Per phase: the Backends page, ``/api/v1/comfyui/backends/``, the admin's request list unfiltered and
filtered by backend, and ``EXPLAIN ANALYZE`` of the retention query as that code builds it.
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import support  # bench/support.py: the script's own folder is on sys.path
from support import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "genonaut_ops_bench"
PG = support.PG
BACKENDS = [f"http://127.0.0.1:{port}" for port in (9, 19, 29, 39)]  # nothing listens: nothing is dispatched
METRICS_TOKEN = "ops-bench-metrics-token-0123456789abcdef"
PASSWORD = "ops-bench-password-1"
ENV = {
    "DJANGO_SETTINGS_MODULE": "genonaut.settings",
    "DATABASE_URL": f"{PG}/{DB_NAME}",
    "DATABASE_CONN_MAX_AGE": "600",
    "DEBUG": "0",
    "SECRET_KEY": "genonaut-bench-only-secret-key-0123456789abcdef",
    "ALLOWED_HOSTS": "127.0.0.1",
    "SECURE_SSL_REDIRECT": "0",
    "SESSION_COOKIE_SECURE": "0",
    "CSRF_COOKIE_SECURE": "0",
    "COMFYUI_URL": ",".join(BACKENDS),
    "RETENTION_DAYS": "7",
    "METRICS_TOKEN": METRICS_TOKEN,
    "LOG_LEVEL": "WARNING",
    "GENONAUT_DATA_DIR": tempfile.mkdtemp(prefix="genonaut-ops-bench-"),
}


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(latencies_ms):
    return {"n": len(latencies_ms), "p50_ms": round(percentile(latencies_ms, 50), 1),
            "p95_ms": round(percentile(latencies_ms, 95), 1), "max_ms": round(max(latencies_ms), 1),
            "mean_ms": round(statistics.fmean(latencies_ms), 1)}


def export_revision(revision):
    target = Path(tempfile.mkdtemp(prefix="genonaut-before-"))
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def manage(code_dir, *args):
    started = time.monotonic()
    subprocess.run([sys.executable, "manage.py", *args], cwd=code_dir, check=True, timeout=1800,
                   env={**os.environ, **ENV})
    return time.monotonic() - started


def fill(rows, queued):
    """The history, queue and backends, through this checkout's models (the request table is the same
    in both versions: the new migration adds indexes and a table, no column)."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from generation.models import BackendState, GenerationRequest

    users = [get_user_model().objects.create_user(f"ops-user-{n}") for n in range(100)]
    staff = get_user_model().objects.create_user("ops-staff", password=PASSWORD, is_staff=True, is_superuser=True)
    token = Token.objects.create(user=staff).key
    for index, url in enumerate(BACKENDS):
        BackendState.objects.create(url=url, capacity=2, loaded_checkpoint="tiny-sd15-random.safetensors",
                                    jobs_completed=rows * 2 // 10, jobs_failed=rows // 40, is_healthy=index != 3,
                                    last_error="" if index != 3 else "Connection refused")
    template = GenerationRequest.objects.create(user=users[0], prompt="template", checkpoint_model="tiny.safetensors",
                                                status="completed", finished_at=timezone.now())
    table = GenerationRequest._meta.db_table
    columns = [field.column for field in GenerationRequest._meta.concrete_fields]
    user_ids = "ARRAY[" + ",".join(str(u.pk) for u in users) + "]"
    backends = "ARRAY[" + ",".join(f"'{url}'" for url in BACKENDS) + "]"
    history = {
        "id": "gen_random_uuid()",
        "user_id": f"({user_ids})[1 + g %% 100]",
        "workflow_slug": "CASE WHEN g %% 5 = 0 THEN 'img2img' ELSE 'txt2img' END",
        "prompt": "'request ' || g",
        "status": "CASE g %% 10 WHEN 0 THEN 'failed' WHEN 1 THEN 'cancelled' ELSE 'completed' END",
        "backend": f"CASE WHEN g %% 20 = 1 THEN '' ELSE ({backends})[1 + g %% 4] END",
        "attempts": "CASE WHEN g %% 20 = 1 THEN 0 ELSE 1 END",
        "error": "CASE WHEN g %% 10 = 0 THEN 'KSampler (3) failed: RuntimeError: out of memory' ELSE '' END",
        "error_detail": """CASE WHEN g %% 10 = 0 THEN '{"type": "execution"}'::jsonb ELSE '{}'::jsonb END""",
        "outputs": """CASE WHEN g %% 10 > 1 AND g < 8 * 86400
                      THEN jsonb_build_array('generations/x/' || g || '_0.png') ELSE '[]'::jsonb END""",
        "thumbnails": """CASE WHEN g %% 10 > 1 AND g < 8 * 86400
                         THEN jsonb_build_array(jsonb_build_object('small', 'generations/x/' || g || '_s.webp'))
                         ELSE '[]'::jsonb END""",
        "created_at": "%(now)s - g * interval '1 second' - interval '20 seconds'",
        "queued_at": "%(now)s - g * interval '1 second' - interval '20 seconds'",
        "started_at": "%(now)s - g * interval '1 second' - interval '12 seconds'",
        "finished_at": "%(now)s - g * interval '1 second'",
        "updated_at": "%(now)s - g * interval '1 second'",
        "heartbeat_at": "NULL",
    }
    waiting = {
        **history,
        "status": "'queued'", "backend": "''", "attempts": "0", "error": "''", "error_detail": "'{}'::jsonb",
        "outputs": "'[]'::jsonb", "thumbnails": "'[]'::jsonb",
        "created_at": "%(now)s - g * interval '50 milliseconds'",
        "queued_at": "%(now)s - g * interval '50 milliseconds'",
        "started_at": "NULL", "finished_at": "NULL", "updated_at": "%(now)s - g * interval '50 milliseconds'",
    }
    running = {**waiting, "status": "'running'", "backend": f"({backends})[1 + g %% 4]", "attempts": "1",
               "started_at": "%(now)s", "heartbeat_at": "%(now)s", "current_node": "'KSampler (3)'"}
    started = time.monotonic()
    with connection.cursor() as cursor:
        for values, count in ((history, rows), (waiting, queued), (running, 8)):
            select = ", ".join(values.get(column, f't."{column}"') for column in columns)
            cursor.execute(f'INSERT INTO {table} ({", ".join(chr(34) + c + chr(34) for c in columns)}) '
                           f"SELECT {select} FROM {table} t, generate_series(1, %(rows)s) g WHERE t.id = %(template)s",
                           {"now": timezone.now(), "rows": count, "template": template.pk})
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [template.pk])
        cursor.execute(f"VACUUM ANALYZE {table}")
    print(json.dumps({"fill": {"rows": rows, "queued": queued, "seconds": round(time.monotonic() - started, 1)}}),
          flush=True)
    return token


def fill_counters():
    """Counter rows as a few weeks of events leave them (the new code's table; empty after the migration)."""
    from generation import metrics

    for workflow in ("txt2img", "img2img"):
        for status in ("completed", "failed", "cancelled"):
            metrics.count("requests_finished", {"workflow": workflow, "status": status}, by=1000)
        for reason in ("execution", "validation", "deadline", "storage", "retries_exhausted"):
            metrics.count("failures", {"workflow": workflow, "reason": reason}, by=10)
        for value in (0.2, 3, 40, 700):
            metrics.observe("queue_wait_seconds", value, {"workflow": workflow})
            metrics.observe("execution_seconds", value, {"workflow": workflow})
    for url in BACKENDS:
        for value in (1.5, 4, 12):
            metrics.observe("checkpoint_load_seconds", value, {"backend": url})
    for outcome in ("delivered", "retry", "gave_up"):
        metrics.count("webhook_deliveries", {"outcome": outcome}, by=50)


class Gunicorn:
    def __init__(self, code_dir):
        self.port = support.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(ROOT / ".venv/bin/gunicorn"), "genonaut.wsgi", "-w", "1", "-b", f"127.0.0.1:{self.port}",
             "--log-level", "warning"], cwd=code_dir, env={**os.environ, **ENV}, start_new_session=True)
        if not support.wait_for_port(self.port):
            self.stop()
            raise RuntimeError("gunicorn did not start within 30 s")

    def worker_pids(self):
        try:
            return [int(pid) for pid in
                    Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()]
        except FileNotFoundError:
            return []

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)


def logged_in(url):
    import requests

    session = requests.Session()
    session.get(f"{url}/accounts/login/", timeout=10)
    answer = session.post(f"{url}/accounts/login/", timeout=10, allow_redirects=False,
                          data={"username": "ops-staff", "password": PASSWORD,
                                "csrfmiddlewaretoken": session.cookies["csrftoken"]})
    assert answer.status_code == 302, answer.text[:500]
    return session


def measure(server, token, samples, *, with_metrics):
    import requests

    session = logged_in(server.url)
    api = requests.Session()
    api.headers["Authorization"] = f"Token {token}"
    scraper = requests.Session()
    scraper.headers["Authorization"] = f"Bearer {METRICS_TOKEN}"
    cases = {
        "Backends page": (session, "/backends/"),
        "API backends": (api, "/api/v1/comfyui/backends/"),
        "admin request list": (session, "/admin/generation/generationrequest/"),
        "admin list, backend filter": (session, f"/admin/generation/generationrequest/?backend={BACKENDS[1]}"),
    }
    if with_metrics:
        cases["/metrics"] = (scraper, "/metrics")
    results = {}
    for name, (client, path) in cases.items():
        latencies = []
        for index in range(samples + 3):
            if index == 3:  # the first requests load code and templates
                cpu = cpu_seconds(server.worker_pids()), cpu_seconds(postgres_backends())
            sent = time.perf_counter()
            response = client.get(server.url + path, timeout=60)
            elapsed = (time.perf_counter() - sent) * 1000
            assert response.status_code == 200, (name, response.status_code, response.text[:300])
            if index >= 3:
                latencies.append(elapsed)
        # CPU per request of the web worker and of PostgreSQL: what the request costs, whatever the load
        results[name] = {**summary(latencies),
                         "cpu_ms": {"web": round((cpu_seconds(server.worker_pids()) - cpu[0]) * 1000 / samples, 1),
                                    "postgres": round((cpu_seconds(postgres_backends()) - cpu[1]) * 1000 / samples,
                                                      1)}}
    return results


def postgres_backends():
    import psycopg

    with psycopg.connect(f"{PG}/postgres") as conn:
        return [row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [DB_NAME])]


def retention_plan(*, ordered):
    """EXPLAIN ANALYZE of the retention query: as main builds it (Meta.ordering, -created_at) or ordered
    oldest first as the new reconciler does."""
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from generation.models import GenerationRequest
    from generation.states import TERMINAL

    query = (GenerationRequest.objects.filter(status__in=sorted(TERMINAL),
                                              finished_at__lt=timezone.now() - timedelta(days=7))
             .exclude(outputs=[], thumbnails=[]).order_by("finished_at" if ordered else "-created_at")[:200])
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        plan = [row[0] for row in cursor.fetchall()]
    total = float(re.search(r"Execution Time: ([\d.]+)", plan[-1]).group(1))
    return {"execution_ms": total, "plan": plan[:6]}


def phase(name, code_dir, token, samples, *, with_metrics):
    # pages render with ManifestStaticFilesStorage (DEBUG off): each version's own static files
    ENV["STATIC_ROOT"] = tempfile.mkdtemp(prefix="genonaut-ops-static-")
    manage(code_dir, "collectstatic", "--noinput", "-v", "0")
    server = Gunicorn(code_dir)
    try:
        results = measure(server, token, samples, with_metrics=with_metrics)
    finally:
        server.stop()
    results["retention query (EXPLAIN ANALYZE)"] = retention_plan(ordered=with_metrics)
    print(json.dumps({name: results}), flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--before", default="main", help="git revision measured first")
    args = parser.parse_args()

    before_dir = export_revision(args.before)
    with __import__("psycopg").connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    manage(before_dir, "migrate", "--noinput", "-v", "0")
    os.environ.update(ENV)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    token = fill(args.rows, args.queued)
    before = phase(f"before ({args.before})", before_dir, token, args.samples, with_metrics=False)
    seconds = manage(ROOT, "migrate", "--noinput", "-v", "0")
    print(json.dumps({"migrate to this checkout (new indexes)": {"seconds": round(seconds, 1)}}), flush=True)
    fill_counters()
    after = phase("after (this checkout)", ROOT, token, args.samples, with_metrics=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    print("\n| figure | before p50 / p95 (CPU web + PostgreSQL) | after p50 / p95 (CPU web + PostgreSQL) |")
    print("|---|---|---|")

    def cell(result):
        if result is None:
            return "—"
        if "execution_ms" in result:
            return f"{result['execution_ms']:.1f} ms"
        return (f"{result['p50_ms']} / {result['p95_ms']} ms "
                f"({result['cpu_ms']['web']} + {result['cpu_ms']['postgres']} ms)")

    for name, result in after.items():
        print(f"| {name} | {cell(before.get(name))} | {cell(result)} |")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
