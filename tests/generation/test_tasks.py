"""Task bodies and the wake-ups they and everyone else send (generation.enqueue)."""

import pytest
from django.utils import timezone

from generation import backends, enqueue, tasks
from generation.models import BackendState, GenerationRequest, RunState
from generation.states import Status

pytestmark = pytest.mark.django_db

URL = "http://127.0.0.1:9"


class Sent(list):
    """Each enqueued task's arguments; ``queues``: the queue each one went to."""

    def __init__(self):
        super().__init__()
        self.queues = []


@pytest.fixture
def sent(monkeypatch, settings):
    settings.COMFYUI_BACKENDS = [{"url": URL, "capacity": 2}]
    calls = Sent()

    def record(*args, **kwargs):
        calls.append(args)
        calls.queues.append(kwargs.get("cluster"))

    monkeypatch.setattr(enqueue, "async_task", record)
    return calls


def broker_of_size(size, asked=None):
    class Broker:
        def __init__(self, list_key=None):
            if asked is not None:
                asked.append(list_key)

        def queue_size(self):
            return size

    return Broker


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


def test_wakeups_already_in_the_broker_count_and_only_the_jobs_queue_is_asked(sent, monkeypatch, settings):
    asked = []
    monkeypatch.setattr(enqueue, "get_broker", broker_of_size(1, asked))
    enqueue.wake_dispatcher(5)
    assert len(sent) == 1
    assert asked == [settings.Q_QUEUES["jobs"]]  # webhooks or housekeeping waiting are not wake-ups


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
    monkeypatch.setattr(enqueue, "get_broker", broker_of_size(2))  # the configured capacity
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


# --- queues: each task goes to its role's queue ---------------------------------------------------------------

def test_each_task_goes_to_its_roles_queue(sent, settings):
    enqueue.send_wakeups(1)
    enqueue.resume_job("r", 1, timezone.now())
    enqueue.deliver_webhook("r")
    queues = settings.Q_QUEUES
    assert sent.queues == [queues["jobs"], queues["housekeeping"], queues["webhooks"]]
    assert len(set(queues.values())) == 3


def test_registry_jobs_go_to_the_housekeeping_queue(monkeypatch, settings):
    from models_registry import tasks as registry_tasks

    calls = []
    monkeypatch.setattr(registry_tasks, "async_task", lambda *args, **kwargs: calls.append(kwargs["cluster"]))
    registry_tasks.enqueue_refresh(1)
    registry_tasks.enqueue_hashes([1, 2])
    assert calls == [settings.Q_QUEUES["housekeeping"]] * 2


def test_schedules_name_the_cluster_that_runs_them(settings):
    from django_q.models import Schedule

    list(enqueue.ensure_schedules())
    enqueue.schedule_webhook_retry("r", attempt=2, delay=30)
    clusters = dict(Schedule.objects.values_list("func", "cluster"))
    assert clusters == {enqueue.RECONCILE: settings.Q_QUEUES["housekeeping"],
                        enqueue.DELIVER_WEBHOOK: settings.Q_QUEUES["webhooks"]}


# --- a down backend is probed by a schedule, not by a sleeping worker ------------------------------------------

def test_a_backend_that_left_rotation_gets_one_probe_scheduled_at_its_backoff(sent, settings):
    from django_q.models import Schedule

    backends.sync_backends()
    assert backends.mark_down(URL, "refused")
    enqueue.watch_backend(URL)
    enqueue.watch_backend(URL)  # again (a second outage report): still one schedule, at the latest time
    (probe,) = Schedule.objects.filter(func=enqueue.PROBE_BACKEND)
    assert probe.schedule_type == Schedule.ONCE and probe.cluster == settings.Q_QUEUES["housekeeping"]
    assert probe.next_run == BackendState.objects.get(url=URL).down_until
    assert probe.args == repr(URL) and sent == []  # nothing enqueued, nobody waits


def test_a_long_backend_url_still_fits_a_schedule_name(sent):
    from django_q.models import Schedule

    long_url = "http://" + "a" * 120 + ".example:8188"
    enqueue.schedule_probe(long_url, at=timezone.now())
    enqueue.schedule_probe(long_url + "0", at=timezone.now())
    assert Schedule.objects.filter(func=enqueue.PROBE_BACKEND).count() == 2


def test_the_probe_of_a_healthy_backend_does_nothing(sent):
    backends.sync_backends()
    assert tasks.probe_backend(URL) == "healthy"
    assert sent == []


def test_the_probe_of_a_backend_still_down_schedules_the_next_while_work_waits(sent, user, settings):
    from django_q.models import Schedule

    settings.COMFYUI_TIMEOUT = 0.2
    backends.sync_backends()
    backends.mark_down(URL, "refused")
    assert tasks.probe_backend(URL) == "still down"
    assert not Schedule.objects.filter(func=enqueue.PROBE_BACKEND).exists()  # no work waits: the reconciler's probe
    GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=Status.QUEUED)
    assert tasks.probe_backend(URL) == "still down"
    state = BackendState.objects.get(url=URL)
    assert Schedule.objects.get(func=enqueue.PROBE_BACKEND).next_run == state.down_until
    assert state.consecutive_failures == 3


def test_the_probe_of_a_backend_that_came_back_wakes_a_worker_per_free_slot(sent, settings, simulator, user):
    settings.COMFYUI_BACKENDS = [{"url": simulator.url, "capacity": 2}]
    backends.sync_backends()
    backends.mark_down(simulator.url, "was down")
    GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model="c", status=Status.QUEUED)
    assert tasks.probe_backend(simulator.url) == "back"
    assert sent == [(enqueue.DISPATCH,)] * 2 and BackendState.objects.get(url=simulator.url).is_healthy
