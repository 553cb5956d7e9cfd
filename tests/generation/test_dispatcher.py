import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from generation.dispatcher import _Backend, _Candidate, choose, claim_next, fair_order, prompt_id_for
from generation.models import BackendState, DispatchTurn, GenerationRequest, RunState
from generation.states import Status
from tests.concurrency import run_concurrently

A, B = "http://127.0.0.1:9001", "http://127.0.0.1:9002"


@pytest.fixture
def two_backends(settings):
    settings.COMFYUI_BACKENDS = [{"url": A, "capacity": 2}, {"url": B, "capacity": 2}]
    return settings


def _queued(user, *, checkpoint="ckpt-a.safetensors", age=0.0, **fields):
    created = timezone.now() - timedelta(seconds=1000 - age)
    request = GenerationRequest.objects.create(user=user, prompt="p", checkpoint_model=checkpoint,
                                               status=Status.QUEUED, queued_at=created, **fields)
    GenerationRequest.objects.filter(pk=request.pk).update(created_at=created)
    return request


def _cand(checkpoint, skips=0):
    return _Candidate(uuid.uuid4(), 1, checkpoint, 0, skips)


# --- choose(): pure decisions ---------------------------------------------------------------


def test_head_goes_to_backend_with_its_checkpoint():
    head = _cand("x")
    picked = choose([head, _cand("y")], [_Backend(A, 2, 0, "y"), _Backend(B, 2, 0, "x")])
    assert picked == (head, _Backend(B, 2, 0, "x"), [])


def test_affinity_skips_the_head_for_a_match_within_the_window():
    head, match = _cand("z"), _cand("y")
    candidate, backend, skipped = choose([head, _cand("z"), match], [_Backend(A, 2, 1, "y")])
    assert (candidate, backend.url, skipped) == (match, A, [head, skipped[1]])


def test_head_is_forced_after_max_skips():
    head = _cand("z", skips=3)
    candidate, backend, skipped = choose([head, _cand("y")], [_Backend(A, 2, 1, "y")], max_skips=3)
    assert (candidate, backend.url, skipped) == (head, A, [])


def test_without_matches_head_takes_the_least_wanted_backend():
    head = _cand("z")
    candidate, backend, _ = choose([head, _cand("z")], [_Backend(A, 2, 0, "x"), _Backend(B, 2, 0, "")])
    assert candidate is head
    # nobody else wants x or the empty backend; among equals the least loaded, then by url
    assert backend.url == A


def test_without_affinity_head_takes_the_least_loaded():
    head = _cand("y")
    candidate, backend, _ = choose([head, _cand("x")], [_Backend(A, 2, 1, "x"), _Backend(B, 2, 0, "y")],
                                   affinity=False)
    assert (candidate, backend.url) == (head, B)


def test_full_backends_and_empty_queue_give_nothing():
    assert choose([_cand("x")], [_Backend(A, 2, 2, "x")]) is None
    assert choose([], [_Backend(A, 2, 0, "x")]) is None


def test_never_idle_when_work_waits():
    # whatever the checkpoints, a free backend and a queued request always make a pair
    for loaded in ("", "x", "y"):
        assert choose([_cand("z", skips=0), _cand("w")], [_Backend(A, 1, 0, loaded)]) is not None


# --- with the database ----------------------------------------------------------------------


def test_fair_order_round_robins_users(make_user):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    a = [_queued(alice, age=i) for i in range(4)]
    b = [_queued(bob, age=10 + i) for i in range(2)]
    c = [_queued(carol, age=20)]
    assert [x.id for x in fair_order()] == [a[0].id, b[0].id, c[0].id, a[1].id, b[1].id, a[2].id, a[3].id]


def test_fair_order_serves_the_least_recently_dispatched_user_first(make_user):
    alice, bob = make_user("alice"), make_user("bob")
    first = _queued(alice, age=0)
    second = _queued(bob, age=5)
    DispatchTurn.objects.create(user=alice, last_dispatched_at=timezone.now())
    assert [x.id for x in fair_order()][:2] == [second.id, first.id]


def test_fair_order_reads_no_history(make_user, django_assert_max_num_queries):
    """Ordering users costs the same whatever their past: the claim keeps a DispatchTurn per user."""
    alice = make_user("alice")
    _queued(alice, age=0)
    with django_assert_max_num_queries(3) as captured:
        fair_order()
    assert not any("started_at" in query["sql"] for query in captured.captured_queries)


