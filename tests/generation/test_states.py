"""The status state machine: every transition, terminal states, conditions, and real races on PostgreSQL."""

import functools
import itertools
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.db.models import F
from django.utils import timezone

from generation import lifecycle, states
from generation.models import GenerationRequest, RunState
from generation.runner import take_over
from generation.states import ALLOWED_FROM, TERMINAL, InvalidTransition, Lease, Status, can_transition, transition
from tests.concurrency import run_concurrently

ALL = list(Status)
ALLOWED = {(frm, to) for to, froms in ALLOWED_FROM.items() for frm in froms}
EXPECTED_ALLOWED = {
    (Status.PENDING, Status.QUEUED), (Status.RUNNING, Status.QUEUED),  # queue; recover a lost prompt
    (Status.QUEUED, Status.RUNNING),
    (Status.RUNNING, Status.COMPLETED),
    (Status.PENDING, Status.FAILED), (Status.QUEUED, Status.FAILED), (Status.RUNNING, Status.FAILED),
    (Status.PENDING, Status.CANCELLED), (Status.QUEUED, Status.CANCELLED), (Status.RUNNING, Status.CANCELLED),
}
STAMP = {Status.QUEUED: "queued_at", Status.RUNNING: "started_at", Status.COMPLETED: "finished_at",
         Status.FAILED: "finished_at", Status.CANCELLED: "finished_at"}


def make_request(user, status=Status.PENDING, **fields):
    return GenerationRequest.objects.create(user=user, prompt="a red fox", checkpoint_model="m.safetensors",
                                            status=status, **fields)


def test_the_table_is_the_documented_machine():
    assert ALLOWED == EXPECTED_ALLOWED
    for frm, to in itertools.product(ALL, ALL):
        assert can_transition(frm, to) == ((frm, to) in EXPECTED_ALLOWED)


@pytest.mark.parametrize("frm, to", sorted(itertools.product(ALL, ALL)))
def test_every_pair(user, frm, to):
    request = make_request(user, frm)
    if to == Status.PENDING:
        with pytest.raises(InvalidTransition):
            transition(request.pk, to)
        return
    won = transition(request.pk, to)
    request.refresh_from_db()
    if (frm, to) in EXPECTED_ALLOWED:
        assert won is True
        assert request.status == to
        assert getattr(request, STAMP[to]) is not None
    else:
        assert won is False
        assert request.status == frm
        assert request.queued_at is request.started_at is request.finished_at is None


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_never_change(user, terminal):
    request = make_request(user, terminal, finished_at="2026-01-01T00:00:00Z", error="kept")
    for to in ALL:
        if to == Status.PENDING:
            continue
        assert transition(request.pk, to, error="overwritten") is False
    request.refresh_from_db()
    assert request.status == terminal and request.error == "kept"
    assert str(request.finished_at.year) == "2026"


def test_fields_are_written_in_the_same_update(user):
    request = make_request(user, Status.QUEUED)
    assert transition(request.pk, Status.RUNNING, backend="http://b1", attempts=F("attempts") + 1)
    request.refresh_from_db()
    assert (request.backend, request.attempts) == ("http://b1", 1)


def test_losing_transition_writes_no_field(user):
    request = make_request(user, Status.QUEUED)
    assert transition(request.pk, Status.COMPLETED, outputs=["x.png"]) is False
    request.refresh_from_db()
    assert request.outputs == [] and request.status == Status.QUEUED


def test_expect_narrows_the_from_states(user):
    running = make_request(user, Status.RUNNING)
    # running → queued is allowed in general, but not when the caller only expects pending
    assert transition(running.pk, Status.QUEUED, expect={Status.PENDING}) is False
    assert transition(running.pk, Status.QUEUED, expect={Status.RUNNING}) is True
    with pytest.raises(InvalidTransition):
        transition(running.pk, Status.COMPLETED, expect={Status.QUEUED})
    with pytest.raises(ValueError):
        transition(running.pk, "nonsense")


def test_where_conditions_guard_against_an_older_attempt(user):
    request = make_request(user, Status.RUNNING, attempts=2, backend="http://b2")
    assert transition(request.pk, Status.COMPLETED, where={"attempts": 1}) is False
    assert transition(request.pk, Status.COMPLETED, where={"attempts": 2, "backend": "http://b1"}) is False
    request.refresh_from_db()
    assert request.status == Status.RUNNING
    assert transition(request.pk, Status.COMPLETED, where={"attempts": 2, "backend": "http://b2"}) is True


def test_a_lease_must_be_the_holders(user):
    """A worker's transition needs its attempt and its lease in RunState (nobody took the job over)."""
    now = timezone.now()
    request = make_request(user, Status.RUNNING, attempts=2)
    RunState.objects.create(request=request, attempt=2, heartbeat_at=now)
    assert transition(request.pk, Status.FAILED, lease=Lease(2, now - timedelta(seconds=1))) is False
    assert transition(request.pk, Status.FAILED, lease=Lease(1, now)) is False
    assert GenerationRequest.objects.get(pk=request.pk).status == Status.RUNNING
    assert transition(request.pk, Status.FAILED, lease=Lease(2, now)) is True


def test_unknown_request_is_a_lost_race_not_an_error(db):
    import uuid

    assert transition(uuid.uuid4(), Status.CANCELLED) is False


def test_explicit_timestamp_is_kept(user):
    request = make_request(user)
    assert transition(request.pk, Status.QUEUED, queued_at="2026-02-03T04:05:06Z")
    request.refresh_from_db()
    assert request.queued_at.isoformat().startswith("2026-02-03T04:05:06")


