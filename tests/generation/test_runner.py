"""The job runner in-process against a real simulator (no cluster): outcomes and races."""

import errno
import threading
import time

import pytest
from django.core.files.storage import FileSystemStorage, default_storage
from django.utils import timezone

from generation import runner, states
from generation.dispatcher import claim_next
from generation.models import BackendState, GenerationRequest, RunState
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
    RunState.objects.filter(request_id=request.pk).update(heartbeat_at=timezone.now())  # the reconciler took over
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


# --- stalls --------------------------------------------------------------------------------------


@pytest.fixture
def stall_fast(settings):
    settings.GENERATION = {**settings.GENERATION, "STALL_SECONDS": 0.5, "REQUEUE_BACKOFF_SECONDS": 0.0}


@pytest.mark.django_db
def test_a_stalled_prompt_is_interrupted_and_retried(backend, stall_fast, user, valid_params):
    backend.set_faults(stall_rate=1.0, stall_at_step=2)
    request = _queued(user, valid_params)
    first = claim_next()
    run_job(_job(first))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.QUEUED and row.attempts == 1
    assert row.error_detail["retry_reason"] == "Stalled: no progress for 0.5 s at KSampler (3)"
    assert row.error_detail["cause"] == "stalled"
    # interrupted on the backend, not left hanging there
    assert backend.stats()["stalled"] is None
    assert backend.client().locate(first.prompt_id).history["status"]["status_str"] == "error"
    backend.set_faults(stall_rate=0.0)
    run_job(_job(claim_next()))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.COMPLETED and row.attempts == 2


@pytest.mark.django_db
def test_a_prompt_that_stalls_every_time_fails_saying_it_stalled(backend, stall_fast, user, valid_params, settings):
    settings.GENERATION = {**settings.GENERATION, "MAX_ATTEMPTS": 2}
    backend.set_faults(stall_rate=1.0, stall_at_step=1)
    request = _queued(user, valid_params)
    for _ in range(2):
        run_job(_job(claim_next()))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.FAILED
    assert row.error == "Stalled: no progress for 0.5 s at KSampler (3) (gave up after 2 attempts)"
    assert row.error_detail["cause"] == "stalled" and row.error_detail["type"] == "retries_exhausted"
    assert backend.stats()["stalled"] is None


@pytest.mark.django_db(transaction=True)
def test_waiting_in_comfyuis_own_queue_is_not_a_stall(backend, stall_fast, user, valid_params):
    """The second prompt waits behind the first on ComfyUI for longer than STALL_SECONDS: no progress,
    but not running either, so it is left alone."""
    backend.configure(step_time=0.05)
    slow = {**valid_params, "sampler_params": {**valid_params["sampler_params"], "steps": 30}}  # 1.5 s
    requests = [_queued(user, slow) for _ in range(2)]
    claims = [claim_next(), claim_next()]
    threads = [threading.Thread(target=_run_and_close, args=(_job(claim),)) for claim in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    rows = [GenerationRequest.objects.get(pk=r.pk) for r in requests]
    assert [row.status for row in rows] == [Status.COMPLETED, Status.COMPLETED], [row.error_detail for row in rows]
    assert all(row.attempts == 1 for row in rows)


def _run_and_close(job):
    from django.db import connection

    try:
        run_job(job)
    finally:
        connection.close()


# --- storage errors ------------------------------------------------------------------------------


class FlakyStorage(FileSystemStorage):
    """Local storage whose next ``failures`` saves fail like a full disk (then it has room again)."""

    failures = 0
    saves_refused = 0

    def _save(self, name, content):
        if FlakyStorage.failures > 0:
            FlakyStorage.failures -= 1
            FlakyStorage.saves_refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super()._save(name, content)


@pytest.fixture
def flaky_storage(settings, _media_root):
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "tests.generation.test_runner.FlakyStorage", "OPTIONS": {"location": str(_media_root)}}}
    settings.GENERATION = {**settings.GENERATION, "STORAGE_RETRIES": 3, "STORAGE_RETRY_SECONDS": 0.05}
    FlakyStorage.failures = FlakyStorage.saves_refused = 0
    return FlakyStorage


@pytest.mark.django_db
def test_a_storage_error_that_goes_away_is_retried_while_the_outputs_wait_on_the_backend(
        backend, flaky_storage, user, valid_params):
    flaky_storage.failures = 2
    request = _queued(user, valid_params)
    run_job(_job(claim_next()))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.COMPLETED and row.attempts == 1, row.error
    assert flaky_storage.saves_refused == 2
    assert all(default_storage.exists(p) for p in row.outputs)
    assert backend.executions(row.comfyui_prompt_id) == 1  # stored from the same run, not rendered again


