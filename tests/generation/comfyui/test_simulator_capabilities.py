"""Simulators with other capabilities (custom node classes, removed ones, model lists) and other outputs."""

import io
import json
import uuid

import pytest
import requests
from PIL import Image

from generation.comfyui import events as ev
from generation.comfyui.client import clear_object_info_cache
from generation.comfyui.errors import WorkflowRejected
from tests.generation.comfyui.conftest import recorded
from tests.generation.comfyui.test_client import run

pytestmark = pytest.mark.integration

TEST_NODE = {"class": "GenonautTestNode", "behaves_like": "ImageScaleBy", "category": "genonaut/testing",
             "inputs": {"image": "IMAGE", "upscale_method": [["nearest-exact", "lanczos"], {}],
                        "scale_by": ["FLOAT", {"default": 2.0, "min": 0.5, "max": 4.0}]},
             "outputs": ["IMAGE"]}
EMPTY = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 255}}


def save(images, prefix):
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}}


def test_two_simulators_with_different_node_classes_and_model_lists(simulator_factory):
    clear_object_info_cache()
    rich = simulator_factory(custom_nodes=[TEST_NODE], checkpoints=["a.safetensors"], loras=["l1.safetensors"],
                             upscale_models=["4x-UltraSharp.pth", "RealESRGAN_x2plus.pth"])
    plain = simulator_factory(removed_nodes=["ImageUpscaleWithModel", "UpscaleModelLoader"],
                              checkpoints=["b.safetensors"], loras=[])
    rich_info, plain_info = rich.client().object_info(), plain.client().object_info()
    assert "GenonautTestNode" in rich_info.node_classes - plain_info.node_classes
    assert {"ImageUpscaleWithModel", "UpscaleModelLoader"} <= rich_info.node_classes - plain_info.node_classes
    assert rich_info.model_lists() == {"checkpoints": ["a.safetensors"], "loras": ["l1.safetensors"],
                                       "upscale_models": ["4x-UltraSharp.pth", "RealESRGAN_x2plus.pth"]}
    assert plain_info.model_lists() == {"checkpoints": ["b.safetensors"], "loras": [], "upscale_models": []}
    assert rich_info.capabilities_digest != plain_info.capabilities_digest
    assert rich.client().models("upscale_models") == ["4x-UltraSharp.pth", "RealESRGAN_x2plus.pth"]
    entry = rich_info.node("GenonautTestNode")
    assert entry["input_order"] == {"required": ["image", "upscale_method", "scale_by"]}
    assert (entry["output"], entry["output_node"], entry["python_module"]) == (
        ["IMAGE"], False, "custom_nodes.genonaut_simulator")

    graph = {"1": EMPTY, "2": {"class_type": "GenonautTestNode",
                               "inputs": {"image": ["1", 0], "upscale_method": "lanczos", "scale_by": 1.5}},
             "3": save(["2", 0], "custom/test")}
    prompt_id, seen, _ = run(rich.client(), graph)
    assert isinstance(seen[-1], ev.ExecutionSuccess)
    (image,) = rich.client().history(prompt_id)["outputs"]["3"]["images"]
    with rich.client().view(**image) as stream:
        assert Image.open(io.BytesIO(b"".join(stream))).size == (96, 72)  # ImageScaleBy's semantics
    with pytest.raises(WorkflowRejected) as caught:
        plain.client().submit(graph, prompt_id=str(uuid.uuid4()), client_id="c")
    assert caught.value.error == {"type": "invalid_prompt", "details": "Node ID '#2'", "extra_info": {},
                                  "message": "Cannot execute because node GenonautTestNode does not exist."}
    graph["2"]["inputs"]["scale_by"] = 9.0  # the custom node's own limits are enforced like a stock node's
    with pytest.raises(WorkflowRejected, match="value_bigger_than_max|bigger than max"):
        rich.client().submit(graph, prompt_id=str(uuid.uuid4()), client_id="c")


@pytest.mark.parametrize("model, size", [("RealESRGAN_x2plus.pth", (128, 96)), ("4x-UltraSharp.pth", (256, 192))])
def test_upscale_with_a_model_multiplies_by_its_factor(simulator, model, size):
    graph = {"1": EMPTY, "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model}},
             "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
             "4": save(["3", 0], "up/x")}
    prompt_id, seen, _ = run(simulator.client(), graph)
    assert isinstance(seen[-1], ev.ExecutionSuccess)
    (image,) = simulator.client().history(prompt_id)["outputs"]["4"]["images"]
    with simulator.client().view(**image) as stream:
        assert Image.open(io.BytesIO(b"".join(stream))).size == size


def test_an_upscale_model_the_backend_lacks_is_rejected_like_a_missing_checkpoint(simulator):
    graph = {"1": EMPTY, "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "nope.pth"}},
             "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
             "4": save(["3", 0], "up/x")}
    with pytest.raises(WorkflowRejected) as caught:
        simulator.client().submit(graph, prompt_id=str(uuid.uuid4()), client_id="c")
    assert caught.value.node_errors["2"]["errors"][0]["type"] == "value_not_in_list"


