"""Settings for the test suite: the real settings module with test-friendly environment defaults.

Tests run against PostgreSQL by default (``DATABASE_URL``); subprocesses that tests start
(simulator, worker cluster, web server) use this module too, so they see the same database.
"""

import os

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("SECRET_KEY", "genonaut-test-secret")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/genonaut")
# No backend by default: tests that need one start a simulator and point COMFYUI_BACKENDS at it.
os.environ.setdefault("COMFYUI_URL", "http://127.0.0.1:9")
os.environ.setdefault("WEBHOOK_ALLOW_PRIVATE", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")

from genonaut.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
