"""The fan-out: who gets which message, and each transport carrying a message from one process's
publish to another's listener (Redis pub/sub, PostgreSQL NOTIFY sent at commit only, polling)."""

import pytest
from django.db import transaction

from generation import lifecycle
from generation.live import bus
from generation.live.bus import Hub, Subscription
from generation.states import Status


@pytest.fixture
def quiet_hub(monkeypatch):
    monkeypatch.setattr(Hub, "_run", lambda self: None)  # routing only: no listener thread
    return Hub()


def test_messages_go_to_their_owner_and_to_whoever_wants_everything(quiet_hub):
    mine = quiet_hub.subscribe(Subscription(user_id=1))
    one_request = quiet_hub.subscribe(Subscription(user_id=1, request_id="r1"))
    theirs = quiet_hub.subscribe(Subscription(user_id=2))
    staff = quiet_hub.subscribe(Subscription(everything=True, kinds={"event", "backend"}))
    quiet_hub.dispatch({"k": "progress", "u": 1, "r": "r2", "f": 0.5})
    quiet_hub.dispatch({"k": "backend"})
    assert [m["k"] for m in mine.take()[0]] == ["progress"]
    assert one_request.take()[0] == [] and theirs.take()[0] == []
    assert [m["k"] for m in staff.take()[0]] == ["backend"]  # not the progress: not a kind it wants


def test_another_users_status_change_moves_a_waiting_stream(quiet_hub):
    waiting, idle = Subscription(user_id=1), Subscription(user_id=3)
    waiting.watch_others = True
    for subscription in (waiting, idle):
        quiet_hub.subscribe(subscription)
    quiet_hub.dispatch({"k": "event", "u": 2, "r": "x", "e": 9, "s": "running"})
    assert waiting.take() == ([], False, True)
    assert idle.take() == ([], False, False)


def test_a_resync_reaches_everyone_and_an_overflow_is_flagged(quiet_hub):
    subscription = quiet_hub.subscribe(Subscription(user_id=1))
    for n in range(Subscription.MAX_INBOX + 5):
        quiet_hub.dispatch({"k": "progress", "u": 1, "r": "r", "f": n})
    quiet_hub.dispatch({"k": "resync"})
    messages, overflowed, _ = subscription.take()
    assert overflowed and len(messages) <= Subscription.MAX_INBOX
    quiet_hub.unsubscribe(subscription)
    quiet_hub.dispatch({"k": "resync"})
    assert subscription.take()[0] == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("transport", ["redis", "postgres", "poll"])
def test_a_committed_change_reaches_a_listener_and_a_rolled_back_one_does_not(transport, live_settings, user,
                                                                              make_generation):
    live_settings(transport)
    kept, undone = make_generation(user, Status.PENDING), make_generation(user, Status.PENDING)
    subscription = bus.hub.subscribe(Subscription(user_id=user.pk))
    assert bus.hub.connected.wait(5)
    with pytest.raises(RuntimeError), transaction.atomic():
        lifecycle.transition(undone.pk, Status.QUEUED, expect={Status.PENDING})
        raise RuntimeError("rolled back")
    lifecycle.transition(kept.pk, Status.QUEUED, expect={Status.PENDING})
    received = []
    for _ in range(50):
        subscription.wait(0.1)
        received += [m for m in subscription.take()[0] if m["k"] == "event"]
        if received:
            break
    assert [(m["r"], m["s"], m["u"]) for m in received] == [(str(kept.pk), "queued", user.pk)]
