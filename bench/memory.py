"""Memory per web process (gunicorn worker) and per worker process (Django-Q worker), from /proc.

    .venv/bin/python bench/memory.py [--runs 3] [--jobs 40] [--size 512]

Each run, on loopback and in its own database (``genonaut_bench_memory``, dropped and re-created):
one ComfyUI simulator, one Django-Q cluster (4 workers, ORM broker) and gunicorn started with
deploy/gunicorn.conf.py (2 workers, production settings: DEBUG off). Warm-up goes through the
public surface: log in, submit ``--jobs`` requests by the API (``--size``² images, so workers
stream PNGs, add the parameters chunk and make thumbnails), wait until they complete, then read
every request, image and thumbnail, the lists, the UI pages and the OpenAPI schema. Then RSS
(VmRSS) and PSS (proportional share: shared pages split between the processes sharing them) of
every gunicorn worker and every Django-Q worker are read from /proc. Prints the median per role
over all runs.
"""

import argparse
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG = "postgres://postgres@127.0.0.1:5432"
DB_NAME = "genonaut_bench_memory"
CHECKPOINT = "tiny-sd15-random.safetensors"


def proc_memory(pid):
    """(RSS, PSS) in MiB of one process."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss / 1024, pss / 1024


def children(pid):
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def recreate_database():
    support.recreate_database(DB_NAME, {"DJANGO_SETTINGS_MODULE": "genonaut.test_settings",
                                        "DATABASE_URL": f"{PG}/{DB_NAME}"})


def run_once(args, workdir):
    import requests

    from tests.plugins.cluster import Cluster
    from tests.plugins.simulator import start_simulator

    recreate_database()
    simulator = start_simulator(step_time=0.01, load_time=0.05)
    port = support.free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "genonaut.settings",
        "DEBUG": "0",
        "SECRET_KEY": "genonaut-memory-bench-only-key-0123456789abcdefghijklmnop",
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
        "DATABASE_URL": f"{PG}/{DB_NAME}",
        "COMFYUI_URL": f"{simulator.url};capacity=2",
        "MEDIA_ROOT": str(workdir / "media"),
        "STATIC_ROOT": str(workdir / "static"),
        "GENONAUT_DATA_DIR": str(workdir),
        "Q_WORKERS": "4",
        "Q_POLL": "0.05",
        "Q_CLUSTER_NAME": f"memory{os.getpid()}",
        "LOG_LEVEL": "INFO",
        "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --workers 2",
        "PYTHONUNBUFFERED": "1",
    }
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env,
                   check=True)
    setup = ("from django.contrib.auth import get_user_model; from rest_framework.authtoken.models import Token;"
             "from models_registry.models import AvailableModel;"
             f"AvailableModel.objects.get_or_create(name='{CHECKPOINT}', defaults={{'type': 'checkpoint'}});"
             "u = get_user_model().objects.create_user('bench', password='bench-password-123');"
             "print(Token.objects.create(user=u).key)")
    token = subprocess.run([sys.executable, "manage.py", "shell", "-c", setup], cwd=ROOT, env=env, check=True,
                           capture_output=True, text=True).stdout.strip().splitlines()[-1]
    cluster = Cluster(env, str(workdir / "cluster.log")).start()
    web_log = open(workdir / "gunicorn.log", "w")  # noqa: SIM115 - closed in finally
    web = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "-c", "deploy/gunicorn.conf.py",
                            "genonaut.wsgi"], cwd=ROOT, env=env, stdout=web_log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base + "/healthz")
        warm_up(requests, base, token, args)
        time.sleep(1.0)  # let the last tasks' results reach the monitor
        return measure(web.pid, cluster)
    finally:
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(web.pid, signal.SIGKILL)
            web.wait(timeout=5)
        web_log.close()
        cluster.stop()
        simulator.stop()


def _wait_http(url, timeout=30):
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def warm_up(requests, base, token, args):
    api = requests.Session()
    api.headers["Authorization"] = f"Token {token}"
    ids = []
    for i in range(args.jobs):
        body = {"prompt": f"memory bench {i}", "checkpoint_model": CHECKPOINT, "width": args.size,
                "height": args.size, "batch_size": 1,
                "sampler_params": {"seed": i, "steps": 4, "cfg": 7.0, "sampler_name": "euler",
                                   "scheduler": "normal", "denoise": 1.0}}
        response = api.post(base + "/api/v1/comfyui/generate/", json=body, timeout=30)
        response.raise_for_status()
        ids.append(response.json()["id"])
    deadline = time.monotonic() + 300
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for request_id in list(pending):
            if api.get(f"{base}/api/v1/comfyui/{request_id}/", timeout=30).json()["status"] in {
                    "completed", "failed", "cancelled"}:
                pending.discard(request_id)
        time.sleep(0.5)
    if pending:
        raise RuntimeError(f"{len(pending)} requests did not finish")
    urls = []
    for request_id in ids:
        detail = api.get(f"{base}/api/v1/comfyui/{request_id}/", timeout=30).json()
        for image in detail["images"]:
            urls += [image["url"], *image["thumbnails"].values()]
    for url in urls:
        api.get(url if url.startswith("http") else base + url, timeout=30).raise_for_status()
    for path in ("/api/v1/comfyui/", "/api/v1/comfyui/?status=completed", "/api/v1/comfyui/models/",
                 "/api/schema/", "/readyz"):
        api.get(base + path, timeout=30).raise_for_status()
    browser = requests.Session()
    browser.get(base + "/accounts/login/", timeout=30)
    browser.post(base + "/accounts/login/", data={"username": "bench", "password": "bench-password-123",
                                                  "csrfmiddlewaretoken": browser.cookies.get("csrftoken")},
                 headers={"Referer": base + "/accounts/login/"}, timeout=30)
    for path in ("/", "/history/", f"/requests/{ids[0]}/", f"/requests/{ids[0]}/images/0/", "/models/"):
        browser.get(base + path, timeout=30)
    return len(urls)


def measure(web_pid, cluster):
    web_workers = children(web_pid)
    log = cluster.log()
    worker_pids = [int(pid) for pid in re.findall(r"ready for work at (\d+)", log)]
    alive = [pid for pid in worker_pids if Path(f"/proc/{pid}").exists()]
    return {
        "gunicorn master": [proc_memory(web_pid)],
        "gunicorn worker": [proc_memory(pid) for pid in web_workers],
        "django-q worker": [proc_memory(pid) for pid in alive],
        "qcluster (sentinel+monitor+pusher+parent)": [proc_memory(pid) for pid in _cluster_others(cluster, alive)],
    }


def _cluster_others(cluster, workers):
    parent = cluster.pid
    others = [parent]
    for child in children(parent):
        others.append(child)
        others += [grandchild for grandchild in children(child) if grandchild not in workers]
    return others


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "genonaut.test_settings")
    samples = {}
    for run in range(args.runs):
        workdir = Path(tempfile.mkdtemp(prefix="genonaut-memory-"))
        result = run_once(args, workdir)
        for role, values in result.items():
            samples.setdefault(role, []).extend(values)
        print(f"run {run + 1}: " + "; ".join(
            f"{role}: RSS {statistics.median(v[0] for v in values):.0f} MiB" for role, values in result.items()))
    print(f"\nmedian over {args.runs} runs ({args.jobs} jobs of {args.size}x{args.size} each):")
    print(f"{'process':45} {'n':>3} {'RSS MiB':>8} {'PSS MiB':>8}")
    for role, values in samples.items():
        print(f"{role:45} {len(values):>3} {statistics.median(v[0] for v in values):8.1f} "
              f"{statistics.median(v[1] for v in values):8.1f}")


if __name__ == "__main__":
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the servers this started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