def test_a_claim_records_the_users_turn(two_backends, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    _queued(alice, age=1)
    _queued(alice, age=2)
    _queued(bob, age=9)
    first = claim_next()
    assert DispatchTurn.objects.get(user=alice).last_dispatched_at == first.lease
    assert GenerationRequest.objects.get(pk=claim_next().request_id).user == bob  # bob's turn now


def test_claim_sets_running_fields_and_respects_capacity(two_backends, user):
    requests = [_queued(user, age=i) for i in range(6)]
    claims = [claim_next() for _ in range(6)]
    assert claims[4] is None and claims[5] is None
    assert [c.request_id for c in claims[:4]] == [r.id for r in requests[:4]]
    assert sorted(c.backend for c in claims[:4]) == [A, A, B, B]
    row = GenerationRequest.objects.get(pk=claims[0].request_id)
    assert row.status == Status.RUNNING and row.attempts == 1 and row.backend == claims[0].backend
    assert row.comfyui_prompt_id == prompt_id_for(row.id, 1) == claims[0].prompt_id
    assert row.run.heartbeat_at == claims[0].lease and row.run.attempt == 1 and row.deadline_at > timezone.now()
    assert row.started_at is not None


def test_prompt_id_is_stable_per_attempt():
    rid = uuid.uuid4()
    assert prompt_id_for(rid, 1) == prompt_id_for(rid, 1) != prompt_id_for(rid, 2)


def test_claim_skips_unhealthy_backends(two_backends, user):
    claim_next()  # creates the rows
    BackendState.objects.filter(url=A).update(is_healthy=False)
    for i in range(3):
        _queued(user, age=i)
    assert {claim_next().backend, claim_next().backend} == {B}
    assert claim_next() is None


def test_claim_without_work_or_backends(two_backends, user):
    assert claim_next() is None
    two_backends.COMFYUI_BACKENDS = []
    _queued(user)
    assert claim_next() is None


def test_claim_fairness_between_users(two_backends, make_user):
    heavy, light = make_user("heavy"), make_user("light")
    for i in range(10):
        _queued(heavy, age=i)
    lone = _queued(light, age=50)
    claims = [claim_next() for _ in range(2)]
    assert lone.id in [c.request_id for c in claims]  # the lone request is second, not eleventh


def test_affinity_keeps_checkpoints_on_their_backends(two_backends, user, settings):
    settings.GENERATION = {**settings.GENERATION, "AFFINITY": True, "AFFINITY_MAX_SKIPS": 8}
    for i in range(8):
        _queued(user, checkpoint="x" if i % 2 == 0 else "y", age=i)
    seen = {}
    for _ in range(4):
        claim = claim_next()
        seen.setdefault(claim.backend, set()).add(GenerationRequest.objects.get(pk=claim.request_id).checkpoint_model)
    assert sorted(map(sorted, seen.values())) == [["x"], ["y"]]
    assert BackendState.objects.get(url=A).loaded_checkpoint != BackendState.objects.get(url=B).loaded_checkpoint


def test_round_robin_mode_mixes_checkpoints(two_backends, user, settings):
    settings.GENERATION = {**settings.GENERATION, "AFFINITY": False}
    for i in range(4):
        _queued(user, checkpoint="x" if i % 2 == 0 else "y", age=i)
    claims = [claim_next() for _ in range(4)]
    assert [c.request_id for c in claims] == list(
        GenerationRequest.objects.order_by("created_at").values_list("id", flat=True))


def test_skip_counter_grows_and_forces_the_head(two_backends, user, settings):
    settings.COMFYUI_BACKENDS = [{"url": A, "capacity": 1}]
    settings.GENERATION = {**settings.GENERATION, "AFFINITY": True, "AFFINITY_MAX_SKIPS": 2}
    claim_next()
    BackendState.objects.filter(url=A).update(loaded_checkpoint="x")
    head = _queued(user, checkpoint="y", age=0)
    for i in range(5):
        _queued(user, checkpoint="x", age=1 + i)
    order = []
    for _ in range(3):
        claim = claim_next()
        order.append(claim.request_id)
        GenerationRequest.objects.filter(pk=claim.request_id).update(status=Status.COMPLETED,
                                                                     finished_at=timezone.now())
    assert order[2] == head.id  # skipped twice, then forced
    assert head.id not in order[:2]


def test_a_job_finished_on_comfyui_frees_its_slot_while_outputs_are_stored(two_backends, user):
    two_backends.COMFYUI_BACKENDS = [{"url": A, "capacity": 1}]
    first, second = _queued(user, age=0), _queued(user, age=1)
    assert claim_next().request_id == first.id
    assert claim_next() is None
    GenerationRequest.objects.filter(pk=first.id).update(executed_at=timezone.now())
    assert claim_next().request_id == second.id


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_never_exceed_capacity_or_share_a_request(two_backends, user):
    import threading

    from django.db import connection

    two_backends.COMFYUI_BACKENDS = [{"url": A, "capacity": 3}]
    for i in range(10):
        _queued(user, age=i)
    claims, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        try:
            claims.append(claim_next())
        finally:
            connection.close()

    run_concurrently([claim] * 8)
    won = [c for c in claims if c is not None]
    assert len(won) == 3 and len({c.request_id for c in won}) == 3
    assert GenerationRequest.objects.filter(status=Status.RUNNING, backend=A).count() == 3


def test_a_request_in_its_retry_backoff_waits_while_others_go(two_backends, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    retrying = _queued(alice, age=0, attempts=1, not_before=timezone.now() + timedelta(minutes=1))
    later = _queued(bob, age=5)
    assert [c.id for c in fair_order()] == [later.id]
    assert claim_next().request_id == later.id
    assert claim_next() is None
    GenerationRequest.objects.filter(pk=retrying.pk).update(not_before=timezone.now() - timedelta(seconds=1))
    claim = claim_next()
    assert (claim.request_id, claim.attempt) == (retrying.id, 2)


def test_fair_order_with_few_users_fills_the_window_from_each(make_user):
    """Fewer users than the window: each contributes its next requests, interleaved (affinity needs them)."""
    alice, bob = make_user("alice"), make_user("bob")
    a = [_queued(alice, age=i) for i in range(10)]
    b = [_queued(bob, age=20 + i) for i in range(10)]
    order = [c.id for c in fair_order(limit=6)]
    assert order == [a[0].id, b[0].id, a[1].id, b[1].id, a[2].id, b[2].id]


def test_fair_order_costs_the_same_with_many_waiting_users(make_user, django_assert_max_num_queries):
    """With at least a window of users waiting, one query finds them and their first requests."""
    for n in range(20):
        _queued(make_user(f"user{n}"), age=n)
    with django_assert_max_num_queries(1):
        order = fair_order(limit=16)
    assert len(order) == 16 and len({c.user_id for c in order}) == 16


def test_a_claim_leaves_a_fresh_lease_and_zero_progress(two_backends, user):
    request = _queued(user, attempts=1)
    RunState.objects.create(request=request, attempt=1, progress=0.7, current_node="KSampler (3)", current_step=9,
                            total_steps=10)
    claim = claim_next()
    run = RunState.objects.get(request=request)
    assert (run.attempt, run.heartbeat_at, run.progress, run.current_node, run.current_step) == (
        2, claim.lease, 0.0, "", 0)


# --- capabilities ------------------------------------------------------------------------------


def _needs(checkpoint):
    """A RequirementSet for txt2img with ``checkpoint`` (its key)."""
    from generation.models import RequirementSet
    from generation.workflows import Requirements

    requirements = Requirements.of(["CheckpointLoaderSimple", "KSampler", "SaveImage"], [("checkpoints", checkpoint)])
    RequirementSet.objects.get_or_create(key=requirements.key, defaults={
        "nodes": list(requirements.nodes), "model_files": requirements.as_json()["models"]})
    return requirements.key


def _capable(url, checkpoints):
    BackendState.objects.update_or_create(url=url, defaults={
        "node_classes": ["CheckpointLoaderSimple", "KSampler", "SaveImage"],
        "model_lists": {"checkpoints": checkpoints}, "capabilities_at": timezone.now()})


def test_a_request_goes_only_where_its_model_is(two_backends, user):
    claim_next()  # creates the rows
    _capable(A, ["common.safetensors"])
    _capable(B, ["common.safetensors", "rare.safetensors"])
    rare = _queued(user, checkpoint="rare.safetensors", age=0, requirements_id=_needs("rare.safetensors"))
    claim = claim_next()
    assert (claim.request_id, claim.backend) == (rare.id, B)


def test_a_users_request_that_cannot_run_now_does_not_hold_back_their_next_one(two_backends, make_user):
    """The head of a user's queue needs a model only a full backend has: their next request that a free
    backend can run goes in their turn (the window is read again, filtered)."""
    alice, bob = make_user("alice"), make_user("bob")
    claim_next()
    _capable(A, ["common.safetensors"])
    _capable(B, ["common.safetensors", "rare.safetensors"])
    two_backends.COMFYUI_BACKENDS = [{"url": A, "capacity": 2}, {"url": B, "capacity": 1}]
    busy = _queued(bob, checkpoint="rare.safetensors", age=0, requirements_id=_needs("rare.safetensors"))
    assert claim_next().request_id == busy.id  # B is full now
    blocked = _queued(alice, checkpoint="rare.safetensors", age=1, requirements_id=_needs("rare.safetensors"))
    runnable = _queued(alice, checkpoint="common.safetensors", age=2, requirements_id=_needs("common.safetensors"))
    claim = claim_next()
    assert (claim.request_id, claim.backend) == (runnable.id, A)
    assert GenerationRequest.objects.get(pk=blocked.id).status == Status.QUEUED
