"""The documented production configuration (deploy/genonaut.env.example) passes Django's deploy
checks, and gunicorn started with deploy/gunicorn.conf.py serves the load balancer's probes."""

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.plugins.gunicorn import ENV_EXAMPLE, documented_env

ROOT = Path(__file__).resolve().parents[2]


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
    assert {unit.name for unit in units} >= {"genonaut-web.service", "genonaut-worker@.service",
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


def test_the_worker_template_runs_every_role_its_comment_names(tmp_path):
    from django.conf import settings

    text = (ROOT / "deploy" / "systemd" / "genonaut-worker@.service").read_text()
    assert "Environment=Q_ROLE=%i" in text
    enable = next(line for line in text.splitlines() if "systemctl enable" in line)
    assert sorted(word.split("@", 1)[1] for word in enable.split() if "@" in word) == sorted(settings.Q_QUEUES)
    for role in settings.Q_QUEUES:  # each instance's environment is a valid configuration
        result = manage({**documented_env(tmp_path), "Q_ROLE": role}, "check", "--deploy", "--fail-level", "WARNING")
        assert result.returncode == 0, result.stderr


def test_collectstatic_writes_hashed_names_for_the_proxy(tmp_path):
    result = manage(documented_env(tmp_path), "collectstatic", "--noinput", timeout=120)
    assert result.returncode == 0, result.stderr
    static = tmp_path / "static"
    assert (static / "staticfiles.json").is_file()  # ManifestStaticFilesStorage: names carry a content hash
    hashed = list((static / "admin" / "css").glob("base.*.css"))
    assert hashed, "admin CSS was not collected with a hashed name"


@pytest.fixture
def gunicorn_server(start_gunicorn, simulator):
    """gunicorn with the documented config and env, on the test database and Redis; its backends are
    the simulator and an address where nothing listens."""
    return start_gunicorn(workers=2, COMFYUI_URL=f"http://127.0.0.1:9,{simulator.url}")[0]


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
