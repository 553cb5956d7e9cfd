"""Writes from outside: submit, idempotency, per-user limit, cancel, regenerate, delete."""

import threading

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connections
from django.utils import timezone

from generation import services, states
from generation.errors import NotCancellable, ParamsInvalid, TooManyActiveRequests
from generation.idempotency import SUBMIT, Idempotency
from generation.models import GenerationRequest
from generation.services import (
    cancel_generation,
    delete_generation,
    regenerate_generation,
    submit_generation,
)
from generation.states import Status
from tests.concurrency import run_concurrently


@pytest.fixture
def wakeups(monkeypatch):
    """Record dispatcher wake-ups instead of enqueueing Django-Q tasks."""
    calls = []
    monkeypatch.setattr("generation.enqueue.wake_dispatcher", lambda count=1: calls.append(count))
    return calls


@pytest.fixture
def stopped(monkeypatch):
    """Record the stop tasks a cancel queues (a worker stops the prompt on its backend; not the request)."""
    calls = []
    monkeypatch.setattr("generation.enqueue.stop_cancelled", calls.append)
    return calls


def test_submit_stores_pending_then_queues_on_commit(user, valid_params, wakeups,
                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        request, created = submit_generation(user=user, data=valid_params)
    assert created
    request.refresh_from_db()
    assert request.status == Status.PENDING and request.queued_at is None and wakeups == []
    for callback in callbacks:
        callback()
    request.refresh_from_db()
    assert request.status == Status.QUEUED and request.queued_at is not None
    assert wakeups == [1]
    assert request.prompt == valid_params["prompt"] and request.params["sampler_params"]["seed"] == 42
    assert request.checkpoint.name == valid_params["checkpoint_model"]


def test_queueing_twice_is_harmless(user, valid_params, wakeups, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        request, _ = submit_generation(user=user, data=valid_params)
    services.queue_generation(request.pk)
    request.refresh_from_db()
    assert request.status == Status.QUEUED


def test_broker_down_does_not_fail_the_submit(user, valid_params, monkeypatch, django_capture_on_commit_callbacks):
    def broker_down(count=1):
        raise ConnectionError("redis is down")

    monkeypatch.setattr("generation.enqueue.wake_dispatcher", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        request, created = submit_generation(user=user, data=valid_params)
    request.refresh_from_db()
    assert created and request.status == Status.QUEUED  # the reconciler re-sends lost wake-ups


def test_invalid_params_store_nothing(user, valid_params, wakeups):
    with pytest.raises(ParamsInvalid):
        submit_generation(user=user, data=dict(valid_params, width=3))
    assert not GenerationRequest.objects.exists()


def test_idempotency_key_returns_the_original(user, other_user, valid_params, wakeups,
                                              django_capture_on_commit_callbacks):
    call = Idempotency.of(operation=SUBMIT, key="abc", body=valid_params)
    with django_capture_on_commit_callbacks(execute=True):
        first, created = submit_generation(user=user, data=valid_params, idempotency=call)
        again, created_again = submit_generation(user=user, data=valid_params, idempotency=call)
        theirs, created_theirs = submit_generation(user=other_user, data=valid_params, idempotency=call)
    assert created and not created_again and created_theirs
    assert again.pk == first.pk and theirs.pk != first.pk
    assert GenerationRequest.objects.filter(user=user).count() == 1
    assert wakeups == [1, 1]


def test_per_user_limit(user, other_user, valid_params, wakeups, settings):
    settings.GENERATION = {**settings.GENERATION, "MAX_ACTIVE_PER_USER": 2}
    submit_generation(user=user, data=valid_params)
    done, _ = submit_generation(user=user, data=valid_params)
    with pytest.raises(TooManyActiveRequests) as caught:
        submit_generation(user=user, data=valid_params)
    assert caught.value.limit == 2 and caught.value.status == 429
    submit_generation(user=other_user, data=valid_params)  # limits are per user
    GenerationRequest.objects.filter(pk=done.pk).update(status=Status.COMPLETED, finished_at=timezone.now())
    submit_generation(user=user, data=valid_params)  # finished requests do not count
    assert GenerationRequest.objects.filter(user=user).count() == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_submits_cannot_both_pass_the_limit(make_user, checkpoint, valid_params, wakeups, settings):
    settings.GENERATION = {**settings.GENERATION, "MAX_ACTIVE_PER_USER": 1}
    user = make_user("racer")
    for _ in range(5):
        barrier = threading.Barrier(2)
        outcomes = []

        def submit(barrier=barrier, outcomes=outcomes):
            try:
                barrier.wait(timeout=10)
                submit_generation(user=user, data=valid_params)
                outcomes.append("ok")
            except TooManyActiveRequests:
                outcomes.append("limited")
            finally:
                connections.close_all()

        run_concurrently([submit] * 2)
        assert sorted(outcomes) == ["limited", "ok"]
        GenerationRequest.objects.filter(user=user).update(status=Status.CANCELLED, finished_at=timezone.now())


@pytest.mark.parametrize("status", [Status.PENDING, Status.QUEUED])
def test_cancel_waiting_request_in_the_database(user, checkpoint, status, stopped,
                                                django_capture_on_commit_callbacks):
    request = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model=checkpoint.name,
                                               status=status)
    with django_capture_on_commit_callbacks(execute=True):
        cancelled = cancel_generation(request=request)
    assert cancelled.status == Status.CANCELLED and cancelled.finished_at is not None
    assert cancelled.backend_stop == "" and stopped == []  # nothing was sent to a backend yet


def test_cancel_of_a_running_request_decides_now_and_stops_it_in_a_task(user, checkpoint, stopped,
                                                                        django_capture_on_commit_callbacks,
                                                                        django_assert_max_num_queries, monkeypatch):
    """No ComfyUI call in the request: the decision is written, the stop is queued for a worker."""
    import generation.runner

    monkeypatch.setattr(generation.runner, "stop_on_backend", lambda request: pytest.fail("called in the request"))
    request = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model=checkpoint.name,
                                               status=Status.RUNNING, backend="http://b1", comfyui_prompt_id="x",
                                               attempts=1)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        cancelled = cancel_generation(request=request)
    assert cancelled.status == Status.CANCELLED and cancelled.backend_stop == "pending"
    assert stopped == []  # queued only once the cancel is committed
    for callback in callbacks:
        callback()
    assert stopped == [request.pk]


def test_cancel_after_the_worker_requeued_has_nothing_to_stop(user, checkpoint, stopped,
                                                              django_capture_on_commit_callbacks):
    """The job was requeued (its prompt gone from ComfyUI) before the cancel landed: nothing to stop."""
    request = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model=checkpoint.name,
                                               status=Status.RUNNING, backend="http://b1", comfyui_prompt_id="x",
                                               attempts=1)
    assert states.transition(request.pk, Status.QUEUED, expect={Status.RUNNING}, backend="")
    with django_capture_on_commit_callbacks(execute=True):
        cancelled = cancel_generation(request=request)
    assert cancelled.status == Status.CANCELLED and cancelled.backend_stop == "" and stopped == []