# --- real races: two threads, two PostgreSQL connections -------------------------------------------

ROUNDS = 20


def race(*actions):
    """Run each action in its own thread and connection, all released at once; return their results.

    Each action runs in a transaction held briefly after its UPDATE, so the other UPDATE really
    overlaps and PostgreSQL has to block it and re-check the WHERE clause after the commit.
    """
    barrier = threading.Barrier(len(actions))
    results = [None] * len(actions)
    errors = []

    def run(index, action):
        try:
            barrier.wait(timeout=10)
            with transaction.atomic():
                results[index] = action()
                time.sleep(0.005)
        except Exception as exc:  # surfaced below: a thread's exception must fail the test
            errors.append(exc)
        finally:
            connections.close_all()

    run_concurrently([functools.partial(run, i, a) for i, a in enumerate(actions)])
    assert errors == []
    return results


pytestmark_race = pytest.mark.django_db(transaction=True)


@pytestmark_race
def test_cancel_racing_completion_has_exactly_one_winner(make_user):
    assert connection.vendor == "postgresql"
    user = make_user("racer")
    winners = {"cancel": 0, "complete": 0}
    for _ in range(ROUNDS):
        request = make_request(user, Status.RUNNING, attempts=1)
        cancel, complete = race(
            lambda pk=request.pk: transition(pk, Status.CANCELLED),
            lambda pk=request.pk: transition(pk, Status.COMPLETED, expect={Status.RUNNING}, where={"attempts": 1},
                                             outputs=["done.png"]),
        )
        assert cancel != complete, "exactly one of them must win"
        request.refresh_from_db()
        if cancel:
            winners["cancel"] += 1
            assert request.status == Status.CANCELLED and request.outputs == []
        else:
            winners["complete"] += 1
            assert request.status == Status.COMPLETED and request.outputs == ["done.png"]
        assert request.finished_at is not None
    assert sum(winners.values()) == ROUNDS


@pytestmark_race
def test_two_workers_claiming_one_job_have_exactly_one_winner(make_user):
    user = make_user("racer")
    for _ in range(ROUNDS):
        request = make_request(user, Status.QUEUED)
        first, second = race(
            lambda pk=request.pk: transition(pk, Status.RUNNING, expect={Status.QUEUED}, backend="http://w1",
                                             attempts=F("attempts") + 1),
            lambda pk=request.pk: transition(pk, Status.RUNNING, expect={Status.QUEUED}, backend="http://w2",
                                             attempts=F("attempts") + 1),
        )
        assert [first, second].count(True) == 1
        request.refresh_from_db()
        assert request.status == Status.RUNNING
        assert request.attempts == 1, "the loser must not have bumped attempts"
        assert request.backend == ("http://w1" if first else "http://w2")


@pytestmark_race
def test_a_takeover_racing_the_workers_heartbeat_has_exactly_one_winner(make_user):
    """The reconciler replacing a lease and the worker renewing it update one RunState row: one wins."""
    user = make_user("racer")
    winners = {"takeover": 0, "heartbeat": 0}
    for _ in range(ROUNDS):
        lease = timezone.now() - timedelta(minutes=1)
        request = make_request(user, Status.RUNNING, attempts=1)
        RunState.objects.create(request=request, attempt=1, heartbeat_at=lease)
        taken, renewed = race(
            lambda pk=request.pk, lease=lease: take_over(pk, 1, lease),
            lambda pk=request.pk, lease=lease: RunState.objects.filter(
                request_id=pk, attempt=1, heartbeat_at=lease).update(heartbeat_at=timezone.now()) == 1,
        )
        assert (taken is not None) != renewed, "exactly one of them must hold the lease"
        winners["takeover" if taken else "heartbeat"] += 1
        assert RunState.objects.get(request=request).heartbeat_at != lease
    assert sum(winners.values()) == ROUNDS


@pytestmark_race
def test_cancel_racing_a_leased_completion_has_exactly_one_winner(make_user):
    user = make_user("racer")
    for _ in range(ROUNDS):
        lease = timezone.now()
        request = make_request(user, Status.RUNNING, attempts=1)
        RunState.objects.create(request=request, attempt=1, heartbeat_at=lease)
        cancel, complete = race(
            lambda pk=request.pk: transition(pk, Status.CANCELLED),
            lambda pk=request.pk, lease=lease: transition(pk, Status.COMPLETED, lease=Lease(1, lease),
                                                          outputs=["done.png"]),
        )
        assert cancel != complete, "exactly one of them must win"
        request.refresh_from_db()
        assert request.status == (Status.CANCELLED if cancel else Status.COMPLETED)


@pytestmark_race
def test_lifecycle_consequences_run_only_for_the_winner(make_user, monkeypatch):
    user = make_user("racer")
    finished = []
    monkeypatch.setattr("generation.lifecycle.request_finished", finished.append)
    request = make_request(user, Status.RUNNING)
    results = race(lambda: lifecycle.transition(request.pk, Status.FAILED, error="boom"),
                   lambda: lifecycle.transition(request.pk, Status.CANCELLED))
    assert results.count(True) == 1
    assert finished == [request.pk]


def test_the_state_machine_depends_on_nothing_above_it():
    """states.py decides only: consequences (webhooks, events) live in generation.lifecycle."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(states))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {name for name in imported if name.startswith("generation")} <= {"generation.models"}


def test_module_has_one_owner_of_status(user):
    """Status only changes through states.transition: the model has no other writer helper."""
    assert not hasattr(GenerationRequest, "set_status")
    assert states.transition is transition
