"""Separate queues on real clusters: a storm of slow webhook receivers occupies the webhooks cluster, and
dispatch (jobs cluster) and recovery (housekeeping cluster) go on as if it were not there."""

import threading

import pytest
from django.utils import timezone

from generation import enqueue
from generation.models import GenerationRequest
from generation.reconciler import reconcile
from generation.services import submit_generation
from generation.states import Status
from tests.loopback import LoopbackServer, QuietHandler

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

STORM = 300  # finished requests whose receivers each take HOLD seconds to answer
HOLD = 4.0


class SlowReceivers(LoopbackServer):
    """Hundreds of webhook receivers (one path each) on one loopback server, each answering after ``hold`` s."""

    def __init__(self, hold):
        self.received = 0
        self.stop = threading.Event()
        receivers = self

        class Handler(QuietHandler):
            def do_POST(self):
                self.read_body()
                receivers.received += 1
                receivers.stop.wait(hold)  # bounded: the test's end releases every held request
                self.answer()

        super().__init__(Handler)

    def close(self):
        self.stop.set()
        super().close()


@pytest.fixture
def storm(settings, make_user):
    """``storm(count)``: that many finished requests with a slow receiver each, their deliveries queued."""
    settings.GENERATION = {**settings.GENERATION, "WEBHOOK_ALLOW_PRIVATE": True}
    receivers = SlowReceivers(HOLD)
    owner = make_user("hooked")

    def start(count):
        rows = GenerationRequest.objects.bulk_create([
            GenerationRequest(user=owner, prompt=f"storm {n}", status=Status.COMPLETED, finished_at=timezone.now(),
                              webhook_url=f"{receivers.url}/receiver/{n}") for n in range(count)])
        for row in rows:
            enqueue.deliver_webhook(row.pk)
        return receivers

    yield start
    receivers.close()


def webhook_backlog():
    return enqueue.queue_sizes()["webhooks"]


def test_a_webhook_storm_delays_neither_dispatch_nor_recovery(simulator, cluster_factory, wait_for_request,
                                                              wait_until, row_of, storm, user, slow):
    simulator.configure(step_time=0.03)
    cluster = cluster_factory([simulator.url], env={"WEBHOOK_ALLOW_PRIVATE": "1", "WEBHOOK_TIMEOUT": "10"})
    receivers = storm(STORM)
    wait_until(lambda: receivers.received >= 2, what="the webhooks cluster busy with the storm")

    # dispatch: a new request runs to completion while the storm has barely started draining
    request, _ = submit_generation(user=user, data=slow(steps=4))
    row = wait_for_request(request.pk, "completed", "failed", timeout=30)
    assert row.status == "completed", row.error
    assert webhook_backlog() > STORM - 20 and receivers.received < 20

    # recovery: the jobs cluster dies mid-job; the reconciler's resume runs in the housekeeping cluster
    request, _ = submit_generation(user=user, data=slow(steps=60))
    wait_until(lambda: row_of(request).current_step >= 2, what="sampling started")
    cluster.kill(role="jobs")
    wait_until(lambda: reconcile()["taken_over"], timeout=15, interval=0.3, what="stale heartbeat taken over")
    row = wait_for_request(request.pk, "completed", "failed", timeout=30)
    assert row.status == "completed", row.error
    assert row.attempts == 1 and simulator.submissions(row.comfyui_prompt_id) == 1  # re-attached, not resubmitted
    assert webhook_backlog() > STORM - 40 and receivers.received < 40  # the storm is still there
