"""Genonaut settings.

This is the one module that reads the environment. Every variable is listed in
the README's "Configuration" table; app code reads ``settings.*`` only.
"""

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name, default=""):
    return os.environ.get(name, default)


def env_bool(name, default=False):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name, default):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name, default):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc


def env_list(name, default=""):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# Workers claim jobs in read-then-write transactions: IMMEDIATE takes SQLite's write lock at BEGIN
# (so the busy timeout applies instead of an instant "database is locked"), WAL lets readers run
# alongside the writer.
SQLITE_OPTIONS = {"timeout": 20, "transaction_mode": "IMMEDIATE",
                  "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"}


def database_from_url(url, *, data_dir):
    """Turn ``DATABASE_URL`` (sqlite:///path or postgres://user:pw@host:port/db) into Django's dict."""
    if not url:
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": data_dir / "genonaut.sqlite3",
                "OPTIONS": dict(SQLITE_OPTIONS)}
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///relative.db, sqlite:////absolute/path.db (the dj-database-url convention)
        path = unquote(parts.path[1:]) or ":memory:"
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path, "OPTIONS": dict(SQLITE_OPTIONS)}
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "postgres",
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            # a percent-encoded host is a Unix socket directory: postgres://u@%2Frun%2Fpostgresql/db
            "HOST": _database_host(parts),
            "PORT": _database_port(parts),
            "CONN_MAX_AGE": env_int("DATABASE_CONN_MAX_AGE", 60),
            "CONN_HEALTH_CHECKS": True,
            # behind PgBouncer in transaction mode a cursor cannot outlive its transaction (docs/deploy.md);
            # Django already keeps psycopg's prepared statements off, which that mode needs too
            "DISABLE_SERVER_SIDE_CURSORS": env_bool("DATABASE_TRANSACTION_POOLING", False),
            "OPTIONS": options,
        }
    raise ImproperlyConfigured(f"DATABASE_URL scheme {parts.scheme!r} is not supported (use sqlite or postgres)")


def _database_port(parts):
    try:
        return str(parts.port or "")
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL has an invalid port: {exc}") from exc


def _database_host(parts):
    host = parts.netloc.rpartition("@")[2]
    if host.upper().startswith("%2F"):
        return unquote(host)
    return parts.hostname or ""


def comfyui_backends_from_env(urls, *, default_capacity):
    """Parse ``COMFYUI_URL``: comma-separated base URLs, each optionally ``;capacity=N``."""
    backends = []
    for item in urls:
        url, _, options = item.partition(";")
        capacity = default_capacity
        for option in filter(None, options.split(";")):
            key, _, value = option.partition("=")
            if key.strip() != "capacity" or not value.strip().isdigit() or int(value) < 1:
                raise ImproperlyConfigured(f"COMFYUI_URL option {option!r} is not understood (use ;capacity=N)")
            capacity = int(value)
        parts = urlsplit(url.strip())
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ImproperlyConfigured(f"COMFYUI_URL entry {url!r} is not an http(s) URL")
        backends.append({"url": url.strip().rstrip("/"), "capacity": capacity})
    return backends


# --- core ---------------------------------------------------------------------------------

DEBUG = env_bool("DEBUG", False)
DATA_DIR = Path(env_str("GENONAUT_DATA_DIR", str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "genonaut-development-only-key-never-use-in-production-0123456789"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our static files: /api/docs/ works offline, no CDN
    "django_q",
    "models_registry",
    "generation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "genonaut.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "generation.login_guard.LoginLockoutMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "genonaut.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "genonaut.wsgi.application"
ASGI_APPLICATION = "genonaut.asgi.application"

DATABASES = {"default": database_from_url(env_str("DATABASE_URL"), data_dir=DATA_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Every password check (API token, /accounts/login/, /admin/login/) goes through the login guard:
# failed attempts per client address and per username, with growing lockouts (docs/security.md).
AUTHENTICATION_BACKENDS = ["generation.login_guard.GuardedModelBackend"]
LOGIN_GUARD = {
    "FAILURES_PER_ACCOUNT": env_int("LOGIN_FAILURES_PER_ACCOUNT", 10),
    "FAILURES_PER_ADDRESS": env_int("LOGIN_FAILURES_PER_ADDRESS", 30),
    "LOCKOUT_SECONDS": env_int("LOGIN_LOCKOUT_SECONDS", 60),  # the first lockout; each further one doubles
    "LOCKOUT_MAX_SECONDS": env_int("LOGIN_LOCKOUT_MAX_SECONDS", 3600),
}
# Session keys are checked before they reach the database (a NUL byte is a 500 on PostgreSQL).
SESSION_ENGINE = "genonaut.sessions"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
FORMAT_MODULE_PATH = ["genonaut.formats"]  # compact dates (admin lists fit a laptop screen)
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# --- static and media files ----------------------------------------------------------------

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(DATA_DIR / "staticfiles")))
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(DATA_DIR / "media")))
MEDIA_URL = "/media/"  # never served directly: image views check the owner

