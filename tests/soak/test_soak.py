"""The small soak (bench/soak.py with 200 requests): 4 simulator processes, 2 qcluster process
groups on the Redis broker (db 13), 5% execution errors, a backend restart, a cluster killed with
SIGKILL and restarted, the clusters' database connections terminated — then every request must be
terminal and truthful, no prompt run twice, no orphan or missing file, nothing left running.

The full run (2,000 requests) is ``.venv/bin/python bench/soak.py``; see bench/README.md.
"""

import os
import uuid

import pytest

from bench.soak import Soak, SoakConfig, format_summary

REDIS_URL = os.environ.get("SOAK_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.mark.soak
@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_small_soak_with_faults(simulator_factory, cluster_factory, _media_root, capsys):
    config = SoakConfig(requests=200, users=20, backends=4, clusters=2, error_rate=0.05, deadline=150,
                        stale_heartbeat=2, reconcile_every=1.0, cluster_down=2.0)
    simulators = [simulator_factory(step_time=config.step_time, load_time=config.load_time, seed=config.seed + i)
                  for i in range(config.backends)]
    backends = [(simulator.url, config.capacity) for simulator in simulators]
    queue = f"soak-{uuid.uuid4().hex[:8]}"  # both clusters (and this process) share one queue

    def start_cluster(index):
        # cluster_factory deletes the queue from Redis after the test
        return cluster_factory(backends, workers=config.workers, redis_url=REDIS_URL, name=queue,
                               generation={"STALE_HEARTBEAT_SECONDS": config.stale_heartbeat})

    result = Soak(config, simulators=simulators, start_cluster=start_cluster, media_root=_media_root,
                  log=lambda line: None).run()
    result.summary["broker"] = "redis"
    summary = format_summary(result)
    with capsys.disabled():
        print("\n" + summary)
    assert result.ok, summary
    statuses = result.summary["statuses"]
    assert statuses.get("completed", 0) + statuses.get("failed", 0) == config.requests
    assert result.summary["backend_restarts"] == 1
    assert any("kill -9" in what for _, what in result.summary["timeline"])
    assert any("connections terminated" in what for _, what in result.summary["timeline"])
