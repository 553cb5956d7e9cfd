"""Task bodies and the wake-ups they and everyone else send (generation.enqueue)."""

import pytest
from django.utils import timezone

from generation import enqueue, tasks
from generation.models import GenerationRequest, RunState
from generation.states import Status

pytestmark = pytest.mark.django_db

URL = "http://127.0.0.1:9"


@pytest.fixture
def sent(monkeypatch, settings):
    settings.COMFYUI_BACKENDS = [{"url": URL, "capacity": 2}]
    calls = []
    monkeypatch.setattr(enqueue, "async_task", lambda *args, **kwargs: calls.append(args))
    return calls


def test_wakeups_are_capped_by_free_slots(sent):
    enqueue.wake_dispatcher(5)
    assert sent == [("generation.tasks.dispatch",)] * 2


def test_no_wakeup_when_every_slot_is_busy(sent, user):
    for _ in range(2):
        GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=Status.RUNNING,
                                         backend=URL)
    enqueue.wake_dispatcher()
    assert sent == []


def test_a_slot_whose_prompt_finished_counts_as_free(sent, user):
    for executed in (None, timezone.now()):
        GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=Status.RUNNING,
                                         backend=URL, executed_at=executed)
    enqueue.wake_dispatcher(3)
    assert len(sent) == 1


def test_wakeups_already_in_the_broker_count(sent, monkeypatch):
    class Broker:
        def queue_size(self):
            return 1

    monkeypatch.setattr(enqueue, "get_broker", Broker)
    enqueue.wake_dispatcher(5)
    assert len(sent) == 1


def test_send_wakeups_is_unconditional(sent):
    enqueue.send_wakeups(3)
    assert len(sent) == 3


def test_dispatch_without_work_is_a_no_op(sent):
    assert tasks.dispatch() == "idle"
    assert sent == []


def test_resume_of_a_moved_lease_is_a_no_op(sent, user):
    row = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=Status.RUNNING,
                                           backend=URL, attempts=1)
    RunState.objects.create(request=row, attempt=1, heartbeat_at=timezone.now())
    assert tasks.resume(row.pk, 1, timezone.now()) == "not ours any more"
    assert sent == []


def test_a_backlog_covering_every_configured_slot_skips_the_free_slot_check(sent, monkeypatch,
                                                                            django_assert_num_queries):
    class Broker:
        def queue_size(self):
            return 2  # the configured capacity

    monkeypatch.setattr(enqueue, "get_broker", Broker)
    with django_assert_num_queries(0):
        enqueue.wake_dispatcher(5)
    assert sent == []


def test_a_job_requeued_with_a_backoff_wakes_the_dispatcher_again_when_it_is_over(sent, monkeypatch):
    from datetime import timedelta

    from generation.runner import Ending

    slept = []
    monkeypatch.setattr(tasks.time, "sleep", slept.append)
    tasks._wake_after(Ending(woke=False, retry_at=timezone.now() + timedelta(seconds=2)))
    assert len(sent) == 2  # one for the slot it freed now, one once the backoff is over
    assert 1.5 < slept[0] <= 2.0
    tasks._wake_after(Ending(woke=True))
    assert len(sent) == 2
