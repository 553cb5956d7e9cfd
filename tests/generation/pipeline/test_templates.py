"""Operator-defined workflows end to end: a custom node class only one of two backends has, an old
request regenerating on its own version, and an animated output stored, thumbnailed and served."""

import copy
import io

import pytest
from django.core.files.storage import default_storage
from PIL import Image

from generation.errors import ParamsInvalid
from generation.services import regenerate_generation, submit_generation
from generation.workflows.templates import create_template, new_version, update_template
from tests.generation.comfyui.conftest import recorded

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TEST_NODE = {"class": "GenonautTestNode", "behaves_like": "ImageScaleBy", "category": "genonaut/testing",
             "inputs": {"image": "IMAGE", "upscale_method": [["nearest-exact", "lanczos"], {}],
                        "scale_by": ["FLOAT", {"default": 2.0, "min": 0.5, "max": 4.0}]},
             "outputs": ["IMAGE"]}
CUSTOM_GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 255}},
    "2": {"class_type": "GenonautTestNode", "inputs": {"image": ["1", 0], "upscale_method": "lanczos",
                                                       "scale_by": 1.5}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "custom"}},
}
ANIMATED_GRAPH = {  # three different frames: a WebP encoder merges identical ones
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 40, "batch_size": 3}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15-random.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a spinning lighthouse", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 9, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["8", 0], "filename_prefix": "anim", "fps": 6.0,
                                                       "lossless": False, "quality": 80, "method": "default"}},
}


def _done(wait_for_request, request, timeout=30):
    row = wait_for_request(request.pk, "completed", "failed", "cancelled", timeout=timeout)
    assert row.status == "completed", (row.error, row.error_detail)
    return row


def _publish(name, graph, staff_user, **changes):
    template = create_template(name=name, graph=copy.deepcopy(graph), user=staff_user)
    update_template(template=template, user=staff_user, is_enabled=True, visibility="everyone", **changes)
    return template


def test_a_custom_node_class_goes_only_where_it_is(simulator_factory, cluster_factory, wait_for_request, settings,
                                                   staff_user, user):
    plain = simulator_factory()
    rich = simulator_factory(custom_nodes=[TEST_NODE])
    cluster_factory([plain.url, rich.url])
    template = _publish("Custom scale", CUSTOM_GRAPH, staff_user)  # reads both catalogues, records what each has
    # the custom node's own input is not a parameter anyone could guess: staff expose it
    scale = {"name": "scale_by", "kind": "number", "label": "Scale", "targets": [["2", "scale_by"]], "default": 1.5,
             "minimum": 0.5, "maximum": 4.0}
    new_version(template=template, user=staff_user, parameters=[*template.versions.get().parameters, scale])
    requests = [submit_generation(user=user, data={"workflow": "custom-scale", "scale_by": 2.0})[0]
                for _ in range(3)]
    rows = [_done(wait_for_request, request) for request in requests]
    assert {row.backend for row in rows} == {rich.url} and all(row.attempts == 1 for row in rows)
    with default_storage.open(rows[0].outputs[0]) as handle:
        assert Image.open(io.BytesIO(handle.read())).size == (128, 96)
    # with only the backend that lacks the node class configured, the template is refused at submit
    settings.COMFYUI_BACKENDS = [{"url": plain.url, "capacity": 2}]
    with pytest.raises(ParamsInvalid) as caught:
        submit_generation(user=user, data={"workflow": "custom-scale"})
    assert caught.value.fields == {"workflow": [
        "No configured backend has the node classes 'custom-scale' needs: GenonautTestNode."]}


def test_an_old_request_regenerates_on_its_own_version(simulator, cluster_factory, wait_for_request, staff_user,
                                                       user, checkpoint, lora):
    cluster_factory([simulator.url])
    template = _publish("Versioned", recorded("prompt-accepted-txt2img-lora.json")["request"]["json"]["prompt"],
                        staff_user)
    first = _done(wait_for_request, submit_generation(user=user, data={
        "workflow": "versioned", "prompt": "v1", "checkpoint_model": checkpoint.name, "lora": lora.name})[0])
    specs = [spec for spec in template.versions.get(version=1).parameters if spec["name"] != "width"]
    new_version(template=template, user=staff_user, parameters=specs)  # v2: width no longer a parameter
    again, _ = regenerate_generation(request=first, user=user, same_seed=True)
    again = _done(wait_for_request, again)
    assert (first.workflow_version, again.workflow_version) == (1, 1)
    assert again.params == first.params and again.graph["5"] == first.graph["5"]
    newer = _done(wait_for_request, submit_generation(user=user, data={
        "workflow": "versioned", "prompt": "v2", "checkpoint_model": checkpoint.name, "lora": lora.name})[0])
    assert newer.workflow_version == 2 and "width" not in newer.params


def test_an_animated_output_is_stored_thumbnailed_and_served(simulator, cluster_factory, wait_for_request,
                                                             staff_user, user, client_for, checkpoint):
    cluster_factory([simulator.url])
    _publish("Animated", ANIMATED_GRAPH, staff_user)
    row = _done(wait_for_request, submit_generation(user=user, data={
        "workflow": "animated", "checkpoint_model": checkpoint.name, "prompt": "a spinning lighthouse"})[0])
    assert row.outputs[0].endswith(".webp") and set(row.thumbnails[0]) == {"small", "medium", "large"}
    with default_storage.open(row.outputs[0]) as handle:
        animation = Image.open(io.BytesIO(handle.read()))
        assert animation.format == "WEBP" and getattr(animation, "n_frames", 1) == 3
    response = client_for(user).get(f"/api/v1/comfyui/{row.pk}/images/0/", HTTP_RANGE="bytes=0-9")
    assert response.status_code == 206 and response["Content-Type"] == "image/webp"
