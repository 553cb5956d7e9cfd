"""Database constraints protect the data even when code bypasses validation."""

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from generation.models import GenerationRequest, RunState
from generation.states import TERMINAL, Status
from models_registry.models import AvailableModel, ModelType


def create(user, **fields):
    values = {"prompt": "a red fox", "checkpoint_model": "m.safetensors", **fields}
    return GenerationRequest.objects.create(user=user, **values)


def rejected(user, **fields):
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        create(user, **fields)
    return str(caught.value)


def test_defaults(user):
    request = create(user)
    assert request.status == Status.PENDING
    assert (request.width, request.height, request.batch_size, request.progress) == (512, 512, 1, 0.0)
    assert request.params == {} and request.outputs == [] and request.thumbnails == []
    assert (request.workflow_slug, request.workflow_version) == ("txt2img", 1)
    assert request.created_at and request.updated_at and request.finished_at is None
    assert request.is_active and not request.is_terminal


def test_status_must_be_a_known_value(user):
    assert "genreq_status_valid" in rejected(user, status="exploded")


@pytest.mark.parametrize("field, value", [("width", 15), ("width", 16385), ("height", 8), ("height", 20000)])
def test_size_range(user, field, value):
    assert "genreq_size_in_range" in rejected(user, **{field: value})


@pytest.mark.parametrize("field, value", [("width", 16), ("height", 16384)])
def test_size_limits_are_inclusive(user, field, value):
    assert getattr(create(user, **{field: value}), field) == value


@pytest.mark.parametrize("value", [0, 65])
def test_batch_range(user, value):
    assert "genreq_batch_in_range" in rejected(user, batch_size=value)


def test_batch_limits_are_inclusive(user):
    assert create(user, batch_size=1).batch_size == 1
    assert create(user, batch_size=64).batch_size == 64


@pytest.mark.parametrize("value", [-0.01, 1.01])
def test_progress_between_0_and_1(user, value):
    request = create(user)
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        RunState.objects.create(request=request, attempt=1, progress=value)
    assert "runstate_progress_0_1" in str(caught.value)


def test_progress_limits_are_inclusive(user):
    request = create(user, attempts=1)
    RunState.objects.create(request=request, attempt=1, progress=1.0)
    assert GenerationRequest.objects.select_related("run").get(pk=request.pk).progress == 1.0


def test_progress_is_read_from_the_run_state(user, django_assert_num_queries):
    """Never dispatched: no RunState and no query for it; dispatched: its row (joined when selected)."""
    fresh = create(user)
    with django_assert_num_queries(0):
        assert (fresh.progress, fresh.current_node, fresh.current_step, fresh.total_steps) == (0.0, "", 0, 0)
    running = create(user, status=Status.RUNNING, attempts=1)
    RunState.objects.create(request=running, attempt=1, progress=0.5, current_node="KSampler (3)", current_step=2,
                            total_steps=4)
    loaded = GenerationRequest.objects.select_related("run").get(pk=running.pk)
    with django_assert_num_queries(0):
        assert (loaded.progress, loaded.current_node, loaded.current_step, loaded.total_steps) == (
            0.5, "KSampler (3)", 2, 4)


def test_prompt_may_be_empty(user):
    """Workflows without a prompt (upscale) store an empty one; what a workflow requires it validates."""
    assert create(user, prompt="").prompt == ""


@pytest.mark.parametrize("status", [Status.PENDING, Status.QUEUED, Status.RUNNING])
def test_finished_at_only_when_terminal(user, status):
    assert "genreq_finished_only_when_terminal" in rejected(user, status=status, finished_at=timezone.now())


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_terminal_rows_may_have_finished_at(user, status):
    assert create(user, status=status, finished_at=timezone.now()).is_terminal


def test_finished_at_cannot_be_set_by_an_update_either(user):
    request = create(user, status=Status.RUNNING)
    with pytest.raises(IntegrityError), transaction.atomic():
        GenerationRequest.objects.filter(pk=request.pk).update(finished_at=timezone.now())


def test_checkpoint_link_protects_the_model(user, checkpoint):
    create(user, checkpoint=checkpoint, checkpoint_model=checkpoint.name)
    from django.db.models import ProtectedError

    with pytest.raises(ProtectedError):
        checkpoint.delete()


def test_history_indexes_exist():
    names = {index.name for index in GenerationRequest._meta.indexes}
    assert {"genreq_user_created_idx", "genreq_user_status_created_idx"} <= names


# --- AvailableModel ---------------------------------------------------------------------------------

def test_available_model_unique_per_type_and_name(db):
    AvailableModel.objects.create(name="x.safetensors", type=ModelType.CHECKPOINT)
    AvailableModel.objects.create(name="x.safetensors", type=ModelType.LORA)
    with pytest.raises(IntegrityError), transaction.atomic():
        AvailableModel.objects.create(name="x.safetensors", type=ModelType.CHECKPOINT)


def test_available_model_type_and_size_are_checked(db):
    with pytest.raises(IntegrityError, match="availablemodel_type_valid"), transaction.atomic():
        AvailableModel.objects.create(name="a", type="vae")
    with pytest.raises(IntegrityError, match="availablemodel_size_nonnegative"), transaction.atomic():
        AvailableModel.objects.create(name="b", type=ModelType.LORA, size_bytes=-1)


def test_available_model_label_and_offered(db):
    model = AvailableModel.objects.create(name="styles/foo.bar.safetensors", type=ModelType.LORA)
    assert model.label == "foo.bar" and model.is_offered
    model.is_present = False
    assert not model.is_offered


@pytest.mark.django_db(transaction=True)
def test_the_scale_migration_moves_progress_and_the_lease_to_run_state_and_back(user):
    """Migrated for real: a running and a completed request from before 0006 keep their progress and
    lease in RunState; a never-dispatched one gets no row; going back restores the columns."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("generation", "0005_workflows")], [("generation", "0006_scale")]
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes("generation")
    lease = timezone.now()
    try:
        executor.migrate(before)
        old = executor.loader.project_state(before).apps.get_model("generation", "GenerationRequest")
        running = old.objects.create(user_id=user.pk, status="running", attempts=2, heartbeat_at=lease, progress=0.5,
                                     current_node="KSampler (3)", current_step=5, total_steps=10)
        done = old.objects.create(user_id=user.pk, status="completed", attempts=1, progress=1.0,
                                  finished_at=lease)
        waiting = old.objects.create(user_id=user.pk, status="queued")
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        runs = executor.loader.project_state(after).apps.get_model("generation", "RunState")
        assert {(r.request_id, r.attempt, r.heartbeat_at, r.progress, r.current_node, r.current_step, r.total_steps)
                for r in runs.objects.all()} == {
            (running.pk, 2, lease, 0.5, "KSampler (3)", 5, 10), (done.pk, 1, None, 1.0, "", 0, 0)}
        executor = MigrationExecutor(connection)
        executor.migrate(before)
        old = executor.loader.project_state(before).apps.get_model("generation", "GenerationRequest")
        back = old.objects.get(pk=running.pk)
        assert (back.heartbeat_at, back.progress, back.current_node, back.current_step) == (lease, 0.5,
                                                                                             "KSampler (3)", 5)
        assert old.objects.get(pk=waiting.pk).progress == 0.0
    finally:
        MigrationExecutor(connection).migrate(latest)