STORAGE_BACKEND = env_str("STORAGE_BACKEND", "local")
if STORAGE_BACKEND == "s3":
    AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME")
    if not AWS_STORAGE_BUCKET_NAME:
        raise ImproperlyConfigured("STORAGE_BACKEND=s3 needs AWS_STORAGE_BUCKET_NAME")
    AWS_S3_ENDPOINT_URL = env_str("AWS_S3_ENDPOINT_URL") or None
    AWS_S3_REGION_NAME = env_str("AWS_S3_REGION_NAME") or None
    AWS_DEFAULT_ACL = None
    AWS_QUERYSTRING_AUTH = True
    AWS_QUERYSTRING_EXPIRE = env_int("AWS_QUERYSTRING_EXPIRE", 300)
    AWS_S3_FILE_OVERWRITE = False
    default_storage = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {}}
elif STORAGE_BACKEND == "local":
    default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage",
                       "OPTIONS": {"location": str(MEDIA_ROOT)}}
else:
    raise ImproperlyConfigured(f"STORAGE_BACKEND must be 'local' or 's3', got {STORAGE_BACKEND!r}")

STORAGES = {
    "default": default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
                    if DEBUG else "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}

DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 256 * 1024)
DATA_UPLOAD_MAX_NUMBER_FIELDS = 200

# --- security (production-safe unless DEBUG) -----------------------------------------------

SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
# The one proxy switch: with it on, Django trusts X-Forwarded-Proto and takes the client address from
# X-Forwarded-For as appended by TRUSTED_PROXY_COUNT proxies; with it off, no X-Forwarded-* header
# is read at all (gunicorn trusts none either: deploy/gunicorn.conf.py).
BEHIND_TLS_PROXY = env_bool("BEHIND_TLS_PROXY", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_TLS_PROXY else None
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 1 if BEHIND_TLS_PROXY else 0)
if BEHIND_TLS_PROXY and TRUSTED_PROXY_COUNT < 1:
    raise ImproperlyConfigured("BEHIND_TLS_PROXY=1 needs TRUSTED_PROXY_COUNT >= 1 (the proxies that append "
                               "to X-Forwarded-For), or every client would share the proxy's address")
if not BEHIND_TLS_PROXY and TRUSTED_PROXY_COUNT:
    raise ImproperlyConfigured("TRUSTED_PROXY_COUNT is only read behind a proxy: set BEHIND_TLS_PROXY=1 too")
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
X_FRAME_OPTIONS = "DENY"
# Pages load scripts, styles, images and fonts from this site only (genonaut.csp adds the storage's
# origin to img-src when images are served from S3 by signed-URL redirects).
CONTENT_SECURITY_POLICY = {
    "default-src": ["'self'"],
    "img-src": ["'self'", "data:"],  # Swagger UI's icons are data: SVGs (an image runs no script)
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
# /api/schema/ and /api/docs/: open to anyone in development, to logged-in users in production.
API_DOCS_PUBLIC = env_bool("API_DOCS_PUBLIC", DEBUG)
# How long an Idempotency-Key is remembered (generation/idempotency.py).
IDEMPOTENCY_KEY_HOURS = env_int("IDEMPOTENCY_KEY_HOURS", 24)

# --- REST framework -------------------------------------------------------------------------

REST_FRAMEWORK = {
    # Token first: an anonymous API call then answers 401 with WWW-Authenticate, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "generation.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {"submit": env_str("SUBMIT_THROTTLE_RATE", "120/min"),
                               "auth": env_str("AUTH_THROTTLE_RATE", "30/min")},
    "EXCEPTION_HANDLER": "generation.api.errors.exception_handler",
    # the client address of throttles: REMOTE_ADDR, or the X-Forwarded-For entry our proxies appended
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Genonaut API",
    "DESCRIPTION": "Generate images on ComfyUI backends: submit, follow, cancel, browse, download.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # the submit body is one schema per workflow, generated from the workflows' definitions
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "generation.api.schema.add_workflow_bodies"],
    "SERVE_PERMISSIONS": ["genonaut.api_docs.DocsAccess"],  # API_DOCS_PUBLIC
}

