"""txt2img: its graph against the recorded txt2img graphs and the recorded object_info."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation.comfyui.errors import WorkflowRejected
from generation.comfyui.object_info import recorded_object_info
from generation.workflows import check_graph, get_workflow
from tests.generation.comfyui.conftest import recorded

TXT2IMG = get_workflow("txt2img")

RECORDED_SAMPLER = {"seed": 42, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                    "denoise": 1.0}


def build(**params):
    prefix = params.pop("filename_prefix", "genonaut/request-1")
    return TXT2IMG.build(params, files={}, filename_prefix=prefix)


def _recorded_like(**overrides):
    params = {"prompt": "a watercolor painting of a lighthouse", "negative_prompt": "blurry, low quality",
              "checkpoint_model": "tiny-sd15-random.safetensors", "lora_models": [], "width": 64, "height": 64,
              "batch_size": 1, "sampler_params": dict(RECORDED_SAMPLER), "filename_prefix": "proto/txt2img"}
    return build(**{**params, **overrides})


def test_golden_txt2img_with_lora_equals_the_recorded_graph():
    expected = recorded("prompt-accepted-txt2img-lora.json")["request"]["json"]["prompt"]
    built = _recorded_like(lora_models=[{"name": "tiny-lora.safetensors", "strength_model": 0.8,
                                         "strength_clip": 0.8}])
    assert built == expected
    assert list(built) == list(expected)  # same node order as ComfyUI's own frontend sent


def test_golden_txt2img_without_lora_equals_the_recorded_graph():
    expected = recorded("prompt-accepted-execution-error.json")["request"]["json"]["prompt"]
    built = _recorded_like(checkpoint_model="fake.safetensors", filename_prefix="proto/broken")
    assert built == expected
    assert TXT2IMG.output_nodes(built) == ["9"] and built["9"]["class_type"] == "SaveImage"


def test_loras_are_chained_in_order():
    built = _recorded_like(lora_models=[{"name": "a.safetensors", "strength_model": 1, "strength_clip": 0.5},
                                        {"name": "b.safetensors", "strength_model": -0.5, "strength_clip": 1}])
    assert built["10"]["inputs"]["model"] == ["4", 0] and built["10"]["inputs"]["clip"] == ["4", 1]
    assert built["11"]["inputs"]["model"] == ["10", 0] and built["11"]["inputs"]["clip"] == ["10", 1]
    assert built["11"]["inputs"]["strength_model"] == -0.5
    assert built["3"]["inputs"]["model"] == ["11", 0]
    assert built["6"]["inputs"]["clip"] == ["11", 1] == built["7"]["inputs"]["clip"]


def test_the_seed_in_the_params_is_the_one_in_the_graph():
    built = _recorded_like(sampler_params={**RECORDED_SAMPLER, "seed": 18446744073709551615})
    assert built["3"]["inputs"]["seed"] == 18446744073709551615
    assert TXT2IMG.seed({"sampler_params": {**RECORDED_SAMPLER, "seed": 5}}) == 5


def test_requirements_name_every_node_class_and_model_file():
    params = {"prompt": "p", "negative_prompt": "", "checkpoint_model": "c.safetensors", "width": 64, "height": 64,
              "batch_size": 1, "sampler_params": dict(RECORDED_SAMPLER),
              "lora_models": [{"name": "b.safetensors"}, {"name": "a.safetensors"}]}
    requirements = TXT2IMG.requirements(params)
    assert requirements.nodes == ("CLIPTextEncode", "CheckpointLoaderSimple", "EmptyLatentImage", "KSampler",
                                  "LoraLoader", "SaveImage", "VAEDecode")
    assert requirements.as_json()["models"] == {"checkpoints": ["c.safetensors"],
                                                "loras": ["a.safetensors", "b.safetensors"]}
    assert requirements.missing_on({"KSampler"}, {"checkpoints": ["c.safetensors"]})[:1] == ["node CLIPTextEncode"]


def test_progress_weights_give_the_sampler_most_of_the_bar():
    weights = TXT2IMG.progress_weights(_recorded_like())
    assert weights["3"] == pytest.approx(0.85) and sum(weights.values()) == pytest.approx(1.0)


def test_check_workflow_rejects_with_comfyui_body_and_a_message_naming_node_and_input():
    workflow = _recorded_like(sampler_params={**RECORDED_SAMPLER, "sampler_name": "warp-drive"})
    with pytest.raises(WorkflowRejected) as caught:
        check_graph(workflow, recorded_object_info(), backend="http://b1")
    rejected = caught.value
    assert rejected.backend == "http://b1"
    assert rejected.error["type"] == "prompt_outputs_failed_validation"
    assert rejected.node_errors["3"]["errors"][0]["type"] == "value_not_in_list"
    assert "KSampler (node 3) input 'sampler_name'" in rejected.message


def test_check_workflow_rejects_unknown_models():
    workflow = _recorded_like(lora_models=[{"name": "missing.safetensors"}])
    with pytest.raises(WorkflowRejected) as caught:
        check_graph(workflow, recorded_object_info())
    assert "LoraLoader (node 10) input 'lora_name'" in caught.value.message


LORAS = st.lists(st.builds(lambda s1, s2: {"name": "tiny-lora.safetensors", "strength_model": s1,
                                           "strength_clip": s2},
                           st.floats(-100, 100), st.floats(-100, 100)), max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.text(max_size=200), negative=st.text(max_size=50), loras=LORAS,
       width=st.integers(2, 2048).map(lambda n: n * 8), height=st.integers(2, 2048).map(lambda n: n * 8),
       batch=st.integers(1, 8), seed=st.integers(0, 18446744073709551615),
       steps=st.integers(1, 150), cfg=st.floats(0, 100), denoise=st.floats(0, 1),
       sampler=st.sampled_from(recorded_object_info().samplers),
       scheduler=st.sampled_from(recorded_object_info().schedulers),
       checkpoint=st.sampled_from(recorded_object_info().checkpoints))
def test_every_built_graph_validates_against_the_recorded_object_info(prompt, negative, loras, width, height, batch,
                                                                      seed, steps, cfg, denoise, sampler, scheduler,
                                                                      checkpoint):
    workflow = build(prompt=prompt, negative_prompt=negative, checkpoint_model=checkpoint, lora_models=loras,
                     width=width, height=height, batch_size=batch,
                     sampler_params={"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
                                     "scheduler": scheduler, "denoise": denoise})
    result = check_graph(workflow, recorded_object_info())
    assert result.outputs == ["9"]
