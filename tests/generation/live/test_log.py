"""The event log: written with the change it records, and cursors that resume without gap or repeat."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from generation import lifecycle
from generation.live import log
from generation.live.log import BadCursor, Cursor
from generation.models import GenerationRequest, RequestEvent
from generation.states import Status

pytestmark = pytest.mark.django_db


def make(user, status=Status.PENDING):
    return GenerationRequest.objects.create(user=user, prompt="a fox", checkpoint_model="m.safetensors", status=status)


def test_each_transition_is_logged_with_its_owner(user):
    request = make(user)
    assert lifecycle.transition(request.pk, Status.QUEUED, expect={Status.PENDING})
    assert lifecycle.transition(request.pk, Status.CANCELLED)
    assert not lifecycle.transition(request.pk, Status.FAILED)  # lost: nothing logged
    assert list(RequestEvent.objects.filter(request=request).order_by("id").values_list("status", "user_id")) == [
        ("queued", user.pk), ("cancelled", user.pk)]


def test_a_rolled_back_change_leaves_no_event(user):
    request = make(user)
    with pytest.raises(RuntimeError), transaction.atomic():
        lifecycle.transition(request.pk, Status.QUEUED, expect={Status.PENDING})
        raise RuntimeError("the caller's transaction fails")
    assert not RequestEvent.objects.exists()
    request.refresh_from_db()
    assert request.status == Status.PENDING


@pytest.mark.parametrize("text, settled, above", [
    ("0", 0, set()), ("42", 42, set()), ("42:43,45", 42, {43, 45}), (" 7 ", 7, set()), ("9:3,12", 9, {12})])
def test_cursor_round_trip(text, settled, above):
    cursor = Cursor.parse(text)
    assert (cursor.settled, cursor.above) == (settled, above)
    assert Cursor.parse(str(cursor)) == cursor


@pytest.mark.parametrize("text", ["", "abc", "-1", "1:", "1:a", "1;2", "1:2:3", "1" * 20, "1\x002", "²"])
def test_cursor_refuses_what_was_never_sent(text):
    with pytest.raises(BadCursor):
        Cursor.parse(text)


class Row:
    def __init__(self, id, age):
        self.id, self.created_at = id, timezone.now() - timedelta(seconds=age)


def test_cursor_settles_only_what_is_older_than_any_open_transaction():
    cursor = Cursor(10)
    now = timezone.now()
    cursor.advance([Row(12, 1), Row(13, 1)], queried_at=now)
    assert str(cursor) == "10:12,13"  # 11 may still commit: it stays findable
    cursor.advance([Row(11, 0)], queried_at=now)
    assert cursor.above == {11, 12, 13}
    cursor.advance([], queried_at=now + timedelta(seconds=log.SETTLE_SECONDS + 2))
    assert str(cursor) == "13"


def test_a_late_commit_below_a_delivered_id_is_still_delivered(user):
    """Ids are handed out in insert order, committed in any order: 2 commits, is delivered, then 1."""
    first, second = make(user, Status.QUEUED), make(user, Status.QUEUED)
    late = RequestEvent.objects.create(request=first, user=user, status="running", created_at=timezone.now())
    early = RequestEvent.objects.create(request=second, user=user, status="running", created_at=timezone.now())
    cursor = Cursor(0)
    # as if `late` were not committed yet: the stream delivered only `early`
    cursor.advance([early], queried_at=timezone.now())
    assert [e.id for e in log.events_after(cursor, user_id=user.pk)] == [late.id]
    cursor.advance([late], queried_at=timezone.now())
    assert log.events_after(cursor, user_id=user.pk) == []
    assert log.events_after(Cursor.parse(str(cursor)), user_id=user.pk) == []


def test_events_are_scoped_to_the_user_or_the_request(user, other_user):
    mine, theirs = make(user), make(other_user)
    for request in (mine, theirs):
        lifecycle.transition(request.pk, Status.QUEUED, expect={Status.PENDING})
    assert [e.request_id for e in log.events_after(Cursor(0), user_id=user.pk)] == [mine.pk]
    assert [e.request_id for e in log.events_after(Cursor(0), user_id=other_user.pk, request_id=theirs.pk)] == [
        theirs.pk]
    assert log.latest_id(user_id=user.pk) == RequestEvent.objects.get(request=mine).id


def test_old_events_are_forgotten_but_the_newest(user, settings):
    request = make(user)
    lifecycle.transition(request.pk, Status.QUEUED, expect={Status.PENDING})
    lifecycle.transition(request.pk, Status.CANCELLED)
    assert log.purge() == 0
    later = timezone.now() + timedelta(hours=settings.LIVE["EVENT_RETENTION_HOURS"], minutes=1)
    assert log.purge(later) == 1
    # kept so that ids never go back (SQLite numbers rows after the largest id)
    assert list(RequestEvent.objects.values_list("status", flat=True)) == ["cancelled"]
