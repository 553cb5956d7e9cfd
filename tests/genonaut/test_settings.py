"""Settings parsing: every environment variable is read in genonaut/settings.py; bad values fail
loudly at start-up with ImproperlyConfigured naming the variable, never later at first use."""

import runpy
from pathlib import Path
from unittest import mock

import pytest
from django.core.exceptions import ImproperlyConfigured

from genonaut import settings as genonaut_settings
from genonaut.settings import comfyui_backends_from_env, database_from_url

SETTINGS_FILE = genonaut_settings.__file__


def load_settings(tmp_path, **env):
    """Execute genonaut/settings.py afresh with exactly ``env`` (plus a data dir); return its namespace."""
    base = {"GENONAUT_DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "s" * 50, "COMFYUI_URL": "http://gpu1:8188"}
    base.update(env)
    environ = {key: value for key, value in base.items() if value is not None}
    with mock.patch.dict("os.environ", environ, clear=True):
        return runpy.run_path(SETTINGS_FILE, run_name="genonaut_settings_under_test")


# --- DATABASE_URL ---------------------------------------------------------------------------

def test_database_url_empty_means_sqlite_in_data_dir(tmp_path):
    db = database_from_url("", data_dir=tmp_path)
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == tmp_path / "genonaut.sqlite3"


@pytest.mark.parametrize(("url", "name"), [
    ("sqlite:///relative.db", "relative.db"),
    ("sqlite:////var/lib/genonaut/db.sqlite3", "/var/lib/genonaut/db.sqlite3"),
    ("sqlite://", ":memory:"),
])
def test_database_url_sqlite_paths(tmp_path, url, name):
    assert database_from_url(url, data_dir=tmp_path)["NAME"] == name


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "pgsql"])
def test_database_url_postgres_full(tmp_path, scheme):
    db = database_from_url(f"{scheme}://gen:p%40ss%2Fword@db.internal:6543/genonaut?sslmode=require&connect_timeout=5",
                           data_dir=tmp_path)
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
        "genonaut", "gen", "p@ss/word", "db.internal", "6543")
    assert db["OPTIONS"] == {"sslmode": "require", "connect_timeout": "5"}
    assert db["CONN_HEALTH_CHECKS"] is True  # a connection dropped by the server is replaced, not reused


def test_database_url_postgres_unix_socket(tmp_path):
    db = database_from_url("postgres://gen@%2Fvar%2Frun%2FpostgreSQL/genonaut", data_dir=tmp_path)
    assert db["HOST"] == "/var/run/postgreSQL"  # case kept: it is a path
    assert db["PORT"] == ""
    via_query = database_from_url("postgres:///genonaut?host=/run/postgresql", data_dir=tmp_path)
    assert via_query["OPTIONS"] == {"host": "/run/postgresql"} and via_query["NAME"] == "genonaut"


def test_database_url_defaults_database_name(tmp_path):
    assert database_from_url("postgres://db.internal", data_dir=tmp_path)["NAME"] == "postgres"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "redis://h/0", "postgres://u@h:notaport/db"])
def test_database_url_bad_values_name_the_variable(tmp_path, url):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        database_from_url(url, data_dir=tmp_path)


def test_conn_max_age_from_environment(tmp_path):
    ns = load_settings(tmp_path, DATABASE_URL="postgres://u@h/db", DATABASE_CONN_MAX_AGE="0")
    assert ns["DATABASES"]["default"]["CONN_MAX_AGE"] == 0


# --- COMFYUI_URL ------------------------------------------------------------------------------

def test_comfyui_urls_with_capacities():
    backends = comfyui_backends_from_env(
        ["http://gpu1:8188;capacity=3", "https://gpu2.example.com/comfy/", "http://10.0.0.3:8188; capacity=1"],
        default_capacity=2)
    assert backends == [
        {"url": "http://gpu1:8188", "capacity": 3},
        {"url": "https://gpu2.example.com/comfy", "capacity": 2},
        {"url": "http://10.0.0.3:8188", "capacity": 1},
    ]


@pytest.mark.parametrize("item", [
    "http://gpu1:8188;capacity=0", "http://gpu1:8188;capacity=two", "http://gpu1:8188;weight=2",
    "gpu1:8188", "ftp://gpu1:8188", "http://",
])
def test_comfyui_bad_entries_name_the_variable(item):
    with pytest.raises(ImproperlyConfigured, match="COMFYUI_URL"):
        comfyui_backends_from_env([item], default_capacity=2)