def test_a_broker_down_does_not_fail_the_cancel(user, checkpoint, monkeypatch, django_capture_on_commit_callbacks):
    def broker_down(request_id):
        raise ConnectionError("broker down")

    monkeypatch.setattr("generation.enqueue.stop_cancelled", broker_down)
    request = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model=checkpoint.name,
                                               status=Status.RUNNING, backend="http://b1", comfyui_prompt_id="x",
                                               attempts=1)
    with django_capture_on_commit_callbacks(execute=True):
        assert cancel_generation(request=request).status == Status.CANCELLED


def test_cancel_is_idempotent(user, checkpoint, stopped):
    request = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model=checkpoint.name,
                                               status=Status.QUEUED)
    first = cancel_generation(request=request)
    assert cancel_generation(request=request).finished_at == first.finished_at


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED])
def test_cancel_finished_request_is_refused(user, checkpoint, status, stopped):
    request = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model=checkpoint.name,
                                               status=status, finished_at=timezone.now())
    with pytest.raises(NotCancellable):
        cancel_generation(request=request)
    request.refresh_from_db()
    assert request.status == status


def test_cancel_of_a_stale_copy_that_already_completed_is_refused(user, checkpoint, stopped):
    request = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model=checkpoint.name,
                                               status=Status.QUEUED)
    GenerationRequest.objects.filter(pk=request.pk).update(status=Status.COMPLETED, finished_at=timezone.now())
    with pytest.raises(NotCancellable):
        cancel_generation(request=request)  # our copy still says queued


def test_regenerate_with_the_same_seed(user, valid_params, wakeups):
    original, _ = submit_generation(user=user, data=valid_params)
    again, created = regenerate_generation(request=original, user=user, same_seed=True)
    assert created and again.pk != original.pk and again.regenerated_from_id == original.pk
    assert again.params == original.params
    assert (again.prompt, again.width, again.checkpoint_model) == (original.prompt, original.width,
                                                                   original.checkpoint_model)
    assert GenerationRequest.objects.get(pk=again.pk).regenerated_from_id == original.pk


def test_regenerate_with_a_new_seed(user, valid_params, wakeups):
    original, _ = submit_generation(user=user, data=valid_params)
    seeds = {regenerate_generation(request=original, user=user)[0].params["sampler_params"]["seed"] for _ in range(3)}
    assert 42 not in seeds and len(seeds) == 3


def test_regenerate_refuses_a_model_that_is_no_longer_offered(user, valid_params, checkpoint, wakeups):
    original, _ = submit_generation(user=user, data=valid_params)
    checkpoint.is_active = False
    checkpoint.save()
    with pytest.raises(ParamsInvalid) as caught:
        regenerate_generation(request=original, user=user)
    assert "checkpoint_model" in caught.value.fields


def test_delete_terminal_request_removes_row_and_files(user, checkpoint):
    request = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model=checkpoint.name)
    image = default_storage.save(f"generations/{user.pk}/2026/01/01/{request.pk}_0.png", ContentFile(b"png"))
    thumb = default_storage.save(f"generations/{user.pk}/2026/01/01/thumbs/{request.pk}_0_small.webp",
                                 ContentFile(b"webp"))
    GenerationRequest.objects.filter(pk=request.pk).update(status=Status.COMPLETED, finished_at=timezone.now(),
                                                           outputs=[image], thumbnails=[{"small": thumb}])
    request.refresh_from_db()
    assert delete_generation(request=request) is None
    assert not GenerationRequest.objects.filter(pk=request.pk).exists()
    assert not default_storage.exists(image) and not default_storage.exists(thumb)


def test_delete_active_request_cancels_it_instead(user, checkpoint, stopped):
    request = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model=checkpoint.name,
                                               status=Status.QUEUED)
    result = delete_generation(request=request)
    assert result.status == Status.CANCELLED
    assert GenerationRequest.objects.filter(pk=request.pk).exists()
