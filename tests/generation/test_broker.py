"""The ORM broker woken by NOTIFY: a waiting pusher sees a new task at once, and polls when it cannot listen."""

import threading
import time

import pytest
from django.db import connection
from django_q.conf import Conf
from django_q.models import OrmQ

from generation.broker import NotifyingORM, channel_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker(monkeypatch):
    monkeypatch.setattr(Conf, "POLL", 5.0)  # far longer than any wake-up below may take
    broker = NotifyingORM(list_key="test-broker")
    yield broker
    broker._close_listener()
    OrmQ.objects.filter(key="test-broker").delete()


def test_the_settings_use_it_on_a_direct_postgresql_connection(settings):
    assert connection.vendor == "postgresql"
    assert settings.Q_CLUSTER["broker_class"] == "generation.broker.NotifyingORM"


def test_channels_are_identifiers_whatever_the_queue_is_called():
    long_name = "x" * 200
    assert len(channel_for(long_name)) <= 63 and channel_for(long_name) != channel_for("other")
    assert channel_for("genonaut").isidentifier()


def test_a_waiting_pusher_is_woken_by_an_enqueue(broker):
    assert broker.dequeue() is None  # sets up the listener, then waits a full poll… or not, if woken
    sender = NotifyingORM(list_key="test-broker")
    threading.Timer(0.3, lambda: (sender.enqueue("payload"), connection.close())).start()
    started = time.monotonic()
    assert broker.dequeue() is None  # the wake-up ends the wait; the task is found on the next look
    woken_after = time.monotonic() - started
    tasks = broker.dequeue()
    assert [payload for _, payload in tasks] == ["payload"]
    assert woken_after < 2.5, f"waited {woken_after:.1f} s: the notification did not wake the pusher"


def test_a_task_enqueued_between_the_look_and_the_wait_is_not_waited_out(broker):
    broker._listening()  # listening before the look, as dequeue() does
    NotifyingORM(list_key="test-broker").enqueue("early")
    started = time.monotonic()
    tasks = broker.dequeue()
    assert [payload for _, payload in tasks] == ["early"] and time.monotonic() - started < 2.5
    started = time.monotonic()
    assert broker.dequeue() is None  # its notification is drained: nothing left, yet no stale wake-up…
    assert time.monotonic() - started < 2.5  # …except the one already queued, which ends this wait early


def test_without_a_listener_it_polls_like_the_orm_broker(broker, monkeypatch):
    import psycopg

    def refused(*args, **kwargs):
        raise psycopg.OperationalError("no direct connection")

    monkeypatch.setattr(Conf, "POLL", 0.2)
    monkeypatch.setattr(psycopg, "connect", refused)
    started = time.monotonic()
    assert broker.dequeue() is None
    assert time.monotonic() - started > 0.15
    NotifyingORM(list_key="test-broker").enqueue("polled")
    assert [payload for _, payload in broker.dequeue()] == ["polled"]


def test_a_listener_that_dies_falls_back_to_polling(broker, monkeypatch):
    monkeypatch.setattr(Conf, "POLL", 0.2)
    listener = broker._listening()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [listener.info.backend_pid])
    assert broker.dequeue() is None  # logged, slept a poll
    NotifyingORM(list_key="test-broker").enqueue("after")
    assert [payload for _, payload in broker.dequeue()] == ["after"]