def test_comfyui_url_list_from_environment_sizes_the_worker_pool(tmp_path):
    ns = load_settings(tmp_path, COMFYUI_URL="http://a:1;capacity=3, http://b:2 ,,http://c:3", COMFYUI_CAPACITY="4")
    assert [(b["url"], b["capacity"]) for b in ns["COMFYUI_BACKENDS"]] == [
        ("http://a:1", 3), ("http://b:2", 4), ("http://c:3", 4)]
    assert ns["Q_CLUSTER"]["workers"] == 13  # jobs: one worker per job a backend may hold, plus two


def test_production_without_comfyui_url_has_no_backends_and_no_simulator(tmp_path):
    ns = load_settings(tmp_path, COMFYUI_URL=None)
    assert ns["USING_SIMULATOR"] is True
    assert ns["COMFYUI_BACKENDS"] == []  # never silently pointed at the simulator


def test_debug_without_comfyui_url_points_at_the_simulator(tmp_path):
    ns = load_settings(tmp_path, COMFYUI_URL=None, DEBUG="1", SIMULATOR_PORT="8299")
    assert ns["COMFYUI_BACKENDS"] == [{"url": "http://127.0.0.1:8299", "capacity": 2}]


# --- broker, storage, secrets, numbers --------------------------------------------------------

def test_redis_url_selects_the_redis_broker(tmp_path):
    ns = load_settings(tmp_path, REDIS_URL="redis://:pw@redis.internal:6379/0", Q_WORKERS="6")
    q = ns["Q_CLUSTER"]
    assert q["redis"] == "redis://:pw@redis.internal:6379/0" and "orm" not in q
    assert q["workers"] == 6
    assert q["retry"] > q["timeout"] > ns["GENERATION"]["JOB_DEADLINE_SECONDS"]
    assert q["max_attempts"] >= 1


def test_each_role_has_its_own_queue_workers_and_timeout(tmp_path):
    queues = {"jobs": "site-jobs", "housekeeping": "site", "webhooks": "site-webhooks"}
    for role, workers in (("jobs", 6), ("housekeeping", 3), ("webhooks", 5)):
        ns = load_settings(tmp_path, Q_ROLE=role, Q_CLUSTER_NAME="site", Q_WORKERS="6", Q_HOUSEKEEPING_WORKERS="3",
                           Q_WEBHOOK_WORKERS="5", WEBHOOK_TIMEOUT="5")
        q = ns["Q_CLUSTER"]
        assert ns["Q_QUEUES"] == queues
        # the site name signs task payloads: the same in every role; the cluster name is the role's queue
        assert (q["name"], q["cluster_name"], q["workers"]) == ("site", queues[role], workers)
        assert q["retry"] > q["timeout"]
    assert q["timeout"] == 40  # webhooks: a delivery ends within 2 × WEBHOOK_TIMEOUT
    assert load_settings(tmp_path)["Q_CLUSTER"]["cluster_name"] == "genonaut-jobs"  # no Q_ROLE: a jobs cluster


def test_without_redis_url_the_orm_broker_is_used(tmp_path):
    q = load_settings(tmp_path)["Q_CLUSTER"]
    assert q["orm"] == "default" and "redis" not in q
    assert q["retry"] > q["timeout"]


def test_s3_storage_from_environment(tmp_path):
    ns = load_settings(tmp_path, STORAGE_BACKEND="s3", AWS_STORAGE_BUCKET_NAME="imgs",
                       AWS_S3_ENDPOINT_URL="http://minio:9000", AWS_S3_REGION_NAME="eu-west-1",
                       AWS_QUERYSTRING_EXPIRE="120")
    assert ns["STORAGES"]["default"]["BACKEND"] == "storages.backends.s3.S3Storage"
    assert (ns["AWS_STORAGE_BUCKET_NAME"], ns["AWS_S3_ENDPOINT_URL"], ns["AWS_S3_REGION_NAME"]) == (
        "imgs", "http://minio:9000", "eu-west-1")
    assert ns["AWS_QUERYSTRING_AUTH"] is True and ns["AWS_QUERYSTRING_EXPIRE"] == 120
    assert ns["AWS_S3_FILE_OVERWRITE"] is False  # a retried job never overwrites another's image


def test_production_static_files_are_hashed(tmp_path):
    ns = load_settings(tmp_path, STATIC_ROOT=str(tmp_path / "static"))
    assert ns["STORAGES"]["staticfiles"]["BACKEND"].endswith("ManifestStaticFilesStorage")
    assert ns["STATIC_ROOT"] == tmp_path / "static"


