"""The web servers as production runs them, with the documented environment (deploy/genonaut.env.example),
on free loopback ports and the test database: gunicorn with deploy/gunicorn.conf.py, and the ASGI event
server (uvicorn) as deploy/systemd/genonaut-events.service starts it (``start_events_server``).

``start_gunicorn(workers=3, pages=False, **env)`` starts one and returns ``(base_url, log_path)``;
``pages=True`` serves HTML pages too (their static-file names come from collectstatic's manifest,
collected once per session). Every server started is stopped (SIGTERM, then SIGKILL) when the test
ends, also when it failed while booting.
"""

import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / "deploy" / "genonaut.env.example"
HOST = "genonaut.example.com"


def documented_env(tmp_path, **overrides):
    """The example env file as a host would load it, with a real secret and local paths."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    env.update(SECRET_KEY=secrets.token_urlsafe(50), GENONAUT_DATA_DIR=str(tmp_path / "data"),
               STATIC_ROOT=str(tmp_path / "static"), DJANGO_SETTINGS_MODULE="genonaut.settings")
    env.update(overrides)
    return env


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def collected_static(tmp_path_factory):
    """STATIC_ROOT after ``collectstatic`` with the documented settings (the manifest pages need)."""
    folder = tmp_path_factory.mktemp("gunicorn-static")
    env = documented_env(folder, STATIC_ROOT=str(folder / "static"))
    result = subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return folder / "static"


def events_command():
    """The argv of deploy/systemd/genonaut-events.service's ``ExecStart``, with this checkout's venv."""
    line = next(line for line in (ROOT / "deploy" / "systemd" / "genonaut-events.service").read_text().splitlines()
                if line.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    argv[0] = str(Path(sys.executable).with_name(Path(argv[0]).name))
    return argv


class _Servers:
    """Web server processes started by a test, stopped (SIGTERM, then SIGKILL) when it ends."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.started = []

    def start(self, argv, environment, port):
        log_path = self.tmp_path / f"{Path(argv[0]).name}-{port}.log"
        log = open(log_path, "a")  # noqa: SIM115 - closed when the server is stopped
        proc = subprocess.Popen(argv, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        self.started.append((proc, log))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                requests.get(base + "/healthz", headers={"Host": HOST}, timeout=5)
                break
            except (requests.ConnectionError, requests.Timeout):  # still booting (slowly, on a loaded box)
                time.sleep(0.2)
        assert proc.poll() is None, log_path.read_text()
        return base, log_path, proc

    @staticmethod
    def stop(proc):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop_all(self):
        for proc, log in self.started:
            if proc.poll() is None:
                self.stop(proc)
            log.close()


def _test_database_env(settings):
    db = settings.DATABASES["default"]
    return {"DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
            "REDIS_URL": os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/13")}


@pytest.fixture
def start_gunicorn(tmp_path, settings, django_db_setup, django_db_blocker, request):
    servers = _Servers(tmp_path)

    def start(*, workers=2, pages=False, **env):
        port = _free_port()
        environment = documented_env(tmp_path, **_test_database_env(settings),
                                     GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port} --workers {workers}")
        if pages:
            environment["STATIC_ROOT"] = str(request.getfixturevalue("collected_static"))
        environment.update(env)
        base, log_path, _ = servers.start([str(Path(sys.executable).with_name("gunicorn")), "-c",
                                           "deploy/gunicorn.conf.py", "genonaut.wsgi"], environment, port)
        return base, log_path

    yield start
    servers.stop_all()


@pytest.fixture
def start_events_server(tmp_path, settings, django_db_setup):
    """``start_events_server(**env)``: the ASGI event server as deploy/systemd/genonaut-events.service runs
    it (uvicorn, the documented environment, the test database; ``REDIS_URL=""`` for none) on a free port.
    Returns ``(base_url, process)``; stop one early with ``start_events_server.stop(process)``."""
    servers = _Servers(tmp_path)

    def start(**env):
        port = _free_port()
        argv = events_command()
        argv[argv.index("--port") + 1] = str(port)
        environment = documented_env(tmp_path, **_test_database_env(settings))
        environment.update(env)
        base, _, proc = servers.start(argv, environment, port)
        return base, proc

    start.stop = servers.stop
    yield start
    servers.stop_all()
