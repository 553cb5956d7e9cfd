"""Connection pooling: workers reach PostgreSQL through a real PgBouncer in transaction mode
(DATABASE_TRANSACTION_POOLING=1), many client connections share a few server connections, and the
whole pipeline (ORM broker, claims under SELECT … FOR UPDATE, progress, storing) works through it."""

import threading
import time

import pytest

from generation.models import GenerationRequest
from generation.services import submit_generation
from generation.states import Status

POOL_SIZE = 2
WORKERS = 8
REQUESTS = 24


def test_transaction_pooling_turns_server_side_cursors_off(tmp_path):
    from tests.genonaut.test_settings import load_settings

    url = "postgres://genonaut@pgbouncer.internal:6432/genonaut"
    pooled = load_settings(tmp_path, DATABASE_URL=url, DATABASE_TRANSACTION_POOLING="1")["DATABASES"]["default"]
    assert pooled["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert "prepare_threshold" not in pooled["OPTIONS"]  # Django's default for psycopg 3: no prepared statements
    direct = load_settings(tmp_path, DATABASE_URL=url)["DATABASES"]["default"]
    assert direct["DISABLE_SERVER_SIDE_CURSORS"] is False


class PoolSampler(threading.Thread):
    """Reads PgBouncer's SHOW POOLS every 20 ms; keeps the largest client and server counts seen."""

    def __init__(self, bouncer):
        super().__init__(daemon=True)
        self.bouncer, self.stop = bouncer, threading.Event()
        self.max_clients = self.max_servers = self.max_waiting = 0

    def run(self):
        with self.bouncer.admin() as admin:
            while not self.stop.is_set():
                pool = self.bouncer.pools(admin)
                self.max_clients = max(self.max_clients, pool["cl_active"] + pool["cl_waiting"])
                self.max_waiting = max(self.max_waiting, pool["cl_waiting"])
                self.max_servers = max(self.max_servers, pool["servers"])
                self.stop.wait(0.02)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_workers_share_a_small_server_pool_through_pgbouncer(pgbouncer_factory, simulator_factory, cluster_factory,
                                                             user, valid_params):
    bouncer = pgbouncer_factory(pool_size=POOL_SIZE)
    backends = [(simulator_factory().url, WORKERS // 2), (simulator_factory().url, WORKERS // 2)]
    sampler = PoolSampler(bouncer)
    sampler.start()
    # persistent client connections (CONN_MAX_AGE) as in production: PgBouncer, not Django, multiplexes them
    cluster_factory(backends, workers=WORKERS, generation={"MAX_ACTIVE_PER_USER": REQUESTS},
                    env={"DATABASE_URL": bouncer.url, "DATABASE_TRANSACTION_POOLING": "1",
                         "DATABASE_CONN_MAX_AGE": "60"})
    ids = [submit_generation(user=user, data={**valid_params, "sampler_params": {
        **valid_params["sampler_params"], "seed": n}})[0].pk for n in range(REQUESTS)]
    deadline = time.monotonic() + 90
    while GenerationRequest.objects.filter(pk__in=ids, status__in=[Status.PENDING, Status.QUEUED,
                                                                   Status.RUNNING]).exists():
        assert time.monotonic() < deadline, list(GenerationRequest.objects.filter(pk__in=ids).values_list(
            "status", flat=True))
        time.sleep(0.1)
    sampler.stop.set()
    sampler.join(timeout=5)

    statuses = list(GenerationRequest.objects.filter(pk__in=ids).values_list("status", "error"))
    assert statuses == [(Status.COMPLETED, "")] * REQUESTS
    assert sampler.max_clients >= WORKERS  # each worker process keeps its client connection (CONN_MAX_AGE)
    assert 0 < sampler.max_servers <= POOL_SIZE, sampler.__dict__
    assert "ERROR" not in bouncer.log(), bouncer.log()[-2000:]