@pytest.mark.django_db
def test_a_storage_that_never_recovers_fails_the_request_and_leaves_no_file(
        backend, flaky_storage, user, valid_params, _media_root):
    flaky_storage.failures = 1000
    request = _queued(user, valid_params)
    run_job(_job(claim_next()))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.FAILED and row.error_detail["type"] == "storage"
    assert row.error.startswith("Storing the images failed: ") and row.error.endswith("(tried 4 times)")
    assert flaky_storage.saves_refused == 4
    assert not [p for p in _media_root.rglob("*") if p.is_file()]


# --- requeue backoff -----------------------------------------------------------------------------


def test_requeue_backoff_doubles_up_to_its_cap(settings):
    settings.GENERATION = {**settings.GENERATION, "REQUEUE_BACKOFF_SECONDS": 2.0, "REQUEUE_BACKOFF_MAX_SECONDS": 5.0}
    assert [runner.requeue_backoff(attempt) for attempt in (1, 2, 3, 4)] == [2.0, 4.0, 5.0, 5.0]


@pytest.mark.django_db
def test_a_requeue_after_a_fault_waits_out_its_backoff(backend, user, valid_params, monkeypatch, settings):
    settings.GENERATION = {**settings.GENERATION, "REQUEUE_BACKOFF_SECONDS": 0.5}
    request = _queued(user, valid_params)
    real = runner.JobRunner.finished_entry

    def restart_first(self):  # the backend forgets the prompt between its success and our history read
        backend.restart()
        return real(self)

    monkeypatch.setattr(runner.JobRunner, "finished_entry", restart_first)
    ending = run_job(_job(claim_next()))
    row = GenerationRequest.objects.get(pk=request.pk)
    assert row.status == Status.QUEUED and row.error_detail["cause"] == "lost"
    assert ending.retry_at == row.not_before and 0.3 < (row.not_before - timezone.now()).total_seconds() <= 0.5
    assert claim_next() is None  # the dispatcher respects not_before
    time.sleep((row.not_before - timezone.now()).total_seconds() + 0.05)
    monkeypatch.setattr(runner.JobRunner, "finished_entry", real)
    claim = claim_next()
    assert claim.request_id == request.pk and claim.attempt == 2
    assert GenerationRequest.objects.get(pk=request.pk).not_before is None


@pytest.mark.django_db
def test_a_backend_that_stops_answering_requeues_without_backoff(settings, user, valid_params):
    """The backend leaves rotation with its own backoff; another one may take the request at once."""
    settings.COMFYUI_BACKENDS = [{"url": "http://127.0.0.1:9", "capacity": 1}]
    settings.COMFYUI_TIMEOUT = 0.5
    request = _queued(user, valid_params)
    assert run_job(_job(claim_next())).retry_at is None
    assert GenerationRequest.objects.get(pk=request.pk).not_before is None


# --- cancel: the stop on the backend, off the web request ------------------------------------------


@pytest.mark.django_db
def test_stopping_a_cancelled_prompt_records_how_it_went(backend, user, valid_params):
    from generation.runner import stop_cancelled_prompt

    request = _queued(user, valid_params)
    claim = claim_next()
    backend.client().submit(get_workflow("txt2img").build(
        {**valid_params, "lora_models": []}, files={}, filename_prefix="x"), prompt_id=claim.prompt_id,
        client_id="c")
    assert states.transition(request.pk, Status.CANCELLED, backend_stop="pending")
    assert stop_cancelled_prompt(request.pk) == "done"
    # deleted while pending, or interrupted (ComfyUI ends an interrupted prompt a moment later)
    deadline = time.monotonic() + 10
    while backend.client().locate(claim.prompt_id).state not in ("unknown", "finished"):
        assert time.monotonic() < deadline, "the prompt still runs on the backend"
        time.sleep(0.05)
    assert GenerationRequest.objects.get(pk=request.pk).backend_stop == "done"
    assert stop_cancelled_prompt(request.pk) is None  # nothing pending any more: idempotent


@pytest.mark.django_db
def test_stopping_on_a_backend_that_does_not_answer_says_so(settings, user, valid_params):
    from generation.runner import stop_cancelled_prompt

    settings.COMFYUI_TIMEOUT = 0.5
    request = GenerationRequest.objects.create(user=user, status=Status.CANCELLED, backend="http://127.0.0.1:9",
                                               comfyui_prompt_id="p", attempts=1, backend_stop="pending",
                                               finished_at=timezone.now())
    assert stop_cancelled_prompt(request.pk) == "unreachable"
    assert GenerationRequest.objects.get(pk=request.pk).backend_stop == "unreachable"