# --- ComfyUI backends -----------------------------------------------------------------------

SIMULATOR_HOST = env_str("SIMULATOR_HOST", "127.0.0.1")
SIMULATOR_PORT = env_int("SIMULATOR_PORT", 8188)
SIMULATOR_STEP_TIME = env_float("SIMULATOR_STEP_TIME", 0.05)  # seconds per sampler step
SIMULATOR_LOAD_TIME = env_float("SIMULATOR_LOAD_TIME", 2.0)  # seconds to switch checkpoints
try:  # faults the simulator starts with, e.g. {"execution_error_rate": 0.05} (see docs/simulator.md)
    SIMULATOR_FAULTS = json.loads(env_str("SIMULATOR_FAULTS") or "{}")
except ValueError as exc:
    raise ImproperlyConfigured(f"SIMULATOR_FAULTS is not JSON: {exc}")
COMFYUI_DEFAULT_CAPACITY = env_int("COMFYUI_CAPACITY", 2)  # 1 running + 1 waiting on ComfyUI's own queue
_comfyui_urls = env_list("COMFYUI_URL")
# Without COMFYUI_URL, development points at the bundled simulator; production refuses to start
# (see generation.checks), so the simulator is never a silent fallback.
USING_SIMULATOR = not _comfyui_urls
if USING_SIMULATOR and DEBUG:
    _comfyui_urls = [f"http://{SIMULATOR_HOST}:{SIMULATOR_PORT}"]
COMFYUI_BACKENDS = comfyui_backends_from_env(_comfyui_urls, default_capacity=COMFYUI_DEFAULT_CAPACITY)
COMFYUI_MODELS_DIR = env_str("COMFYUI_MODELS_DIR")  # ComfyUI's models/ folder, when mounted here
COMFYUI_CHECKPOINTS_DIRS = env_list("COMFYUI_CHECKPOINTS_DIRS")  # extra folders (extra_model_paths)
COMFYUI_LORAS_DIRS = env_list("COMFYUI_LORAS_DIRS")
COMFYUI_UPSCALE_MODELS_DIRS = env_list("COMFYUI_UPSCALE_MODELS_DIRS")
COMFYUI_TIMEOUT = env_float("COMFYUI_TIMEOUT", 10.0)  # seconds for one HTTP call
COMFYUI_OBJECT_INFO_TTL = env_float("COMFYUI_OBJECT_INFO_TTL", 60.0)

# --- generation policy ----------------------------------------------------------------------

