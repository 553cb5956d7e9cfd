"""gunicorn settings for a Genonaut web host: ``gunicorn -c deploy/gunicorn.conf.py genonaut.wsgi``.

Behind nginx (deploy/nginx.conf), which buffers requests and responses and serves /static/
itself, so gunicorn's synchronous workers never wait on a slow client. Override any value
per host with gunicorn's own ``GUNICORN_CMD_ARGS`` (e.g. ``--workers 3``), not by editing here.
"""

import multiprocessing

# nginx on the same host talks to this port.
bind = "127.0.0.1:8000"
# One switch, in Django: BEHIND_TLS_PROXY (and TRUSTED_PROXY_COUNT) say whether X-Forwarded-Proto
# and X-Forwarded-For are believed. gunicorn trusts no proxy, so it never marks a request https
# on its own (it used to, from 127.0.0.1, even with BEHIND_TLS_PROXY off).
forwarded_allow_ips = ""
secure_scheme_headers = {}

# Requests are short database reads/writes (generation runs in the Django-Q workers), so the classic
# 2 x cores + 1 sync workers keep the CPU busy; each costs ~75 MiB RSS, ~57 MiB PSS (bench/README.md).
workers = multiprocessing.cpu_count() * 2 + 1
worker_class = "sync"
# Import the app once in the master: faster restarts and copy-on-write memory sharing. Django opens
# no database connection at import, so nothing is shared across the fork.
preload_app = True

# A request taking longer than this is a bug or a stuck dependency: the worker is replaced.
timeout = 30
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so a slow leak in any library cannot grow without bound.
max_requests = 2000
max_requests_jitter = 200

# Access and error logs on stdout/stderr, collected by journald next to Django's own log lines.
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
capture_output = True
