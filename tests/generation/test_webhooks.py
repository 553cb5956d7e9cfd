"""Webhook delivery to a real receiver on 127.0.0.1: signature, retries with backoff, no redirects,
refusal of non-http(s) and private addresses. The address policy, pinning and DNS rebinding:
tests/generation/test_netguard.py."""

import ast
import datetime
import hashlib
import hmac
import json
import time

import pytest
from django.utils import timezone
from django_q.models import Schedule

from generation import lifecycle, webhooks
from generation.models import GenerationRequest, MetricCounter
from generation.states import Status
from generation.webhooks import WebhookUrlRefused, check_webhook_url, deliver_webhook
from tests.loopback import LoopbackServer, QuietHandler

pytestmark = pytest.mark.integration


class Receiver(LoopbackServer):
    """An HTTP server on a free loopback port that records POSTs and answers from a script."""

    def __init__(self):
        self.received = []
        self.answers = []  # (status, headers, delay) per call; then 200
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = self.read_body()
                receiver.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, headers, delay = receiver.answers.pop(0) if receiver.answers else (200, {}, 0)
                time.sleep(delay)
                self.answer(status, headers)

        super().__init__(Handler)
        self.url += "/hook"


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def finished(user, make_generation, receiver):
    return make_generation(user, Status.COMPLETED, images=1, webhook_url=receiver.url)


def test_delivers_a_signed_body_once(finished, receiver, user):
    assert deliver_webhook(str(finished.pk)) == "delivered"
    assert len(receiver.received) == 1
    call = receiver.received[0]
    secret = webhooks.webhook_secret_for(user).secret
    expected = "sha256=" + hmac.new(secret.encode(), call["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(call["headers"]["X-Genonaut-Signature"], expected)
    assert abs(int(call["headers"]["X-Genonaut-Timestamp"]) - time.time()) < 60
    assert call["headers"]["Content-Type"] == "application/json"
    body = json.loads(call["body"])
    assert body["id"] == str(finished.pk) and body["status"] == "completed"
    assert body["images"][0]["url"] == f"/api/v1/comfyui/{finished.pk}/images/0/"
    finished.refresh_from_db()
    assert finished.webhook_delivered_at is not None
    assert deliver_webhook(str(finished.pk)) == "skipped"  # a re-delivered task sends nothing twice
    assert len(receiver.received) == 1


def test_rotated_secret_signs_later_deliveries(finished, receiver, user, make_generation):
    old = webhooks.webhook_secret_for(user).secret
    new = webhooks.rotate_webhook_secret(user).secret
    assert new != old
    deliver_webhook(str(finished.pk))
    body = receiver.received[0]["body"]
    assert receiver.received[0]["headers"]["X-Genonaut-Signature"] == webhooks.sign(body, new)


def test_a_500_is_retried_with_backoff_through_a_one_off_schedule(finished, receiver, settings):
    receiver.answers = [(500, {}, 0)]
    before = timezone.now()
    assert deliver_webhook(str(finished.pk), attempt=1) == "retry"
    schedule = Schedule.objects.get(func="generation.tasks.deliver_webhook")
    assert schedule.schedule_type == Schedule.ONCE
    backoff = settings.GENERATION["WEBHOOK_BACKOFF_SECONDS"]
    assert before + datetime.timedelta(seconds=backoff - 1) <= schedule.next_run
    assert schedule.next_run <= timezone.now() + datetime.timedelta(seconds=backoff + 1)
    # what the Django-Q scheduler will call (it literal_evals args and kwargs the same way)
    args, kwargs = ast.literal_eval(schedule.args), ast.literal_eval(schedule.kwargs)
    assert kwargs == {"attempt": 2}
    from generation.tasks import deliver_webhook as task

    assert task(args, **kwargs) == "delivered"
    assert [call["headers"]["X-Genonaut-Delivery-Attempt"] for call in receiver.received] == ["1", "2"]
    assert schedule.cluster == settings.Q_QUEUES["webhooks"]  # run by the webhooks cluster's scheduler
    assert dict(MetricCounter.objects.values_list("labels", "count")) == {'{"outcome":"retry"}': 1,
                                                                         '{"outcome":"delivered"}': 1}


def test_backoff_grows_and_is_capped(settings):
    settings.GENERATION = {**settings.GENERATION, "WEBHOOK_BACKOFF_SECONDS": 30}
    assert [webhooks.backoff_seconds(n) for n in (1, 2, 3, 4, 5, 6)] == [30, 120, 480, 1920, 3600, 3600]


def test_gives_up_after_the_last_attempt(finished, receiver, settings):
    receiver.answers = [(503, {}, 0)]
    last = settings.GENERATION["WEBHOOK_MAX_ATTEMPTS"]
    assert deliver_webhook(str(finished.pk), attempt=last) == "gave_up"
    assert not Schedule.objects.exists()
    assert MetricCounter.objects.get(name="webhook_deliveries").labels == '{"outcome":"gave_up"}'
    finished.refresh_from_db()
    assert finished.webhook_delivered_at is None


def test_redirects_are_not_followed(finished, receiver):
    receiver.answers = [(302, {"Location": receiver.url.replace("/hook", "/elsewhere")}, 0)]
    assert deliver_webhook(str(finished.pk)) == "retry"
    assert [call["path"] for call in receiver.received] == ["/hook"]


def test_a_slow_receiver_times_out_and_is_retried(finished, receiver, settings):
    settings.GENERATION = {**settings.GENERATION, "WEBHOOK_TIMEOUT": 0.3}
    receiver.answers = [(200, {}, 1.5)]
    started = time.monotonic()
    assert deliver_webhook(str(finished.pk)) == "retry"
    assert time.monotonic() - started < 1.4


def test_refused_connection_is_retried(user, make_generation):
    import socket

    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    request = make_generation(user, Status.FAILED, webhook_url=f"http://127.0.0.1:{port}/hook")
    assert deliver_webhook(str(request.pk)) == "retry"


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://example.com", "javascript:x",
                                 "http://user:pw@example.com/", "http:///nohost", "http://example.com:99999/"])
