"""Every built-in workflow end to end: submit → a real cluster → the simulator (uploads included) →
images of the right size, thumbnails, a parameters chunk, and a regenerate with the same seed that
reproduces the graph. Plus a mixed fleet: two backends with different models and node classes."""

import io

import pytest
from django.core.files.storage import default_storage
from PIL import Image

from generation.errors import ParamsInvalid
from generation.models import GenerationRequest, InputImage
from generation.services import regenerate_generation, submit_generation
from models_registry.models import AvailableModel, ModelType
from models_registry.services import refresh_models

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _image(path):
    with default_storage.open(path) as handle:
        return Image.open(io.BytesIO(handle.read()))


def _completed(wait_for_request, request, timeout=30):
    row = wait_for_request(request.pk, "completed", "failed", "cancelled", timeout=timeout)
    assert row.status == "completed", (row.error, row.error_detail)
    assert len(row.outputs) == row.batch_size and all(set(t) == {"small", "medium", "large"} for t in row.thumbnails)
    return row


def _common(valid_params):
    return {key: valid_params[key] for key in ("prompt", "negative_prompt", "checkpoint_model", "sampler_params")}


@pytest.mark.parametrize("workflow, extra, size", [
    ("img2img", {"sampler_params": {"seed": 5, "steps": 3, "denoise": 0.6}}, (96, 64)),
    ("inpaint", {"grow_mask_by": 4, "sampler_params": {"seed": 6, "steps": 3}}, (96, 64)),
    ("upscale", {"scale_by": 1.5}, (150, 100)),
])
def test_image_workflows_upload_their_input_and_produce_the_right_size(simulator, cluster_factory, wait_for_request,
                                                                       user, valid_params, stored_input, workflow,
                                                                       extra, size):
    cluster_factory([simulator.url])
    image = stored_input(user, 100, 67, transparent_box=(10, 10, 40, 40))
    data = {"workflow": workflow, "input_image": str(image.pk), **extra}
    if workflow != "upscale":
        data = {**_common(valid_params), **data, "sampler_params": {**valid_params["sampler_params"],
                                                                     **extra["sampler_params"]}}
    request, _ = submit_generation(user=user, data=data)
    row = _completed(wait_for_request, request)
    output = _image(row.outputs[0])
    assert output.size == size == (row.width, row.height)
    loaded = next(node for node in row.graph.values() if node["class_type"] == "LoadImage")
    assert loaded["inputs"]["image"] == f"genonaut/{image.sha256}.png"
    assert f"genonaut/{image.sha256}.png" in simulator.input_files()
    parameters = output.text["parameters"]
    assert ("Postprocess upscale by: 1.5" if workflow == "upscale" else "Seed: ") in parameters
    assert list(row.inputs.values_list("pk", flat=True)) == [image.pk]


def test_hires_is_two_passes_at_scale_times_the_size(simulator, cluster_factory, wait_for_request, user, valid_params):
    cluster_factory([simulator.url])
    request, _ = submit_generation(user=user, data={**valid_params, "workflow": "hires", "width": 64, "height": 64,
                                                    "hires": {"scale": 2.0, "steps": 3}})
    row = _completed(wait_for_request, request)
    assert _image(row.outputs[0]).size == (128, 128) == (row.width, row.height)
    samplers = [node for node in row.graph.values() if node["class_type"] == "KSampler"]
    assert [s["inputs"]["steps"] for s in samplers] == [4, 3]
    assert "Hires upscale: 2.0" in _image(row.outputs[0]).text["parameters"]


def test_inpaint_with_a_painted_mask_and_regenerate_with_the_same_seed(simulator, cluster_factory, wait_for_request,
                                                                       user, valid_params, stored_input):
    cluster_factory([simulator.url])
    image = stored_input(user, 64, 64)
    mask = stored_input(user, 64, 64, kind=InputImage.Kind.MASK, color=(255, 255, 255))
    request, _ = submit_generation(user=user, data={**_common(valid_params), "workflow": "inpaint",
                                                    "input_image": str(image.pk), "mask_image": str(mask.pk)})
    first = _completed(wait_for_request, request)
    assert first.graph["13"]["inputs"]["image"] == f"genonaut/mask-{mask.sha256}.png"
    again = _completed(wait_for_request, regenerate_generation(request=first, user=user, same_seed=True)[0])
    assert again.params == first.params and again.workflow_slug == "inpaint"
    strip = {node_id: {**node, "inputs": {k: v for k, v in node["inputs"].items() if k != "filename_prefix"}}
             for node_id, node in first.graph.items()}
    assert {node_id: {**node, "inputs": {k: v for k, v in node["inputs"].items() if k != "filename_prefix"}}
            for node_id, node in again.graph.items()} == strip


def test_a_result_used_as_input(simulator, cluster_factory, wait_for_request, user, valid_params):
    cluster_factory([simulator.url])
    source, _ = submit_generation(user=user, data=valid_params)
    source = _completed(wait_for_request, source)
    request, _ = submit_generation(user=user, data={"workflow": "upscale", "scale_by": 2,
                                                    "input_image": {"request": str(source.pk), "index": 0}})
    row = _completed(wait_for_request, request)
    assert _image(row.outputs[0]).size == (128, 128)
    assert InputImage.objects.get(user=user).source == f"request {source.pk} image 0"


def test_a_mixed_fleet_sends_each_request_where_it_can_run(simulator_factory, cluster_factory, wait_for_request, user,
                                                           valid_params, stored_input):
    """Backend A has the SDXL checkpoint but no upscale model and no RepeatLatentBatch; B the reverse."""
    a = simulator_factory(checkpoints=["tiny-sd15-random.safetensors", "sdxl-base-1.0.safetensors"],
                          upscale_models=[], removed_nodes=["RepeatLatentBatch"])
    b = simulator_factory(checkpoints=["tiny-sd15-random.safetensors"], upscale_models=["4x-UltraSharp.pth"])
    cluster_factory([a.url, b.url])
    refresh_models(source="api")  # registers the models and records both backends' capabilities
    AvailableModel.objects.update(is_active=True)
    image = stored_input(user, 64, 64)
    sdxl, _ = submit_generation(user=user, data={**valid_params, "checkpoint_model": "sdxl-base-1.0.safetensors"})
    upscaled, _ = submit_generation(user=user, data={"workflow": "upscale", "input_image": str(image.pk),
                                                     "upscale_model": "4x-UltraSharp.pth"})
    batch, _ = submit_generation(user=user, data={**_common(valid_params), "workflow": "img2img",
                                                  "input_image": str(image.pk), "batch_size": 2})
    rows = [_completed(wait_for_request, request) for request in (sdxl, upscaled, batch)]
    assert [row.backend for row in rows] == [a.url, b.url, b.url]
    assert all(row.attempts == 1 for row in rows)
    # a model no configured backend has is refused at submit, naming the field
    AvailableModel.objects.create(name="nowhere.safetensors", type=ModelType.CHECKPOINT)
    with pytest.raises(ParamsInvalid) as caught:
        submit_generation(user=user, data={**valid_params, "checkpoint_model": "nowhere.safetensors"})
    assert caught.value.fields == {"checkpoint_model": ["No configured backend has 'nowhere.safetensors'."]}
    assert not GenerationRequest.objects.filter(checkpoint_model="nowhere.safetensors").exists()
