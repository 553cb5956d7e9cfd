"""A real PgBouncer in transaction mode in front of the test PostgreSQL, on a free loopback port.

- ``pgbouncer_factory(pool_size=…)``: start ``pgbouncer`` (Debian's package; ``scripts/system-deps.sh``
  installs it) with ``pool_mode = transaction`` and ``default_pool_size = pool_size``; stopped after
  the test. The handle has ``.url`` (a ``DATABASE_URL`` for the test database through it) and
  ``.pools()`` (its ``SHOW POOLS`` row for that database: ``cl_active``, ``sv_active``, …).
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

START_TIMEOUT = 15.0
SERVER_STATES = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgBouncer:
    def __init__(self, process, port, database, user, folder):
        self.process, self.port, self.database, self.user, self.folder = process, port, database, user, folder
        self.url = f"postgres://{user}@127.0.0.1:{port}/{database}"

    def admin(self):
        # the admin console speaks the simple query protocol only: psycopg's client-side cursors use it
        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="pgbouncer",
                               autocommit=True, cursor_factory=psycopg.ClientCursor)

    def pools(self, admin):
        """This database's pool: ``SHOW POOLS`` as a dict, plus ``servers`` (connections to PostgreSQL)."""
        cursor = admin.execute("SHOW POOLS")
        names = [column.name for column in cursor.description]
        for row in cursor.fetchall():
            pool = dict(zip(names, row, strict=True))
            if pool["database"] == self.database:
                pool["servers"] = sum(pool.get(state, 0) for state in SERVER_STATES)
                return pool
        return {"cl_active": 0, "cl_waiting": 0, "servers": 0}

    def log(self):
        return (self.folder / "pgbouncer.log").read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@pytest.fixture
def pgbouncer_factory(django_db_setup):
    from django.db import connection

    executable = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(executable).is_file():
        pytest.fail("pgbouncer is not installed: run scripts/system-deps.sh (apt-get install pgbouncer)")
    db = connection.settings_dict
    started = []

    def factory(*, pool_size):
        port = _free_port()
        # not under pytest's tmp_path: as root, pgbouncer runs as nobody, who cannot enter that folder
        folder = Path(tempfile.mkdtemp(prefix=f"pgbouncer-{port}-"))
        (folder / "userlist.txt").write_text(f'"{db["USER"]}" ""\n')
        (folder / "pgbouncer.ini").write_text("\n".join([
            "[databases]",
            f"{db['NAME']} = host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} dbname={db['NAME']}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {folder / 'userlist.txt'}",
            f"admin_users = {db['USER']}",
            "pool_mode = transaction",
            f"default_pool_size = {pool_size}",
            "reserve_pool_size = 0",
            "max_client_conn = 200",
            f"logfile = {folder / 'pgbouncer.log'}",
            "",
        ]))
        command = [executable, str(folder / "pgbouncer.ini")]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            shutil.chown(folder, "nobody")
            command[1:1] = ["-u", "nobody"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        bouncer = PgBouncer(process, port, db["NAME"], db["USER"], folder)
        started.append(bouncer)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return bouncer
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = bouncer.log() if (folder / "pgbouncer.log").exists() else ""
                    raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}") from None
                time.sleep(0.05)

    yield factory
    for bouncer in started:
        bouncer.stop()
        shutil.rmtree(bouncer.folder, ignore_errors=True)
