"""Recovery on a real cluster: backend down, backend restart mid-job, worker cluster killed mid-job."""

import time

import pytest
from django_q.models import Schedule

from generation import enqueue
from generation.models import BackendState
from generation.reconciler import reconcile
from generation.services import submit_generation

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _media_files(media_root):
    return sorted(str(p.relative_to(media_root)) for p in media_root.rglob("*") if p.is_file())


def test_backend_down_at_submit_waits_then_completes(simulator, cluster_factory, wait_for_request, wait_until,
                                                     row_of, user, valid_params, settings):
    cluster_factory([simulator.url])
    simulator.set_faults(refuse_connections=2.0)
    time.sleep(0.1)  # the simulator stops listening just after answering
    request, _ = submit_generation(user=user, data=valid_params)
    wait_until(lambda: BackendState.objects.filter(url=simulator.url, is_healthy=False).exists(),
               what="backend marked down")
    assert row_of(request).status in ("queued", "running")
    # no worker sleeps out the backoff: a probe is scheduled for the housekeeping cluster, whose scheduler
    # looks every 30 s (the first time 30 s after it started)
    probe = wait_until(lambda: Schedule.objects.filter(func=enqueue.PROBE_BACKEND).first(), what="probe scheduled")
    assert probe.cluster == settings.Q_QUEUES["housekeeping"]
    row = wait_for_request(request.pk, "completed", "failed", timeout=70)
    assert row.status == "completed", row.error
    assert row.attempts == 2 and "Backend unavailable" in row.error_detail.get("retry_reason", "")
    state = BackendState.objects.get(url=simulator.url)
    assert state.is_healthy and state.consecutive_failures == 0
    assert sum(simulator.stats()["submissions"].values()) == 1


def test_backend_restart_mid_job_resubmits_once(simulator, cluster_factory, wait_for_request, wait_until, row_of,
                                                user, slow):
    simulator.configure(step_time=0.03)
    cluster_factory([simulator.url])
    request, _ = submit_generation(user=user, data=slow(steps=40))
    wait_until(lambda: row_of(request).current_step >= 2, what="sampling started")
    first_prompt = row_of(request).comfyui_prompt_id
    simulator.restart()
    row = wait_for_request(request.pk, "completed", "failed", timeout=20)
    assert row.status == "completed", row.error
    assert row.attempts == 2 and row.comfyui_prompt_id != first_prompt
    assert "lost the prompt" in row.error_detail["retry_reason"]
    stats = simulator.stats()
    assert stats["submissions"] == {first_prompt: 1, row.comfyui_prompt_id: 1}
    assert len(row.outputs) == 1


def test_worker_killed_mid_job_completes_after_restart_and_reconcile(simulator, cluster_factory, wait_for_request,
                                                                    wait_until, row_of, user, slow, _media_root):
    simulator.configure(step_time=0.03)
    cluster = cluster_factory([simulator.url])
    request, _ = submit_generation(user=user, data=slow(steps=60, batch_size=2))
    wait_until(lambda: row_of(request).current_step >= 2, what="sampling started")
    cluster.kill()  # SIGKILL parent, sentinel, workers: the task in flight saves nothing
    killed = row_of(request)
    assert killed.status == "running"
    cluster.start()
    # the heartbeat goes stale, the reconciler takes the lease over and sends resume
    wait_until(lambda: reconcile()["taken_over"], timeout=10, interval=0.3, what="stale heartbeat taken over")
    row = wait_for_request(request.pk, "completed", "failed", timeout=20)
    assert row.status == "completed", row.error
    assert row.attempts == 1 and row.comfyui_prompt_id == killed.comfyui_prompt_id
    assert simulator.submissions(row.comfyui_prompt_id) == 1  # re-attached, never submitted twice
    assert simulator.executions(row.comfyui_prompt_id) == 1
    expected = sorted([*row.outputs, *(name for thumbs in row.thumbnails for name in thumbs.values())])
    assert _media_files(_media_root) == expected and len(row.outputs) == 2  # no duplicate files
