"""The documented production configuration (deploy/genonaut.env.example) passes Django's deploy
checks, and gunicorn started with deploy/gunicorn.conf.py serves the load balancer's probes."""

import os
import secrets
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


def manage(env, *args, timeout=60):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_check_deploy_is_clean_with_the_documented_settings(tmp_path):
    result = manage(documented_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_catches_a_weakened_setting(tmp_path):
    """The check above really evaluates our environment: turning HTTPS redirect off is reported."""
    result = manage(documented_env(tmp_path, SECURE_SSL_REDIRECT="0"), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    assert "security.W008" in result.stdout + result.stderr


def test_check_deploy_fails_without_a_comfyui_backend(tmp_path):
    env = documented_env(tmp_path)
    del env["COMFYUI_URL"]
    result = manage(env, "check", "--deploy")
    assert result.returncode != 0
    assert "(generation.E001) COMFYUI_URL is not set" in result.stderr


def test_a_worker_without_a_comfyui_backend_refuses_to_start(tmp_path):
    """qcluster runs the system checks too: it exits at once instead of idling with no backend."""
    env = documented_env(tmp_path, REDIS_URL="redis://127.0.0.1:9/0")  # never reached: the check stops it first
    del env["COMFYUI_URL"]
    result = manage(env, "qcluster")
    assert result.returncode != 0
    assert "generation.E001" in result.stderr


def test_documented_env_names_only_variables_settings_reads():
    settings_source = (ROOT / "genonaut" / "settings.py").read_text()
    read_by_boto3 = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key = line.partition("=")[0]
            assert key in read_by_boto3 or f'"{key}"' in settings_source, f"{key} is documented but never read"


def test_systemd_units_run_real_commands_and_files():
    from django.core.management import get_commands

    commands = get_commands()
    units = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
    assert {unit.name for unit in units} >= {"genonaut-web.service", "genonaut-worker.service",
                                              "genonaut-migrate.service"}
    for unit in units:
        text = unit.read_text()
        assert "EnvironmentFile=/etc/genonaut/genonaut.env" in text, unit.name
        for line in text.splitlines():
            if line.startswith(("ExecStart=", "ExecStartPre=")) and "manage.py" in line:
                command = line.split("manage.py", 1)[1].split()[0]
                assert command in commands, f"{unit.name}: manage.py {command} does not exist"
            if line.startswith("ExecStart=") and " -c " in line:
                assert (ROOT / line.split(" -c ", 1)[1].split()[0]).is_file(), f"{unit.name}: config missing"


def test_collectstatic_writes_hashed_names_for_the_proxy(tmp_path):
    result = manage(documented_env(tmp_path), "collectstatic", "--noinput", timeout=120)
    assert result.returncode == 0, result.stderr
    static = tmp_path / "static"
    assert (static / "staticfiles.json").is_file()  # ManifestStaticFilesStorage: names carry a content hash
    hashed = list((static / "admin" / "css").glob("base.*.css"))
    assert hashed, "admin CSS was not collected with a hashed name"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gunicorn_server(tmp_path, settings, django_db_setup, django_db_blocker, simulator):
    """gunicorn with the documented config and env, on the test database and Redis db 13; its backends are
    the simulator and an address where nothing listens."""
    port = _free_port()
    db = settings.DATABASES["default"]
    env = documented_env(tmp_path,
                         DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
                         REDIS_URL=os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/13"),
                         COMFYUI_URL=f"http://127.0.0.1:9,{simulator.url}",
                         GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port} --workers 2")
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "-c", "deploy/gunicorn.conf.py",
                             "genonaut.wsgi"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:  # whatever happens while it boots, the server is stopped below
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                requests.get(base + "/healthz", headers={"Host": "genonaut.example.com"}, timeout=5)
                break
            except (requests.ConnectionError, requests.Timeout):  # still booting (slowly, on a loaded box)
                time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)  # gunicorn commits the backends' rows: flush them afterwards
def test_gunicorn_serves_probes_and_redirects_plain_http(gunicorn_server):
    host = {"Host": "genonaut.example.com"}
    live = requests.get(gunicorn_server + "/healthz", headers=host, timeout=5, allow_redirects=False)
    assert live.status_code == 200 and live.json() == {"status": "ok"}

    ready = requests.get(gunicorn_server + "/readyz", headers=host, timeout=5, allow_redirects=False)
    assert ready.status_code == 200, ready.text  # it asked both backends; the simulator answered
    body = ready.json()
    assert body["database"] == "ok" and body["broker"] == "ok (redis)"
    assert body["backends"]["total"] == 2 and body["backends"]["answering"] == [2]

    # Plain HTTP to anything else is sent to HTTPS; a request the proxy marks https is served.
    page = requests.get(gunicorn_server + "/api/v1/", headers=host, timeout=5, allow_redirects=False)
    assert page.status_code == 301 and page.headers["Location"].startswith("https://genonaut.example.com/")
    proxied = requests.get(gunicorn_server + "/admin/", headers={**host, "X-Forwarded-Proto": "https"},
                           timeout=5, allow_redirects=False)
    assert proxied.status_code == 302 and "/admin/login/" in proxied.headers["Location"]  # log in, not https
    assert "max-age=31536000" in proxied.headers.get("Strict-Transport-Security", "")

    # A host that is not ours is refused.
    assert requests.get(gunicorn_server + "/healthz", headers={"Host": "evil.example"}, timeout=5).status_code == 400
