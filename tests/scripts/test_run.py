"""scripts/run.sh as a new user runs it: on a fresh data folder (SQLite, ORM broker, simulator), a
second run while the first runs is refused with no side effects, and Ctrl-C/SIGTERM stops it all."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
RUN_SH = ROOT / "scripts" / "run.sh"
START_TIMEOUT = 300.0  # creates a SQLite database, migrates and collects static files first


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_env(data_dir, **overrides):
    """What a new user's shell has: no DATABASE_URL, COMFYUI_URL or REDIS_URL, so the embedded defaults."""
    env = {"PATH": os.environ["PATH"], "HOME": str(data_dir.parent), "LANG": "C.UTF-8",
           "GENONAUT_DATA_DIR": str(data_dir), "PORT": str(free_port()), "SIMULATOR_PORT": str(free_port())}
    env.update(overrides)
    return env


def processes_using(data_dir):
    """PIDs of every process started with this data folder in its environment (run.sh and its children)."""
    marker = f"GENONAUT_DATA_DIR={data_dir}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
    return found


def files_under(folder):
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_debug_off_is_refused_in_one_line(tmp_path):
    data_dir = tmp_path / "data"
    result = subprocess.run(["bash", str(RUN_SH)], env=run_env(data_dir, DEBUG="0"), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "needs DEBUG=1" in result.stderr
    assert not data_dir.exists()  # refused before anything was created


@pytest.fixture
def first_run(tmp_path):
    """run.sh started as a user would (its own session, like a terminal), waited for until its banner."""
    data_dir = tmp_path / "data"
    env = run_env(data_dir)
    output = tmp_path / "first-run.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(["bash", str(RUN_SH)], cwd=tmp_path, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    process.env, process.data_dir, process.output = env, data_dir, output
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "Genonaut is running at" not in output.read_text():
            assert process.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() < deadline, output.read_text()[-3000:]
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
        for pid in processes_using(data_dir):  # whatever a failed test left behind, by PID
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_second_run_is_refused_without_side_effects_and_the_first_stops_cleanly(first_run, tmp_path):
    env, data_dir = first_run.env, first_run.data_dir
    base = f"http://127.0.0.1:{env['PORT']}"
    # the banner came only once the web server answered; its API link works
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{base}/api/v1/", timeout=5).json()["links"]["token"] == f"{base}/api/v1/auth/token/"
    assert requests.get(f"{base}/readyz", timeout=5).status_code == 200  # the simulator has answered

    log_dir = (data_dir / "log" / "latest").resolve()
    assert {"worker-jobs.log", "worker-housekeeping.log", "worker-webhooks.log", "simulator.log",
            "setup.log"} <= {p.name for p in log_dir.iterdir()}
    before_processes = processes_using(data_dir)
    before_logs = files_under(data_dir / "log")
    before_runs = sorted(p.name for p in (data_dir / "log").iterdir())

    second = subprocess.run(["bash", str(RUN_SH)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 1
    assert second.stdout == ""
    assert second.stderr.count("\n") == 1 and "already running" in second.stderr
    assert str(first_run.pid) in second.stderr

    elsewhere = tmp_path / "other-data"  # another folder, but the same web port
    third = subprocess.run(["bash", str(RUN_SH)], cwd=tmp_path, env={**env, "GENONAUT_DATA_DIR": str(elsewhere),
                                                                     "SIMULATOR_PORT": str(free_port())},
                           capture_output=True, text=True, timeout=60)
    assert third.returncode == 1 and third.stderr.count("\n") == 1 and "already in use" in third.stderr
    assert not elsewhere.exists()

    # no side effects: no second cluster or simulator, no new run folder, the live logs only grew
    assert processes_using(data_dir) == before_processes
    assert sorted(p.name for p in (data_dir / "log").iterdir()) == before_runs
    after_logs = files_under(data_dir / "log")
    for path, content in before_logs.items():
        assert after_logs[path].startswith(content), f"{path} was rewritten"

    first_run.send_signal(signal.SIGTERM)
    assert first_run.wait(timeout=40) == 0
    output = first_run.output.read_text()
    assert "Worker clusters stopped." in output
    assert "did not stop" not in output, output[-2000:]  # nothing had to be killed
    for role in ("jobs", "housekeeping", "webhooks"):  # one cluster per queue, each stopped cleanly
        assert "has stopped." in (log_dir / f"worker-{role}.log").read_text()
    assert processes_using(data_dir) == set()
    assert not (data_dir / "run.pid").exists()