GENERATION = {
    "MAX_ACTIVE_PER_USER": env_int("MAX_ACTIVE_PER_USER", 50),  # pending + queued + running
    "MAX_PROMPT_LENGTH": env_int("MAX_PROMPT_LENGTH", 4000),
    "MAX_BATCH_SIZE": env_int("MAX_BATCH_SIZE", 8),
    "MAX_LORAS": env_int("MAX_LORAS", 8),
    "MAX_STEPS": env_int("MAX_STEPS", 150),
    "MAX_PIXELS": env_int("MAX_PIXELS", 2048 * 2048),  # generated sizes and input images
    "MAX_UPSCALE_PIXELS": env_int("MAX_UPSCALE_PIXELS", 4096 * 4096),  # what the upscale workflow may produce
    "INPUT_MAX_BYTES": env_int("INPUT_MAX_BYTES", 20 * 1024 * 1024),  # one input image, as sent
    "INPUT_URL_TIMEOUT": env_float("INPUT_URL_TIMEOUT", 10.0),  # seconds to fetch an input_image_url in all
    "JOB_DEADLINE_SECONDS": env_int("JOB_DEADLINE_SECONDS", 600),
    "MAX_ATTEMPTS": env_int("MAX_ATTEMPTS", 3),
    "HEARTBEAT_SECONDS": env_float("HEARTBEAT_SECONDS", 0.5),
    "STALE_HEARTBEAT_SECONDS": env_int("STALE_HEARTBEAT_SECONDS", 30),
    # ComfyUI runs the prompt but nothing moved (no progress, no node change) this long: interrupt, retry
    "STALL_SECONDS": env_float("STALL_SECONDS", 120.0),
    "REQUEUE_BACKOFF_SECONDS": env_float("REQUEUE_BACKOFF_SECONDS", 2.0),  # then doubling per attempt
    "REQUEUE_BACKOFF_MAX_SECONDS": env_float("REQUEUE_BACKOFF_MAX_SECONDS", 60.0),
    "STORAGE_RETRIES": env_int("STORAGE_RETRIES", 3),  # retries of storing a finished job's images
    "STORAGE_RETRY_SECONDS": env_float("STORAGE_RETRY_SECONDS", 1.0),  # then doubling per retry
    "BACKEND_BACKOFF_MAX_SECONDS": env_int("BACKEND_BACKOFF_MAX_SECONDS", 60),
    "AFFINITY": env_bool("DISPATCH_AFFINITY", True),
    "AFFINITY_MAX_SKIPS": env_int("AFFINITY_MAX_SKIPS", 8),
    "RETENTION_DAYS": env_int("RETENTION_DAYS", 0),  # 0 keeps files forever
    "WEBHOOK_ALLOW_PRIVATE": env_bool("WEBHOOK_ALLOW_PRIVATE", False),
    "WEBHOOK_MAX_ATTEMPTS": env_int("WEBHOOK_MAX_ATTEMPTS", 5),
    "WEBHOOK_BACKOFF_SECONDS": env_int("WEBHOOK_BACKOFF_SECONDS", 30),  # then ×4 per attempt, capped at 1 h
    "WEBHOOK_TIMEOUT": env_float("WEBHOOK_TIMEOUT", 5.0),  # seconds to connect and to read the answer
    "THUMBNAIL_SIZES": {"small": 128, "medium": 384, "large": 768},
}

# --- live events (generation/live/) -----------------------------------------------------------

LIVE = {
    # how events reach the web process holding a stream: auto = Redis pub/sub with REDIS_URL, else
    # PostgreSQL LISTEN/NOTIFY on a direct PostgreSQL connection, else polling the database
    "FANOUT": env_str("LIVE_FANOUT", "auto"),
    "POLL_SECONDS": env_float("LIVE_POLL_SECONDS", 0.25),  # polling fan-out: how often the database is read
    "HEARTBEAT_SECONDS": env_float("LIVE_HEARTBEAT_SECONDS", 15.0),  # comment line on an idle stream
    "STREAM_MAX_SECONDS": env_float("LIVE_STREAM_MAX_SECONDS", 1800.0),  # then closed; the client resumes
    "EVENT_RETENTION_HOURS": env_int("LIVE_EVENT_RETENTION_HOURS", 48),  # Last-Event-ID older than that: fresh state
    "DB_THREADS": env_int("LIVE_DB_THREADS", 4),  # an ASGI process's threads (and connections) for its streams
    # latent previews: ComfyUI's preview method per prompt (none: no previews), at most one kept every
    # PREVIEW_INTERVAL seconds per running request, for PREVIEW_TTL_SECONDS
    "PREVIEW_METHOD": env_str("PREVIEW_METHOD", "latent2rgb"),
    "PREVIEW_INTERVAL": env_float("PREVIEW_INTERVAL", 0.25),
    "PREVIEW_TTL_SECONDS": env_int("PREVIEW_TTL_SECONDS", 120),
}
if LIVE["DB_THREADS"] < 1:
    raise ImproperlyConfigured("LIVE_DB_THREADS must be at least 1")
if LIVE["FANOUT"] not in ("auto", "redis", "postgres", "poll"):
    raise ImproperlyConfigured(f"LIVE_FANOUT must be auto, redis, postgres or poll, got {LIVE['FANOUT']!r}")
