"""Cancel on a real cluster: queued (never reaches ComfyUI), running (interrupted), waiting in ComfyUI's queue.

The cancel itself only writes the decision; a worker's task (and the worker following the job) stop
the prompt on the backend, and ``backend_stop`` says when that is done."""

import pytest

from generation.services import cancel_generation, submit_generation

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_cancel_while_queued(simulator, cluster_factory, wait_for_request, wait_until, row_of, user, slow):
    simulator.configure(step_time=0.02)
    cluster_factory([(simulator.url, 1)])
    first, _ = submit_generation(user=user, data=slow(steps=40))
    second, _ = submit_generation(user=user, data=slow(steps=4))
    wait_until(lambda: row_of(first).status == "running", what="first running")
    assert row_of(second).status == "queued"
    cancelled = cancel_generation(request=row_of(second))
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert wait_for_request(first.pk, "completed", timeout=20).status == "completed"
    row = row_of(second)
    assert row.status == "cancelled" and row.attempts == 0 and row.comfyui_prompt_id == ""
    assert sum(simulator.stats()["submissions"].values()) == 1  # the cancelled one never reached ComfyUI


def test_cancel_while_running_interrupts_comfyui(simulator, cluster_factory, wait_for_request, wait_until, row_of,
                                                 user, slow):
    simulator.configure(step_time=0.05)
    cluster_factory([simulator.url])
    request, _ = submit_generation(user=user, data=slow(steps=60))
    wait_until(lambda: row_of(request).current_step >= 2, what="sampling started")
    cancelled = cancel_generation(request=row_of(request))
    # answered at once; the stop task may already have run by the time the answer re-reads the row
    assert cancelled.status == "cancelled" and cancelled.backend_stop in ("pending", "done")
    wait_until(lambda: row_of(request).backend_stop == "done", what="stopped on the backend")
    location = wait_until(lambda: (loc := simulator.client().locate(cancelled.comfyui_prompt_id)).state == "finished"
                          and loc, timeout=5, what="interrupt visible in history")
    assert location.history["status"]["status_str"] == "error"
    assert location.history["status"]["messages"][-1][0] == "execution_interrupted"
    # the worker sees the cancel, stops following and does not write outputs
    wait_until(lambda: simulator.stats()["running"] is None, what="simulator idle")
    row = row_of(request)
    assert row.status == "cancelled" and row.outputs == [] and row.error == ""


def test_cancel_while_waiting_in_comfyui_queue(simulator, cluster_factory, wait_until, row_of, user, slow):
    simulator.configure(step_time=0.05)
    cluster_factory([(simulator.url, 2)])
    requests = [submit_generation(user=user, data=slow(steps=150))[0] for _ in range(2)]  # 7.5 s each

    def one_pending_on_comfyui():
        # pending behind the other one: a prompt just submitted to an idle ComfyUI is listed as
        # pending for an instant before it starts, and that one is not "waiting"
        stats = simulator.stats()
        rows = [row_of(r) for r in requests]
        running = {r.comfyui_prompt_id for r in rows if r.comfyui_prompt_id and r.comfyui_prompt_id == stats["running"]}
        return next((r for r in rows if running and r.status == "running" and r.comfyui_prompt_id in stats["pending"]),
                    None)

    # both are claimed at once; which one ComfyUI runs first depends on which worker submits first
    waiting = wait_until(one_pending_on_comfyui, timeout=15, what="one request pending on ComfyUI")
    assert cancel_generation(request=waiting).status == "cancelled"  # decided at once; a worker stops it
    wait_until(lambda: row_of(waiting).backend_stop == "done", what="stopped on the backend")
    assert waiting.comfyui_prompt_id not in simulator.stats()["pending"]
    location = simulator.client().locate(waiting.comfyui_prompt_id)
    assert location.state == "unknown", (location, simulator.stats())  # deleted, never ran
    assert simulator.executions(waiting.comfyui_prompt_id) == 0
    other = next(r for r in requests if r.pk != waiting.pk)
    assert row_of(other).status == "running"
    cancel_generation(request=row_of(other))
