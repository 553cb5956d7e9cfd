"""The job runner in-process against a real simulator (no cluster): outcomes and races."""

import threading
import time

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from generation import runner, states
from generation.dispatcher import claim_next
from generation.models import BackendState, GenerationRequest
from generation.runner import Job, run_job, stop_on_backend
from generation.services import submit_generation
from generation.states import Status
from generation.workflows import get_workflow

pytestmark = pytest.mark.integration


@pytest.fixture
def backend(settings, simulator):
    settings.COMFYUI_BACKENDS = [{"url": simulator.url, "capacity": 2}]
    settings.GENERATION = {**settings.GENERATION, "HEARTBEAT_SECONDS": 0.05}
    return simulator


def _queued(user, params, **overrides):
    request, _ = submit_generation(user=user, data={**params, **overrides})
    # queued here, or already by the submit's on-commit hook (transactional tests)
    states.transition(request.pk, Status.QUEUED, expect={Status.PENDING})
    assert GenerationRequest.objects.get(pk=request.pk).status == Status.QUEUED
    return request


def _job(claim):
    return Job(claim.request_id, claim.attempt, claim.backend, claim.prompt_id, claim.lease)


@pytest.mark.django_db
def test_run_job_completes(backend, user, valid_params, _media_root):
    request = _queued(user, valid_params, batch_size=2)
    run_job(_job(claim_next()))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.COMPLETED and row.progress == 1.0
    assert all(default_storage.exists(p) for p in row.outputs) and len(row.outputs) == 2
    assert BackendState.objects.get(url=backend.url).jobs_completed == 1


@pytest.mark.django_db
def test_completion_that_loses_to_a_cancel_deletes_its_files(backend, user, valid_params, _media_root, monkeypatch):
    request = _queued(user, valid_params)
    real = states.transition

    def cancel_first(request_id, to, **kwargs):
        if to == Status.COMPLETED:
            real(request_id, Status.CANCELLED, expect={Status.RUNNING})
        return real(request_id, to, **kwargs)

    monkeypatch.setattr(states, "transition", cancel_first)
    run_job(_job(claim_next()))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.CANCELLED and row.outputs == []
    assert not [p for p in _media_root.rglob("*") if p.is_file()]


@pytest.mark.django_db
def test_history_lost_after_success_requeues_instead_of_failing(backend, user, valid_params, monkeypatch):
    """A restart between execution_success and our history read loses the outputs: retry the job."""
    request = _queued(user, valid_params)
    real_finish = runner.JobRunner.finish

    def restart_then_finish(self, outcome, workflow):
        backend.restart()
        return real_finish(self, outcome, workflow)

    monkeypatch.setattr(runner.JobRunner, "finish", restart_then_finish)
    run_job(_job(claim_next()))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.QUEUED and row.attempts == 1
    assert "lost the prompt" in row.error_detail["retry_reason"]


@pytest.mark.django_db
def test_history_written_late_after_success_is_waited_for(backend, user, valid_params, monkeypatch):
    """ComfyUI announces success before it writes the history entry: wait, never resubmit."""
    request = _queued(user, valid_params)
    client_cls = type(backends_client(backend.url))
    real_locate = client_cls.locate
    calls = []

    def late_history(self, prompt_id):
        calls.append(prompt_id)
        if len(calls) < 3:
            return runner.Location("running")
        return real_locate(self, prompt_id)

    monkeypatch.setattr(client_cls, "locate", late_history)
    run_job(_job(claim_next()))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.COMPLETED and len(calls) >= 3
    assert backend.submissions(row.comfyui_prompt_id) == 1


def backends_client(url):
    from generation.backends import client_for

    return client_for(url)


@pytest.mark.django_db
def test_a_job_whose_lease_was_taken_stops_without_submitting(backend, user, valid_params):
    request = _queued(user, valid_params)
    claim = claim_next()
    GenerationRequest.objects.filter(pk=request.pk).update(heartbeat_at=timezone.now())  # the reconciler took over
    run_job(_job(claim))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.RUNNING and row.attempts == 1
    assert backend.submissions(claim.prompt_id) == 0


@pytest.mark.django_db(transaction=True)
def test_an_interrupt_we_did_not_send_fails_the_request(backend, user, valid_params, monkeypatch):
    monkeypatch.setattr(runner, "CANCEL_GRACE_SECONDS", 0.2)
    backend.configure(step_time=0.05)
    request = _queued(user, {**valid_params, "sampler_params": {**valid_params["sampler_params"], "steps": 60}})
    claim = claim_next()
    thread = threading.Thread(target=run_job, args=(_job(claim),))
    thread.start()
    deadline = time.monotonic() + 10
    while backend.stats()["running"] != claim.prompt_id and time.monotonic() < deadline:
        time.sleep(0.02)
    backend.client().interrupt(claim.prompt_id)
    thread.join(timeout=10)
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.FAILED and row.error.startswith("Interrupted on the ComfyUI server")


@pytest.mark.django_db
def test_unreachable_backend_requeues_then_gives_up(settings, user, valid_params):
    settings.COMFYUI_BACKENDS = [{"url": "http://127.0.0.1:9", "capacity": 1}]
    settings.COMFYUI_TIMEOUT = 0.5
    settings.GENERATION = {**settings.GENERATION, "MAX_ATTEMPTS": 2}
    request = _queued(user, valid_params)
    run_job(_job(claim_next()))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.QUEUED and row.attempts == 1 and row.backend == ""
    assert "Backend unavailable" in row.error_detail["retry_reason"]
    state = BackendState.objects.get(url="http://127.0.0.1:9")
    assert not state.is_healthy and state.down_until > timezone.now()
    assert claim_next() is None  # out of rotation until it answers
    BackendState.objects.filter(pk=state.pk).update(is_healthy=True)
    run_job(_job(claim_next()))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.FAILED and row.error.endswith("(gave up after 2 attempts)")


@pytest.mark.django_db
def test_stop_on_backend_never_raises(user):
    request = GenerationRequest(user=user, backend="http://127.0.0.1:9", comfyui_prompt_id="x")
    stop_on_backend(request)  # logged, not raised
    stop_on_backend(GenerationRequest(user=user))  # nothing assigned: nothing to stop


@pytest.mark.django_db
def test_an_unexpected_error_costs_an_attempt_instead_of_looping(backend, user, valid_params, monkeypatch):
    request = _queued(user, valid_params)

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(type(get_workflow("txt2img")), "a1111_parameters", broken)
    run_job(_job(claim_next()))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.QUEUED and row.attempts == 1
    assert row.error_detail["retry_reason"] == "Internal error: KeyError: 'a bug'"