if LIVE["PREVIEW_METHOD"] not in ("none", "auto", "latent2rgb", "taesd"):
    raise ImproperlyConfigured(
        f"PREVIEW_METHOD must be none, auto, latent2rgb or taesd, got {LIVE['PREVIEW_METHOD']!r}")

# --- Django-Q2: a cluster per role, each consuming its own queue ---------------------------------------

def queues_for(site):
    """``{role: queue}`` of the site named ``site`` (``Q_CLUSTER_NAME``)."""
    return {"jobs": f"{site}-jobs", "housekeeping": site, "webhooks": f"{site}-webhooks"}


REDIS_URL = env_str("REDIS_URL")
_q_name = env_str("Q_CLUSTER_NAME", "genonaut")
# Job work (dispatch: one worker per running job), housekeeping (reconcile, resume, backend probes,
# registry jobs) and webhook delivery each have a queue and a cluster of their own, so slow webhooks or a
# long registry job never hold up a dispatch or a recovery. Housekeeping keeps the site's name: Django-Q
# runs a schedule that names no cluster in the cluster called like the site (docs/deploy.md § 6).
Q_QUEUES = queues_for(_q_name)
Q_ROLE = env_str("Q_ROLE", "jobs")  # which queue `manage.py qcluster` serves
if Q_ROLE not in Q_QUEUES:
    raise ImproperlyConfigured(f"Q_ROLE must be one of {', '.join(Q_QUEUES)}, got {Q_ROLE!r}")
_job_timeout = GENERATION["JOB_DEADLINE_SECONDS"] + 120
Q_ROLE_OPTIONS = {
    # one worker per job the backends may hold, plus two: a job storing its images has already freed its slot
    "jobs": {"workers": env_int("Q_WORKERS", sum(b["capacity"] for b in COMFYUI_BACKENDS) + 2),
             "timeout": _job_timeout},
    # a resumed job holds its worker until the job ends, as a dispatched one does; hashing reads whole files
    "housekeeping": {"workers": env_int("Q_HOUSEKEEPING_WORKERS", 4), "timeout": _job_timeout},
    # a delivery ends within 2 × WEBHOOK_TIMEOUT (netguard's total cap)
    "webhooks": {"workers": env_int("Q_WEBHOOK_WORKERS", 4), "timeout": int(2 * GENERATION["WEBHOOK_TIMEOUT"]) + 30},
}
for _variable, _role in (("Q_WORKERS", "jobs"), ("Q_HOUSEKEEPING_WORKERS", "housekeeping"),
                         ("Q_WEBHOOK_WORKERS", "webhooks")):
    if Q_ROLE_OPTIONS[_role]["workers"] < 1:
        raise ImproperlyConfigured(f"{_variable} must be at least 1")
Q_CLUSTER = {
    "name": _q_name,
    "cluster_name": Q_QUEUES[Q_ROLE],
    "workers": Q_ROLE_OPTIONS[Q_ROLE]["workers"],
    "timeout": Q_ROLE_OPTIONS[Q_ROLE]["timeout"],
    # retry counts from dequeue, prefetch included, so it must clear timeout with room to spare.
    "retry": Q_ROLE_OPTIONS[Q_ROLE]["timeout"] + 300,
    "max_attempts": 3,
    "queue_limit": env_int("Q_QUEUE_LIMIT", 4),
    "bulk": 1,
    "catch_up": False,
    "save_limit": env_int("Q_SAVE_LIMIT", 1000),
    "ack_failures": True,
    "label": "Django Q2",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["poll"] = env_float("Q_POLL", 0.2)
    if DATABASES["default"]["ENGINE"].endswith("postgresql") and not env_bool("DATABASE_TRANSACTION_POOLING"):
        # wakes the pusher by NOTIFY instead of its poll (LISTEN needs a direct connection, not PgBouncer's)
        Q_CLUSTER["broker_class"] = "generation.broker.NotifyingORM"

# /metrics (generation/metrics.py): readable by staff, and by a scraper sending "Authorization: Bearer <this>"
METRICS_TOKEN = env_str("METRICS_TOKEN")

# Throttle and login counters live in the database (generation/throttling.py, login_guard.py), so they
# hold across web processes with or without Redis; the cache only speeds things up.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "KEY_PREFIX": "genonaut", "TIMEOUT": 300}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- logging --------------------------------------------------------------------------------

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
