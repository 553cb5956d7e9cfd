"""Why a waiting request waits: its backoff, or no backend that can run it being reachable."""

from datetime import timedelta

import pytest
from django.utils import timezone

from generation.backends import capabilities_of
from generation.comfyui.object_info import recorded_object_info
from generation.models import BackendState, GenerationRequest, RequirementSet
from generation.selectors import NO_BACKEND_REACHABLE, RETRYING, waiting_reason, waiting_reasons
from generation.states import Status
from generation.workflows import get_workflow

pytestmark = pytest.mark.django_db

A, B = "http://127.0.0.1:9001", "http://127.0.0.1:9002"


@pytest.fixture
def two_backends(settings):
    settings.COMFYUI_BACKENDS = [{"url": A, "capacity": 2}, {"url": B, "capacity": 2}]


def _backend(url, *, healthy=True, answered=True, checkpoints=None):
    nodes, lists = capabilities_of(recorded_object_info())
    values = {"is_healthy": healthy, "last_ok_at": timezone.now() if answered else None}
    if checkpoints is not None:
        values.update(node_classes=nodes, model_lists={**lists, "checkpoints": checkpoints},
                      capabilities_at=timezone.now())
    BackendState.objects.update_or_create(url=url, defaults=values)


def _waiting(user, valid_params, *, checkpoint=None, **fields):
    params = {**valid_params, "lora_models": [], **({"checkpoint_model": checkpoint} if checkpoint else {})}
    requirements = get_workflow("txt2img").requirements(params)
    RequirementSet.objects.get_or_create(key=requirements.key, defaults={
        "nodes": list(requirements.nodes), "model_files": requirements.as_json()["models"]})
    return GenerationRequest.objects.create(user=user, status=Status.QUEUED, params=params,
                                            checkpoint_model=params["checkpoint_model"],
                                            requirements_id=requirements.key, **fields)


def test_no_backend_that_ever_answered_means_no_backend_reachable(two_backends, user, valid_params):
    request = _waiting(user, valid_params)
    assert waiting_reason(request)["code"] == NO_BACKEND_REACHABLE  # no state recorded at all yet
    _backend(A, answered=False)
    _backend(B, healthy=False)
    assert waiting_reason(request)["code"] == NO_BACKEND_REACHABLE


def test_a_reachable_backend_that_can_run_it_means_it_only_waits_for_its_turn(two_backends, user, valid_params):
    request = _waiting(user, valid_params)
    _backend(A, checkpoints=[valid_params["checkpoint_model"]])
    assert waiting_reason(request) is None
    _backend(B)  # capabilities never read: counts as able
    BackendState.objects.filter(url=A).update(is_healthy=False)
    assert waiting_reason(request) is None


def test_reachable_backends_lacking_its_model_do_not_count(two_backends, user, valid_params):
    request = _waiting(user, valid_params, checkpoint="rare.safetensors")
    _backend(A, checkpoints=["common.safetensors"])
    _backend(B, healthy=False, checkpoints=["rare.safetensors"])  # the one that has it is down
    reason = waiting_reason(request)
    assert reason["code"] == NO_BACKEND_REACHABLE and "reachable" in reason["message"]
    BackendState.objects.filter(url=B).update(is_healthy=True)
    assert waiting_reason(request) is None


def test_a_request_in_its_retry_backoff_says_until_when(two_backends, user, valid_params):
    _backend(A)
    retry_at = timezone.now() + timedelta(seconds=30)
    request = _waiting(user, valid_params, attempts=1, not_before=retry_at)
    assert waiting_reason(request) == {"code": RETRYING, "retry_at": retry_at, "message": waiting_reason(request)[
        "message"]}
    GenerationRequest.objects.filter(pk=request.pk).update(not_before=timezone.now() - timedelta(seconds=1))
    request.refresh_from_db()
    assert waiting_reason(request) is None


def test_requests_that_do_not_wait_cost_no_query(user, django_assert_num_queries):
    rows = [GenerationRequest.objects.create(user=user, status=status)
            for status in (Status.RUNNING, Status.COMPLETED, Status.CANCELLED)]
    with django_assert_num_queries(0):
        assert waiting_reasons(rows) == {}
