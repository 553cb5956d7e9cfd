"""Fixtures that run the ComfyUI simulator as a real server on a free loopback port.

The simulator runs in its own process (``manage.py comfyui_simulator --port 0``), so it is
reachable over TCP from the test, from a qcluster subprocess, from a browser. Use:

- ``simulator``: the shared default simulator (one per test session and xdist worker),
  reset (no queue, history, faults or statistics) before each test;
- ``simulator_factory(**options)``: a dedicated simulator with other options
  (``step_time``, ``load_time``, ``checkpoints``, ``loras``, ``upscale_models``,
  ``custom_nodes=[{...}]``, ``removed_nodes``, ``faults={...}``, ``seed``…), stopped after the test.

The handle has ``.url``, ``.client()`` and the control helpers (``set_faults``, ``configure``,
``restart``, ``reset``, ``stats``, ``input_files``, ``submissions(id)``, ``executions(id)``,
``drop_websockets``, ``wait_for``).
"""

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
TEST_STEP_TIME = 0.005
TEST_LOAD_TIME = 0.02
START_TIMEOUT = 30.0


class SimulatorProcess:
    """A running simulator process and its control API (``/_simulator/...``)."""

    def __init__(self, process, url, log_path):
        self.process = process
        self.url = url
        self.log_path = log_path
        self.session = requests.Session()

    def __repr__(self):
        return f"SimulatorProcess({self.url}, pid={self.process.pid})"

    @property
    def port(self):
        return int(self.url.rsplit(":", 1)[1])

    def client(self, **kwargs):
        from generation.comfyui.client import ComfyUIClient

        kwargs.setdefault("timeout", 5.0)
        kwargs.setdefault("retries", 1)
        kwargs.setdefault("backoff", 0.05)
        return ComfyUIClient(self.url, **kwargs)

    def control(self, method, path, body=None, *, unreachable_for=10.0):
        """Call the control API; waits out a ``refuse_connections`` outage (up to ``unreachable_for`` s)."""
        deadline = time.monotonic() + unreachable_for
        while True:
            try:
                response = self.session.request(method, f"{self.url}/_simulator/{path}", json=body, timeout=10)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)
        response.raise_for_status()
        return response.json()

    def set_faults(self, **faults):
        return self.control("POST", "faults", faults)

    def configure(self, **options):
        """Change ``step_time``, ``load_time``, ``node_time``, the model lists, ``custom_nodes``, ``removed_nodes``."""
        return self.control("POST", "config", options)

    def restart(self):
        """Forget queue, history and sockets, like a ComfyUI process restart (statistics are kept)."""
        return self.control("POST", "restart")

    def reset(self):
        return self.control("POST", "reset")

    def drop_websockets(self):
        return self.control("POST", "drop_websockets")["dropped"]

    def stats(self):
        return self.control("GET", "stats")

    def input_files(self):
        """Paths in the simulator's ``input/`` folder (uploads, ``example.png``), sorted."""
        return self.control("GET", "inputs")

    def submissions(self, prompt_id):
        return self.stats()["submissions"].get(prompt_id, 0)

    def executions(self, prompt_id):
        return self.stats()["executions"].get(prompt_id, 0)

    def wait_for(self, predicate, *, timeout=5.0, interval=0.01):
        """Poll ``predicate(stats)`` until true; fail the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"simulator condition not met within {timeout}s: {stats}")
            time.sleep(interval)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.session.close()
        Path(self.log_path).unlink(missing_ok=True)


def _arguments(options):
    args = []
    options = {"step_time": TEST_STEP_TIME, "load_time": TEST_LOAD_TIME, **options}
    faults = options.pop("faults", None)
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if name == "custom_nodes":
            value = json.dumps(list(value))
        elif isinstance(value, (list, tuple)):
            value = ",".join(value)
        args += [flag, str(value)]
    if faults:
        args += ["--faults", json.dumps(faults)]
    return args


def start_simulator(**options):
    """Start ``manage.py comfyui_simulator`` on a free port and wait until it listens."""
    log = tempfile.NamedTemporaryFile(prefix="simulator-", suffix=".log", delete=False)  # noqa: SIM115
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "genonaut.test_settings", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "comfyui_simulator", "--host", "127.0.0.1", "--port", "0",
         *_arguments(options)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = process.stdout.readline()
            if not line:
                break
            if "listening on " in line:
                return SimulatorProcess(process, line.rsplit("listening on ", 1)[1].strip(), log.name)
    finally:
        selector.close()
    process.kill()
    process.wait(timeout=5)
    raise RuntimeError(f"simulator did not start: {Path(log.name).read_text()[-2000:]}")


@pytest.fixture(scope="session")
def simulator_server():
    """One default simulator process for the session (per xdist worker)."""
    server = start_simulator()
    yield server
    server.stop()


@pytest.fixture
def simulator(simulator_server):
    """The shared simulator, reset to a fresh state for this test."""
    simulator_server.reset()
    return simulator_server


@pytest.fixture
def simulator_factory():
    """Start dedicated simulators with other options; each is stopped after the test."""
    started = []

    def factory(**options):
        server = start_simulator(**options)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
