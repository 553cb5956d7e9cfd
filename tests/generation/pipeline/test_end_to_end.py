"""End to end on a real cluster (qcluster subprocess, ORM broker on the test database) and a real simulator."""

import io
import os
import time

import pytest
from django.core.files.storage import default_storage
from PIL import Image

from generation.models import GenerationRequest
from generation.services import submit_generation

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/15")


def _check_files(row, user, batch):
    assert len(row.outputs) == batch and len(row.thumbnails) == batch
    for index, (path, thumbs) in enumerate(zip(row.outputs, row.thumbnails, strict=True)):
        assert path == f"generations/{user.pk}/{row.created_at:%Y/%m/%d}/{row.pk}_{index}.png"
        with default_storage.open(path) as handle:
            image = Image.open(io.BytesIO(handle.read()))
        assert image.size == (64, 64)
        assert image.text["parameters"].startswith("a lighthouse at dusk\nNegative prompt: blurry\n")
        assert "Steps: 4, Sampler: euler, Schedule type: normal, CFG scale: 7.0, Seed: 42" in image.text["parameters"]
        assert "prompt" in image.text  # ComfyUI's own chunk is kept
        assert set(thumbs) == {"small", "medium", "large"}
        assert all(default_storage.exists(name) for name in thumbs.values())


def test_batch_of_four_end_to_end(simulator, cluster_factory, wait_for_request, user, valid_params):
    cluster_factory([simulator.url])
    request, _ = submit_generation(user=user, data={**valid_params, "batch_size": 4})
    row = wait_for_request(request.pk, "completed", "failed", timeout=20)
    assert row.status == "completed", row.error
    assert row.progress == 1.0 and row.attempts == 1 and row.error == "" and row.run.heartbeat_at is None
    assert row.graph["9"]["inputs"]["filename_prefix"] == f"genonaut/{row.pk}_a1"
    assert row.graph["5"]["inputs"]["batch_size"] == 4
    _check_files(row, user, 4)
    assert simulator.submissions(row.comfyui_prompt_id) == 1


def test_progress_is_observed_rising(simulator, cluster_factory, wait_for_request, user, slow):
    simulator.configure(step_time=0.03)
    cluster_factory([simulator.url])
    request, _ = submit_generation(user=user, data=slow(steps=40))
    seen = []
    for _ in range(2000):
        row = GenerationRequest.objects.get(pk=request.pk)
        if row.status == "running" and (not seen or seen[-1][0] != row.progress):
            seen.append((row.progress, row.current_step, row.total_steps, row.current_node))
        if row.is_terminal:
            break
        time.sleep(0.01)
    assert row.status == "completed", row.error
    fractions = [s[0] for s in seen]
    assert fractions == sorted(fractions) and len({f for f in fractions if 0 < f < 1}) >= 4, seen
    assert any(s[2] == 40 and 0 < s[1] < 40 and s[3] == "KSampler (3)" for s in seen), seen


def test_two_backends_share_twenty_jobs(simulator, simulator_factory, cluster_factory, wait_for_request, user,
                                        valid_params):
    other = simulator_factory()
    cluster_factory([simulator.url, other.url])
    requests = [submit_generation(user=user, data=valid_params)[0] for _ in range(20)]
    rows = [wait_for_request(r.pk, "completed", "failed", timeout=40) for r in requests]
    assert [r.status for r in rows] == ["completed"] * 20, [r.error for r in rows if r.error]
    per_backend = {url: sum(1 for r in rows if r.backend == url) for url in (simulator.url, other.url)}
    assert all(count >= 4 for count in per_backend.values()), per_backend
    assert sum(sum(s.stats()["submissions"].values()) for s in (simulator, other)) == 20
    assert len({path for r in rows for path in r.outputs}) == 20


def test_fairness_between_two_users(simulator, cluster_factory, wait_for_request, make_user, slow):
    simulator.configure(step_time=0.02)
    cluster_factory([(simulator.url, 1)], workers=2)
    heavy, light = make_user("heavy"), make_user("light")
    heavy_requests = [submit_generation(user=heavy, data=slow(steps=10))[0] for _ in range(6)]
    lone, _ = submit_generation(user=light, data=slow(steps=10))
    rows = {r.pk: wait_for_request(r.pk, "completed", timeout=40) for r in [*heavy_requests, lone]}
    order = sorted(rows.values(), key=lambda r: r.started_at)
    # heavy's first job may already run when light submits; light's one job goes next, not seventh
    assert order.index(rows[lone.pk]) <= 2, [(r.user.username, r.started_at) for r in order]


@pytest.mark.redis
def test_end_to_end_on_the_redis_broker(simulator, cluster_factory, wait_for_request, user, valid_params):
    import redis

    try:
        redis.from_url(REDIS_TEST_URL).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis for broker tests is not reachable at {REDIS_TEST_URL}: {exc}")
    cluster_factory([simulator.url], redis_url=REDIS_TEST_URL)
    from django_q.brokers import get_broker

    # wake-ups go through Redis only: an ORM-broker cluster would never see them
    assert type(get_broker()).__name__ == "Redis"
    requests = [submit_generation(user=user, data={**valid_params, "batch_size": 2})[0] for _ in range(3)]
    for request in requests:
        row = wait_for_request(request.pk, "completed", "failed", timeout=20)
        assert row.status == "completed", row.error
        _check_files(row, user, 2)
