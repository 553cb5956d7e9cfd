"""Idempotency keys: fingerprints, scopes, expiry (the API's behaviour: tests/generation/api/test_requests.py,
concurrent submits: tests/generation/api/test_limits.py)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from generation import reconciler
from generation.errors import IdempotencyKeyReused
from generation.idempotency import REGENERATE, SUBMIT, Idempotency, IdempotencyRecord, fingerprint, purge_expired_keys
from generation.models import GenerationRequest
from generation.services import regenerate_generation, submit_generation


@pytest.fixture(autouse=True)
def no_wakeups(monkeypatch):
    monkeypatch.setattr("generation.enqueue.wake_dispatcher", lambda count=1: None)


def test_fingerprints_ignore_key_order_but_not_values_operations_or_targets():
    body = {"prompt": "a", "sampler_params": {"seed": 1, "steps": 4}}
    same = {"sampler_params": {"steps": 4, "seed": 1}, "prompt": "a"}
    assert fingerprint(operation=SUBMIT, body=body) == fingerprint(operation=SUBMIT, body=same)
    assert fingerprint(operation=SUBMIT, body=body) != fingerprint(operation=SUBMIT, body={**body, "prompt": "b"})
    assert fingerprint(operation=SUBMIT, body={}) != fingerprint(operation=REGENERATE, body={})
    assert fingerprint(operation=REGENERATE, body={}, target="a") != fingerprint(operation=REGENERATE, body={},
                                                                                 target="b")
    assert Idempotency.of(operation=SUBMIT, key=None, body=body) is None


def test_the_record_is_written_with_the_request_and_only_then(user, valid_params):
    call = Idempotency.of(operation=SUBMIT, key="k", body=valid_params)
    with pytest.raises(Exception):  # noqa: B017 - any refusal (here ParamsInvalid) stores nothing
        submit_generation(user=user, data={**valid_params, "width": 3}, idempotency=call)
    assert not IdempotencyRecord.objects.exists()
    request, created = submit_generation(user=user, data=valid_params, idempotency=call)
    record = IdempotencyRecord.objects.get()
    assert created and (record.request_id, record.operation, record.key) == (request.pk, SUBMIT, "k")


def test_a_different_call_under_the_same_key_is_refused(user, valid_params):
    submit_generation(user=user, data=valid_params, idempotency=Idempotency.of(operation=SUBMIT, key="k",
                                                                                body=valid_params))
    other = Idempotency.of(operation=SUBMIT, key="k", body={**valid_params, "prompt": "other"})
    with pytest.raises(IdempotencyKeyReused) as caught:
        submit_generation(user=user, data={**valid_params, "prompt": "other"}, idempotency=other)
    assert caught.value.status == 422 and list(caught.value.fields) == ["Idempotency-Key"]
    assert GenerationRequest.objects.count() == 1


def test_regenerate_keys_live_apart_from_submit_keys(user, valid_params):
    original, _ = submit_generation(user=user, data=valid_params,
                                    idempotency=Idempotency.of(operation=SUBMIT, key="k", body=valid_params))
    call = Idempotency.of(operation=REGENERATE, key="k", body={}, target=original.pk)
    again, created = regenerate_generation(request=original, user=user, idempotency=call)
    replayed, created_again = regenerate_generation(request=original, user=user, idempotency=call)
    assert created and not created_again and again.pk == replayed.pk != original.pk
    assert again.regenerated_from_id == original.pk


def test_keys_stored_before_fingerprints_match_any_call(user, valid_params):
    """The migration copies old GenerationRequest.idempotency_key values with an empty fingerprint."""
    old, _ = submit_generation(user=user, data=valid_params)
    IdempotencyRecord.objects.create(user=user, operation=SUBMIT, key="legacy", fingerprint="", request=old)
    call = Idempotency.of(operation=SUBMIT, key="legacy", body={"anything": 1})
    assert submit_generation(user=user, data={"anything": 1}, idempotency=call) == (old, False)


def test_expired_keys_are_purged_by_the_reconciler(user, valid_params, settings):
    submit_generation(user=user, data=valid_params, idempotency=Idempotency.of(operation=SUBMIT, key="k",
                                                                                body=valid_params))
    assert purge_expired_keys() == 0
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS + 1))
    assert reconciler.reconcile()["idempotency_keys_expired"] == 1
    assert not IdempotencyRecord.objects.exists() and GenerationRequest.objects.count() == 1


def test_deleting_the_request_forgets_its_key(user, valid_params):
    request, _ = submit_generation(user=user, data=valid_params,
                                   idempotency=Idempotency.of(operation=SUBMIT, key="k", body=valid_params))
    GenerationRequest.objects.filter(pk=request.pk).delete()
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_migration_copies_keys_stored_on_requests(user):
    """Migrated for real: back to before 0003, a row with a key, forward again."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("generation", "0002_generationrequest_executed_at")], [("generation", "0003_idempotency")]
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes("generation")
    try:
        executor.migrate(before)
        old = executor.loader.project_state(before).apps.get_model("generation", "GenerationRequest")
        keyed = old.objects.create(user_id=user.pk, prompt="p", checkpoint_model="c", idempotency_key="old-key")
        old.objects.create(user_id=user.pk, prompt="p", checkpoint_model="c")
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        records = executor.loader.project_state(after).apps.get_model("generation", "IdempotencyRecord")
        record = records.objects.get()
        assert (record.request_id, record.key, record.operation, record.fingerprint) == (
            keyed.pk, "old-key", SUBMIT, "")
        assert record.created_at == keyed.created_at
    finally:
        MigrationExecutor(connection).migrate(latest)
