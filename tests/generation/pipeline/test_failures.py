"""Permanent failures on a real cluster: validation, execution error, deadline, storage."""

import pytest

from generation.models import BackendState
from generation.services import regenerate_generation, submit_generation
from models_registry.models import AvailableModel, ModelType

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_validation_error_is_permanent_with_the_message(simulator, cluster_factory, wait_for_request, user,
                                                        valid_params):
    # the backend no longer has the checkpoint our registry offers
    simulator.configure(checkpoints=["sdxl-base-1.0.safetensors"])
    cluster_factory([simulator.url])
    request, _ = submit_generation(user=user, data=valid_params)
    row = wait_for_request(request.pk, "failed", "completed", timeout=15)
    assert row.status == "failed" and row.attempts == 1
    assert "CheckpointLoaderSimple (node 4) input 'ckpt_name'" in row.error
    assert row.error_detail["type"] == "validation"
    assert row.error_detail["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
    assert row.graph["4"]["inputs"]["ckpt_name"] == "tiny-sd15-random.safetensors"
    assert sum(simulator.stats()["submissions"].values()) == 0  # caught before sending


def test_execution_error_is_permanent_with_node_and_exception(simulator, cluster_factory, wait_for_request, user,
                                                              valid_params):
    AvailableModel.objects.create(name="fake.safetensors", type=ModelType.CHECKPOINT)
    cluster_factory([simulator.url])
    request, _ = submit_generation(user=user, data={**valid_params, "checkpoint_model": "fake.safetensors"})
    row = wait_for_request(request.pk, "failed", "completed", timeout=15)
    assert row.status == "failed" and row.attempts == 1
    assert row.error.startswith("CheckpointLoaderSimple (node 4) failed: ")
    assert row.error_detail["node_id"] == "4" and row.error_detail["exception_type"]
    assert row.outputs == []
    assert BackendState.objects.get(url=simulator.url).jobs_failed == 1


def test_deadline_exceeded_interrupts_and_fails(simulator, cluster_factory, wait_for_request, wait_until, user, slow):
    simulator.configure(step_time=0.05)
    cluster_factory([simulator.url], generation={"JOB_DEADLINE_SECONDS": 1})
    request, _ = submit_generation(user=user, data=slow(steps=100))
    row = wait_for_request(request.pk, "failed", "completed", timeout=15)
    assert row.status == "failed" and row.error == "Timed out after 1 s"
    history = wait_until(lambda: simulator.client().history(row.comfyui_prompt_id), timeout=5,
                         what="the interrupted prompt in history")
    assert history["status"]["messages"][-1][0] == "execution_interrupted"


def test_storage_failure_fails_with_reason_then_regenerate_works(simulator, cluster_factory, wait_for_request,
                                                                 user, valid_params, _media_root):
    cluster_factory([simulator.url])
    blocker = _media_root / "generations" / str(user.pk)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"a file where the user's folder must go")
    request, _ = submit_generation(user=user, data=valid_params)
    row = wait_for_request(request.pk, "failed", "completed", timeout=15)
    assert row.status == "failed" and row.error.startswith("Storing the images failed: Could not store generations/")
    assert row.error_detail["type"] == "storage" and row.outputs == []
    blocker.unlink()
    again, _ = regenerate_generation(request=row, user=user, same_seed=True)
    row = wait_for_request(again.pk, "failed", "completed", timeout=15)
    assert row.status == "completed", row.error
    assert len(row.outputs) == 1 and (_media_root / row.outputs[0]).exists()
