"""Live events benchmark (issue 13): event latency, preview latency, 500 open streams on one web process.

    .venv/bin/python bench/live_bench.py [--fanout redis,postgres,poll] [--only latency,previews,streams]
                                         [--requests 40] [--rate 4] [--preview-requests 8] [--preview-step 0.4]
                                         [--streams 500] [--stream-users 500] [--idle 60] [--redis URL]
                                         [--postgres private|URL] [--max-connections 700]

Each fan-out mode runs in a child process of its own (the web server, the workers and this process must
read the same settings at start-up): ``redis`` (``REDIS_URL`` set: Redis pub/sub, and the Redis broker),
``postgres`` (no ``REDIS_URL``: PostgreSQL ``LISTEN/NOTIFY``, ORM broker), ``poll`` (``LIVE_FANOUT=poll``:
the web process reads the database every ``LIVE_POLL_SECONDS``). Per mode, on loopback: a private
PostgreSQL server (``--postgres private``, the default: initdb in a temporary folder, ``max_connections``
700, since every open stream holds a connection and the shared server allows 100; stopped and deleted
at the end) with a database of its own (``genonaut_live_bench_<pid>``), 2 simulators (capacity 1 each),
one real worker cluster (``pipeline_bench.Harness``), and the event server as
deploy/systemd/genonaut-events.service runs it — one uvicorn process serving ``genonaut.asgi:application``
(production settings: ``DEBUG`` off). Clients are aiohttp streams of ``GET /api/v1/comfyui/events/`` in
this process; requests are submitted here with ``submit_generation`` (as the API does), in a thread, at
``--rate`` per second.

1. ``latency``: one stream; ``--requests`` requests of 4 steps. Every status change (``queued``,
   ``running``, ``completed``) is timed from the ``created_at`` of its ``RequestEvent`` row (written in the
   transaction of the change) to the moment this client read its ``data:`` line. p50/p95/max, also per
   status.
2. ``previews``: one stream; ``--preview-requests`` requests of 16 steps, ``--preview-step`` seconds a
   step, so frames are apart by more than the runner's ``PREVIEW_INTERVAL`` and by more than any
   latency seen: a ``preview`` event is timed from the send time of the latest frame of its prompt sent
   before it arrived (the simulator's ``recent_previews``). Also: frames sent vs preview events received.
3. ``streams``: ``--streams`` streams of ``--stream-users`` users (stream i is user i mod that). The
   server's RSS and PSS, threads, and the database's connections and their backends' PSS: after a
   warm-up stream, with all open, after events flowed and 10 s after they are closed; CPU time of the
   server, of PostgreSQL and of this process over ``--idle`` seconds with all open (and 10 s with none),
   and while ``--requests`` requests of the first 20 users run (latency as in 1, on those users' streams).

Every process started is stopped by PID, also on failure or SIGTERM. See bench/README.md "Live events".
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from memory import proc_memory  # noqa: E402
from pipeline_bench import (  # noqa: E402
    Harness,
    drop_database,
    median_ms,
    p95_ms,
    params,
    reset_data,
    setup_django,
    wait_all,
)
from support import cpu_seconds, free_port  # noqa: E402

FANOUTS = {"redis": "redis", "postgres": "postgres", "poll": "poll"}  # mode -> LIVE_FANOUT
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
EVENTS_PATH = "/api/v1/comfyui/events/"
STATUS_EVENTS = {"status", "completed", "failed", "cancelled"}
SERVER_ENV = {  # production settings, as bench/api_bench.py runs gunicorn
    "DEBUG": "0",
    "SECRET_KEY": "genonaut-bench-only-secret-key-0123456789abcdef",
    "ALLOWED_HOSTS": "127.0.0.1",
    "SECURE_SSL_REDIRECT": "0",
    "LOG_LEVEL": "WARNING",
    "DATABASE_CONN_MAX_AGE": "60",  # as deploy/genonaut.env.example
}


# --- the event server ---------------------------------------------------------------------------


class EventServer:
    """The event server as deploy/systemd/genonaut-events.service starts it: one uvicorn process serving
    ``genonaut.asgi:application`` (no workers: the process is the server)."""

    def __init__(self, env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "genonaut.test_settings", **SERVER_ENV, **env}
        self.log = tempfile.NamedTemporaryFile(prefix="bench-events-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = None

    def start(self):
        import requests

        from tests.plugins.gunicorn import events_command

        argv = events_command()  # as deploy/systemd/genonaut-events.service runs it
        argv[argv.index("--port") + 1] = str(self.port)
        self.process = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                requests.get(f"{self.url}/healthz", timeout=2)
                return self
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"event server did not start: {Path(self.log.name).read_text()[-3000:]}")

    @property
    def pid(self):
        return self.process.pid

    def threads(self):
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()

    def log_tail(self, chars=2000):
        return Path(self.log.name).read_text()[-chars:]


class PrivatePostgres:
    """A throwaway PostgreSQL server (initdb in a temporary folder, run as the ``postgres`` user, default
    settings but ``max_connections``) on a free port: 500 streams may hold more connections than the shared
    server allows, and exhausting that one would break everyone else's tests."""

    def __init__(self, max_connections):
        self.max_connections = max_connections
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}"
        self.folder = tempfile.mkdtemp(prefix="bench-postgres-")
        self.process = None

    def start(self):
        import shutil

        shutil.chown(self.folder, "postgres", "postgres")
        data = f"{self.folder}/data"
        subprocess.run(["initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, user="postgres", group="postgres", timeout=120)
        self.process = subprocess.Popen(
            ["postgres", "-D", data, "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={self.folder}", "-c", f"max_connections={self.max_connections}"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.folder}/log", "w"),  # noqa: SIM115 - the folder goes
            user="postgres", group="postgres", start_new_session=True)
        deadline = time.monotonic() + 60
        while subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {Path(self.folder, 'log').read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def stop(self):
        import shutil

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: clients are disconnected
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def postgres_backends(database):
    """PIDs of the PostgreSQL backends connected to ``database`` (this process's included)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [database])
        return [row[0] for row in cursor.fetchall()]


# --- the clients ---------------------------------------------------------------------------------


class Streams:
    """``count`` open event streams (aiohttp, this process): every event read, with the time it was read.

    Kept light, as the client shares the machine with the server: lines are split by aiohttp, data is
    decoded only afterwards (:meth:`events`)."""

    def __init__(self, base_url, tokens):
        self.base_url = base_url
        self.tokens = tokens
        self.received = [[] for _ in tokens]  # per stream: (epoch seconds read, event name, data bytes)
        self.opened = 0
        self.failures = []
        self.all_open = asyncio.Event()
        self.tasks = []

    async def open(self, session, *, timeout=120):
        self.tasks = [asyncio.create_task(self._follow(session, i)) for i in range(len(self.tokens))]
        start = time.monotonic()
        await asyncio.wait_for(self.all_open.wait(), timeout)
        return time.monotonic() - start

    async def _follow(self, session, index):
        import aiohttp

        headers = {"Authorization": f"Token {self.tokens[index]}", "Accept": "text/event-stream"}
        sink = self.received[index]
        try:
            async with session.get(self.base_url + EVENTS_PATH, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=None, sock_connect=60)) as response:
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
                name = None
                async for line in response.content:
                    if line.startswith(b"retry:"):
                        self._counted_open()
                    elif line.startswith(b"event:"):
                        name = line[6:].strip().decode()
                    elif line.startswith(b"data:"):
                        sink.append((time.time(), name, line[5:]))
                    elif line == b"\n":
                        name = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # counted and reported: a stream the server refused or dropped
            self.failures.append(f"{type(exc).__name__}: {exc}"[:300])
            self._counted_open()

    def _counted_open(self):
        self.opened += 1
        if self.opened >= len(self.tokens):
            self.all_open.set()

    async def close(self):
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def events(self, names):
        """``[(read at, name, data dict)]`` of every stream, only events named in ``names``."""
        return [(at, name, json.loads(data)) for sink in self.received for at, name, data in sink if name in names]


def status_latencies(events):
    """Seconds from each logged change's ``created_at`` to the first time a client read it, and the
    logged changes of those requests no client read (by status)."""
    from generation.models import RequestEvent

    first = {}
    for at, name, data in events:
        status = data.get("status") or name
        first.setdefault((str(data["id"]), status), at)
    if not first:
        return {}, {}
    logged = {}
    for request_id, status, created_at in RequestEvent.objects.filter(
            request_id__in={key[0] for key in first}).order_by("id").values_list("request_id", "status", "created_at"):
        logged.setdefault((str(request_id), status), created_at.timestamp())
    latencies = {key: at - logged[key] for key, at in first.items() if key in logged}
    missed = {}
    for _, status in (key for key in logged if key not in first):
        missed[status] = missed.get(status, 0) + 1
    return latencies, missed


def latency_report(latencies, missed):
    """p50/p95 of every change, and per status: ``queued`` is published by the submitting process (this
    one), ``running`` and ``completed`` by the workers."""
    by_status = {}
    for (_, status), seconds in latencies.items():
        by_status.setdefault(status, []).append(seconds)
    return {**summary(list(latencies.values()), 100), "changes_never_received": missed,
            "by_status": {status: {"n": len(values), "p50_ms": median_ms(values), "p95_ms": p95_ms(values)}
                          for status, values in sorted(by_status.items())}}


def summary(latencies, target_ms=None):
    if not latencies:
        return {"n": 0}
    result = {"n": len(latencies), "p50_ms": median_ms(latencies), "p95_ms": p95_ms(latencies),
              "max_ms": round(max(latencies) * 1000, 1)}
    if target_ms:
        result["p95_to_target"] = round(result["p95_ms"] / target_ms, 2)
    return result


def submit_paced(users, count, rate, steps=4):
    """Submit ``count`` requests round-robin over ``users``, ``rate`` per second (a thread: the event loop
    keeps reading streams); wait until all are finished; return their ids."""
    from django.db import connections

    from generation.services import submit_generation

    try:
        ids, start = [], time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ids.append(submit_generation(user=users[i % len(users)], data=params(steps=steps))[0].pk)
        wait_all(ids, timeout=120 + count, interval=0.05)
        return ids
    finally:
        connections.close_all()


async def run_workload(streams_done_after, work, *args):
    result = await asyncio.to_thread(work, *args)
    await asyncio.sleep(streams_done_after)  # the last events are still on their way
    return result


# --- the figures ---------------------------------------------------------------------------------


async def bench_latency(server, user, token, args):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        streams = Streams(server.url, [token])
        await streams.open(session)
        await run_workload(1.0, submit_paced, [user], args.requests, args.rate)
        await streams.close()
    report = latency_report(*await asyncio.to_thread(status_latencies, streams.events(STATUS_EVENTS)))
    return {**report, "stream_failures": streams.failures, "requests": args.requests,
            "load_average": round(os.getloadavg()[0], 2)}


def preview_latencies(events, request_ids, simulators):
    """Seconds from the latest frame of the request's prompt sent before each ``preview`` event was read;
    events no frame explains; frames sent for ``request_ids``."""
    from generation.models import GenerationRequest

    prompts = dict(GenerationRequest.objects.filter(pk__in=request_ids).values_list("pk", "comfyui_prompt_id"))
    sent = {prompt_id: [] for prompt_id in prompts.values()}
    for sim in simulators:
        for prompt_id, at in sim.stats()["recent_previews"]:
            if prompt_id in sent:
                sent[prompt_id].append(at)
    latencies, unmatched = [], 0
    for at, _, data in events:
        before = [t for t in sent.get(prompts.get(_uuid(data["id"]), ""), []) if t <= at]
        if before:
            latencies.append(at - max(before))
        else:
            unmatched += 1
    return latencies, unmatched, sum(len(times) for times in sent.values())


def _uuid(value):
    import uuid

    return uuid.UUID(str(value))


async def bench_previews(harness, server, user, token, args):
    import aiohttp

    for sim in harness.simulators:
        sim.configure(step_time=args.preview_step)
    try:
        async with aiohttp.ClientSession() as session:
            streams = Streams(server.url, [token])
            await streams.open(session)
            ids = await run_workload(1.0, submit_paced, [user], args.preview_requests, 10, 16)
            await streams.close()
    finally:
        for sim in harness.simulators:
            sim.configure(step_time=args.step_time)
    events = streams.events({"preview"})
    latencies, unmatched, frames = await asyncio.to_thread(preview_latencies, events, ids, harness.simulators)
    return {**summary(latencies, 150), "frames_sent": frames, "preview_events": len(events),
            "unmatched": unmatched, "step_s": args.preview_step, "stream_failures": streams.failures,
            "load_average": round(os.getloadavg()[0], 2)}


def _pss(pid):
    try:
        return proc_memory(pid)[1]
    except OSError:  # gone meanwhile
        return 0.0


def make_users(count):
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    User = get_user_model()
    users = User.objects.bulk_create([User(username=f"live-bench-{i}") for i in range(count)])
    tokens = Token.objects.bulk_create([Token(key=Token.generate_key(), user=u) for u in users])
    return users, [t.key for t in tokens]


async def bench_streams(server, database, args):
    import aiohttp

    users, tokens = await asyncio.to_thread(make_users, args.stream_users)
    result = {"streams": args.streams, "users": args.stream_users}

    def snapshot(label):
        rss, pss = proc_memory(server.pid)
        backends = postgres_backends(database)
        result[f"server_{label}"] = {"rss_mib": round(rss, 1), "pss_mib": round(pss, 1), "threads": server.threads(),
                                     "postgres_connections": len(backends),
                                     "postgres_backends_pss_mib": round(sum(_pss(pid) for pid in backends), 1)}
        return rss

    def cpu():
        backends = {pid: cpu_seconds([pid]) for pid in postgres_backends(database)}
        return cpu_seconds([server.pid]), backends, time.process_time()

    def spent(before):
        after = cpu()
        # per backend: those gone meanwhile are left out, those new counted from their start
        postgres = sum(seconds - before[1].get(pid, 0.0) for pid, seconds in after[1].items())
        return {"server_cpu_s": round(after[0] - before[0], 2), "postgres_cpu_s": round(postgres, 2),
                "client_cpu_s": round(after[2] - before[2], 2)}

    async def idle(label, seconds):
        before = await asyncio.to_thread(cpu)
        await asyncio.sleep(seconds)
        result[f"idle_{label}"] = {"seconds": seconds, **await asyncio.to_thread(spent, before)}

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm = Streams(server.url, tokens[:1])  # the first stream loads the code a stream runs
        await warm.open(session)
        await warm.close()
        await asyncio.sleep(1)
        await asyncio.to_thread(snapshot, "before")
        await idle("no_streams", min(args.idle, 10))
        rss_before = result["server_before"]["rss_mib"]
        streams = Streams(server.url, [tokens[i % len(tokens)] for i in range(args.streams)])
        result["open_all_s"] = round(await streams.open(session), 2)
        result["open_failures"] = len(streams.failures)
        result["open_failure_examples"] = sorted(set(streams.failures))[:3]
        await asyncio.sleep(2)
        rss_open = await asyncio.to_thread(snapshot, "all_open")
        result["rss_per_stream_kib"] = round((rss_open - rss_before) * 1024 / args.streams, 1)
        await idle("all_open", args.idle)
        idle_cpu = result["idle_all_open"]["server_cpu_s"] - result["idle_no_streams"]["server_cpu_s"] * (
            args.idle / result["idle_no_streams"]["seconds"])
        result["idle_server_cpu_ms_per_stream_per_minute"] = round(idle_cpu * 1000 / args.streams * 60 / args.idle, 3)
        busy = users[:min(20, len(users))]
        received = sum(len(sink) for sink in streams.received)
        before, start = await asyncio.to_thread(cpu), time.monotonic()
        await run_workload(1.0, submit_paced, busy, args.requests, args.rate)
        wall = time.monotonic() - start
        flow = await asyncio.to_thread(spent, before)
        events = sum(len(sink) for sink in streams.received) - received
        result["while_events_flow"] = {"wall_s": round(wall, 1), **flow,
                                       "server_cpu_share": round(flow["server_cpu_s"] / wall, 3),
                                       "events_received": events,
                                       "server_cpu_ms_per_event": round(flow["server_cpu_s"] * 1e3 / max(events, 1), 2),
                                       "client_cpu_s includes": "the submitting thread"}
        await asyncio.to_thread(snapshot, "after_events")
        result["latency_with_all_open"] = latency_report(
            *await asyncio.to_thread(status_latencies, streams.events(STATUS_EVENTS)))
        result["stream_failures_total"] = len(streams.failures)
        await streams.close()
    await asyncio.sleep(10)
    await asyncio.to_thread(snapshot, "10s_after_close")
    result["load_average"] = round(os.getloadavg()[0], 2)
    return result


# --- running one mode ---------------------------------------------------------------------------


def run_mode(args):
    """All figures of one fan-out mode (this process's settings are that mode's)."""
    redis_url = args.redis if args.fanout == "redis" else ""
    os.environ.update(REDIS_URL=redis_url, LIVE_FANOUT=FANOUTS[args.fanout])
    postgres = PrivatePostgres(args.max_connections).start() if args.postgres == "private" else None
    media = tempfile.TemporaryDirectory(prefix="bench-media-")
    name = f"genonaut_live_bench_{os.getpid()}"
    database = f"{postgres.url if postgres else args.postgres}/{name}"
    try:
        run_figures(args, redis_url, media, name, database)
    finally:
        media.cleanup()
        if postgres is not None:
            postgres.stop()


def run_figures(args, redis_url, media, name, database):
    setup_django(database, media.name)
    from rest_framework.authtoken.models import Token

    user = reset_data()
    token = Token.objects.get_or_create(user=user)[0].key
    harness = Harness(redis_url=redis_url or None)
    server = None
    only = set(args.only.split(","))

    def report(title, value):
        print(f"[{args.fanout}] {title}: {json.dumps(value, indent=2, default=str)}", flush=True)

    try:
        harness.simulators_up(2, step_time=args.step_time, load_time=0.0)
        site = harness.cluster_up(capacity=1).env["Q_CLUSTER_NAME"]
        use_site(site)
        server = EventServer({"DATABASE_URL": database, "MEDIA_ROOT": media.name, "Q_CLUSTER_NAME": site})
        server.start()
        wait_all([_warm_up(user)], timeout=60)
        if "latency" in only:
            report(f"event latency, one stream, {args.requests} requests", asyncio.run(
                bench_latency(server, user, token, args)))
        if "previews" in only:
            report(f"preview latency, {args.preview_requests} requests of 16 steps", asyncio.run(
                bench_previews(harness, server, user, token, args)))
        if "streams" in only:
            report(f"{args.streams} streams on one uvicorn process", asyncio.run(bench_streams(server, name, args)))
    except BaseException:
        if server is not None:
            print(f"[{args.fanout}] event server log:\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
            Path(server.log.name).unlink(missing_ok=True)
        harness.close()
        drop_database(database)


def use_site(site):
    """Publish on the channel of the site ``site`` (the workers' and the event server's ``Q_CLUSTER_NAME``):
    the changes this process makes (pending → queued at submit) must reach the same streams."""
    from django.conf import settings

    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "name": site}


def _warm_up(user):
    from generation.services import submit_generation

    return submit_generation(user=user, data=params())[0].pk


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fanout", default="redis,postgres,poll", help="modes, comma-separated: " + ",".join(FANOUTS))
    parser.add_argument("--only", default="latency,previews,streams")
    parser.add_argument("--requests", type=int, default=40, help="requests per latency run (~3 status events each)")
    parser.add_argument("--rate", type=float, default=4.0, help="requests submitted per second")
    parser.add_argument("--step-time", type=float, default=0.02)
    parser.add_argument("--preview-requests", type=int, default=8)
    parser.add_argument("--preview-step", type=float, default=0.4)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--stream-users", type=int, default=500)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement")
    parser.add_argument("--redis", default=DEFAULT_REDIS)
    parser.add_argument("--postgres", default="private",
                        help="'private' (a throwaway server of this run's own) or a server URL without database")
    parser.add_argument("--max-connections", type=int, default=700, help="of the private PostgreSQL server")
    args = parser.parse_args()
    modes = args.fanout.split(",")
    if unknown := set(modes) - set(FANOUTS):
        parser.error(f"unknown fan-out mode(s): {', '.join(sorted(unknown))}")
    if len(modes) == 1:
        return run_mode(args)
    for mode in modes:  # one child per mode; a stopped parent stops the child (its own servers with it)
        argv = [sys.executable, __file__, *[a for a in sys.argv[1:]], "--fanout", mode]
        child = subprocess.Popen(argv, cwd=ROOT)
        try:
            child.wait(timeout=1800)
        finally:
            if child.poll() is None:
                child.terminate()
                child.wait(timeout=60)
        if child.returncode:
            sys.exit(child.returncode)
    return None


if __name__ == "__main__":
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the servers this started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