def test_non_http_urls_are_refused(url):
    with pytest.raises(WebhookUrlRefused):
        check_webhook_url(url)


def test_a_non_http_url_in_the_row_is_refused_at_delivery(user, make_generation):
    request = make_generation(user, Status.COMPLETED)
    GenerationRequest.objects.filter(pk=request.pk).update(webhook_url="file:///etc/passwd")
    assert deliver_webhook(str(request.pk)) == "gave_up"
    assert not Schedule.objects.exists()


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.10", "169.254.169.254", "::1", "0.0.0.0"])
def test_private_addresses_are_refused_unless_allowed(settings, address):
    settings.GENERATION = {**settings.GENERATION, "WEBHOOK_ALLOW_PRIVATE": False}
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(WebhookUrlRefused):
        check_webhook_url(f"http://{host}/hook")
    settings.GENERATION = {**settings.GENERATION, "WEBHOOK_ALLOW_PRIVATE": True}
    assert check_webhook_url(f"http://{host}/hook")


def test_delivery_to_a_private_receiver_is_refused_when_not_allowed(finished, receiver, settings):
    settings.GENERATION = {**settings.GENERATION, "WEBHOOK_ALLOW_PRIVATE": False}
    assert deliver_webhook(str(finished.pk)) == "gave_up"
    assert receiver.received == []


def test_api_refuses_private_webhook_urls_when_not_allowed(api, valid_params, settings, receiver):
    settings.GENERATION = {**settings.GENERATION, "WEBHOOK_ALLOW_PRIVATE": False}
    response = api.post("/api/v1/comfyui/generate/", {**valid_params, "webhook_url": receiver.url}, format="json")
    assert response.status_code == 400 and "webhook_url" in response.json()["error"]["fields"]


def test_terminal_transition_enqueues_the_delivery_task(user, make_generation, receiver, monkeypatch, settings,
                                                        django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr("generation.enqueue.async_task", lambda *args, **kwargs: sent.append((args, kwargs)))
    request = make_generation(user, Status.RUNNING, webhook_url=receiver.url)
    silent = make_generation(user, Status.RUNNING)
    with django_capture_on_commit_callbacks(execute=True):
        assert lifecycle.transition(request.pk, Status.COMPLETED)
        assert lifecycle.transition(silent.pk, Status.FAILED)
    assert sent == [(("generation.tasks.deliver_webhook", str(request.pk)),
                     {"attempt": 1, "cluster": settings.Q_QUEUES["webhooks"]})]
    assert deliver_webhook(*sent[0][0][1:], attempt=sent[0][1]["attempt"]) == "delivered"
    assert MetricCounter.objects.get(name="webhook_deliveries").labels == '{"outcome":"delivered"}'


def test_unfinished_or_deleted_requests_are_skipped(user, make_generation, receiver):
    running = make_generation(user, Status.RUNNING, webhook_url=receiver.url)
    assert deliver_webhook(str(running.pk)) == "skipped"
    assert deliver_webhook("00000000-0000-0000-0000-000000000000") == "skipped"
    assert receiver.received == []