def test_custom_nodes_can_be_configured_at_run_time_and_bad_specs_are_refused(simulator):
    response = requests.post(f"{simulator.url}/_simulator/config", timeout=5,
                             json={"custom_nodes": [{"class": "X", "outputs": "IMAGE"}]})
    assert response.status_code == 400 and "outputs" in response.json()["error"]
    simulator.configure(custom_nodes=[{"class": "GenonautOutput", "inputs": {"images": "IMAGE"}, "outputs": [],
                                       "output_node": True, "behaves_like": "SaveImage",
                                       "optional": {"filename_prefix": "STRING"}}],
                        removed_nodes=["SaveImage"])
    graph = {"1": EMPTY, "2": {"class_type": "GenonautOutput", "inputs": {"images": ["1", 0],
                                                                          "filename_prefix": "custom/out"}}}
    prompt_id, seen, _ = run(simulator.client(), graph)
    assert isinstance(seen[-1], ev.ExecutionSuccess)
    assert simulator.client().history(prompt_id)["outputs"]["2"]["images"][0]["filename"] == "out_00001_.png"
    with pytest.raises(WorkflowRejected, match="SaveImage does not exist"):
        simulator.client().submit(recorded("prompt-accepted.json")["request"]["json"]["prompt"],
                                  prompt_id=str(uuid.uuid4()), client_id="c")


ANIMATED = {"5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 40, "batch_size": 3}},
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15-random.safetensors"}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a spinning lighthouse", "clip": ["4", 1]}},
            "3": {"class_type": "KSampler", "inputs": {
                "seed": 9, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                "model": ["4", 0], "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}}


@pytest.mark.parametrize("node, inputs, extension, content_type", [
    ("SaveAnimatedWEBP", {"fps": 6.0, "lossless": False, "quality": 80, "method": "default"}, "webp", "image/webp"),
    ("SaveAnimatedPNG", {"fps": 6.0, "compress_level": 4}, "png", "image/png")])
def test_animated_outputs_are_real_multi_frame_files(simulator, node, inputs, extension, content_type):
    graph = {**ANIMATED, "9": {"class_type": node, "inputs": {"images": ["8", 0], "filename_prefix": "anim/clip",
                                                              **inputs}}}
    client = simulator.client()
    prompt_id, client_id = str(uuid.uuid4()), str(uuid.uuid4())
    with client.event_stream(client_id) as events:
        client.submit(graph, prompt_id=prompt_id, client_id=client_id, extra_data={"extra_pnginfo": {"workflow": {}}})
        seen = list(events.follow(prompt_id, idle_interval=0.2))
    output = client.history(prompt_id)["outputs"]["9"]
    assert output == {"images": [{"filename": f"clip_00001_.{extension}", "subfolder": "anim", "type": "output"}],
                      "animated": [True]}
    assert all(e.output == output for e in seen if isinstance(e, ev.Executed)), seen
    response = requests.get(f"{simulator.url}/view", params=output["images"][0], timeout=5)
    assert response.headers["Content-Type"] == content_type
    picture = Image.open(io.BytesIO(response.content))
    assert (picture.n_frames, picture.is_animated, picture.size) == (3, True, (64, 40))
    frames = []
    for index in range(3):
        picture.seek(index)
        frames.append(picture.convert("RGB").tobytes())
    assert len(set(frames)) == 3  # one placeholder per batch item
    if extension == "webp":
        assert json.loads(picture.getexif()[0x0110].split(":", 1)[1]) == graph
    else:
        assert b"comf" in response.content and b"prompt\x00" in response.content


def test_a_single_frame_animation_is_not_flagged_animated(simulator):
    graph = {**ANIMATED, "9": {"class_type": "SaveAnimatedWEBP", "inputs": {
        "images": ["8", 0], "filename_prefix": "one", "fps": 6.0, "lossless": True, "quality": 80,
        "method": "fastest"}}}
    graph["5"] = {**graph["5"], "inputs": {**graph["5"]["inputs"], "batch_size": 1}}
    prompt_id, _, _ = run(simulator.client(), graph)
    assert simulator.client().history(prompt_id)["outputs"]["9"] == {
        "images": [{"filename": "one_00001_.webp", "subfolder": "", "type": "output"}]}


def test_samplers_other_than_ksampler_send_progress_with_their_own_max(simulator):
    graph = {**{k: v for k, v in ANIMATED.items() if k != "3"},
             "10": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "karras", "steps": 5,
                                                               "denoise": 1.0}},
             "11": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
             "12": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
             "13": {"class_type": "BasicGuider", "inputs": {"model": ["4", 0], "conditioning": ["6", 0]}},
             "3": {"class_type": "SamplerCustomAdvanced", "inputs": {
                 "noise": ["12", 0], "guider": ["13", 0], "sampler": ["11", 0], "sigmas": ["10", 0],
                 "latent_image": ["5", 0]}},
             "14": {"class_type": "KSamplerAdvanced", "inputs": {
                 "model": ["4", 0], "add_noise": "disable", "noise_seed": 1, "steps": 10, "cfg": 7.0,
                 "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0], "negative": ["6", 0],
                 "latent_image": ["3", 0], "start_at_step": 6, "end_at_step": 10000,
                 "return_with_leftover_noise": "disable"}},
             "8": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["4", 2]}},
             "9": save(["8", 0], "custom/sampled")}
    _, seen, _ = run(simulator.client(), graph)
    assert isinstance(seen[-1], ev.ExecutionSuccess)
    progress = [(e.node, e.value, e.max) for e in seen if isinstance(e, ev.Progress)]
    assert progress == [("3", step, 5) for step in range(1, 6)] + [("14", step, 4) for step in range(1, 5)]