@pytest.mark.parametrize(("env", "variable"), [
    ({"SECRET_KEY": None}, "SECRET_KEY"),
    ({"SECRET_KEY": ""}, "SECRET_KEY"),
    ({"STORAGE_BACKEND": "ftp"}, "STORAGE_BACKEND"),
    ({"STORAGE_BACKEND": "s3"}, "AWS_STORAGE_BUCKET_NAME"),
    ({"Q_WORKERS": "many"}, "Q_WORKERS"),
    ({"JOB_DEADLINE_SECONDS": "10m"}, "JOB_DEADLINE_SECONDS"),
    ({"COMFYUI_TIMEOUT": "fast"}, "COMFYUI_TIMEOUT"),
    ({"SECURE_HSTS_SECONDS": "1 year"}, "SECURE_HSTS_SECONDS"),
    ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL"),
    ({"COMFYUI_URL": "http://gpu1:8188;capacity=-1"}, "COMFYUI_URL"),
    ({"Q_ROLE": "everything"}, "Q_ROLE"),
    ({"Q_WEBHOOK_WORKERS": "0"}, "Q_WEBHOOK_WORKERS"),
    ({"Q_HOUSEKEEPING_WORKERS": "-1"}, "Q_HOUSEKEEPING_WORKERS"),
])
def test_bad_environment_fails_at_start_naming_the_variable(tmp_path, env, variable):
    with pytest.raises(ImproperlyConfigured, match=variable):
        load_settings(tmp_path, **env)


def test_debug_off_is_secure_by_default(tmp_path):
    ns = load_settings(tmp_path, BEHIND_TLS_PROXY="1")
    assert ns["DEBUG"] is False
    assert ns["SESSION_COOKIE_SECURE"] and ns["CSRF_COOKIE_SECURE"] and ns["SECURE_SSL_REDIRECT"]
    assert ns["SECURE_HSTS_SECONDS"] >= 31536000
    assert ns["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert ns["ALLOWED_HOSTS"] == []  # must be set explicitly in production
    # load balancer probes over plain HTTP are not redirected
    assert {"^healthz$", "^readyz$"} <= set(ns["SECURE_REDIRECT_EXEMPT"])


def test_data_dir_is_created(tmp_path):
    ns = load_settings(tmp_path)
    assert Path(ns["DATA_DIR"]).is_dir()


# --- the proxy switch, the login guard, the docs ----------------------------------------------


def test_without_a_proxy_no_forwarded_header_is_trusted(tmp_path):
    namespace = load_settings(tmp_path, DEBUG="0")
    assert namespace["SECURE_PROXY_SSL_HEADER"] is None
    assert namespace["TRUSTED_PROXY_COUNT"] == 0 and namespace["REST_FRAMEWORK"]["NUM_PROXIES"] == 0


def test_behind_a_proxy_one_proxy_is_trusted_by_default(tmp_path):
    namespace = load_settings(tmp_path, DEBUG="0", BEHIND_TLS_PROXY="1")
    assert namespace["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert namespace["TRUSTED_PROXY_COUNT"] == 1 and namespace["REST_FRAMEWORK"]["NUM_PROXIES"] == 1
    assert load_settings(tmp_path, BEHIND_TLS_PROXY="1", TRUSTED_PROXY_COUNT="2")["TRUSTED_PROXY_COUNT"] == 2


@pytest.mark.parametrize("env", [{"TRUSTED_PROXY_COUNT": "1"}, {"BEHIND_TLS_PROXY": "1", "TRUSTED_PROXY_COUNT": "0"}])
def test_proxy_settings_that_contradict_each_other_fail_at_start(tmp_path, env):
    with pytest.raises(ImproperlyConfigured, match="TRUSTED_PROXY_COUNT"):
        load_settings(tmp_path, **env)


def test_login_guard_and_docs_from_environment(tmp_path):
    namespace = load_settings(tmp_path, DEBUG="0", LOGIN_FAILURES_PER_ACCOUNT="5", LOGIN_FAILURES_PER_ADDRESS="50",
                              LOGIN_LOCKOUT_SECONDS="30", LOGIN_LOCKOUT_MAX_SECONDS="600", IDEMPOTENCY_KEY_HOURS="48")
    assert namespace["LOGIN_GUARD"] == {"FAILURES_PER_ACCOUNT": 5, "FAILURES_PER_ADDRESS": 50, "LOCKOUT_SECONDS": 30,
                                        "LOCKOUT_MAX_SECONDS": 600}
    assert namespace["IDEMPOTENCY_KEY_HOURS"] == 48
    assert namespace["API_DOCS_PUBLIC"] is False  # production: logged-in users only
    assert load_settings(tmp_path, DEBUG="1")["API_DOCS_PUBLIC"] is True
    assert load_settings(tmp_path, DEBUG="0", API_DOCS_PUBLIC="1")["API_DOCS_PUBLIC"] is True
