"""The workflow builder against the recorded txt2img graph and the recorded object_info."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation.comfyui.errors import WorkflowRejected
from generation.comfyui.object_info import recorded_object_info
from generation.comfyui.workflow import SAVE_NODE_ID, build_workflow, check_workflow, workflow_seed
from tests.generation.comfyui.conftest import recorded

RECORDED_SAMPLER = {"seed": 42, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                    "denoise": 1.0}


def _recorded_like(**overrides):
    params = {"prompt": "a watercolor painting of a lighthouse", "negative_prompt": "blurry, low quality",
              "checkpoint_model": "tiny-sd15-random.safetensors", "lora_models": [], "width": 64, "height": 64,
              "batch_size": 1, "sampler_params": dict(RECORDED_SAMPLER), "filename_prefix": "proto/txt2img"}
    return build_workflow(**{**params, **overrides})


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
    assert SAVE_NODE_ID == "9" and built[SAVE_NODE_ID]["class_type"] == "SaveImage"


def test_loras_are_chained_in_order():
    built = _recorded_like(lora_models=[{"name": "a.safetensors", "strength_model": 1, "strength_clip": 0.5},
                                        {"name": "b.safetensors", "strength_model": -0.5, "strength_clip": 1}])
    assert built["10"]["inputs"]["model"] == ["4", 0] and built["10"]["inputs"]["clip"] == ["4", 1]
    assert built["11"]["inputs"]["model"] == ["10", 0] and built["11"]["inputs"]["clip"] == ["10", 1]
    assert built["11"]["inputs"]["strength_model"] == -0.5
    assert built["3"]["inputs"]["model"] == ["11", 0]
    assert built["6"]["inputs"]["clip"] == ["11", 1] == built["7"]["inputs"]["clip"]


def test_random_seed_is_drawn_and_recorded_in_the_graph():
    seeds = {workflow_seed(_recorded_like(sampler_params={**RECORDED_SAMPLER, "seed": -1})) for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= seed <= 18446744073709551615 for seed in seeds)


def test_check_workflow_rejects_with_comfyui_body_and_a_message_naming_node_and_input():
    workflow = _recorded_like(sampler_params={**RECORDED_SAMPLER, "sampler_name": "warp-drive"})
    with pytest.raises(WorkflowRejected) as caught:
        check_workflow(workflow, recorded_object_info(), backend="http://b1")
    rejected = caught.value
    assert rejected.backend == "http://b1"
    assert rejected.error["type"] == "prompt_outputs_failed_validation"
    assert rejected.node_errors["3"]["errors"][0]["type"] == "value_not_in_list"
    assert "KSampler (node 3) input 'sampler_name'" in rejected.message


def test_check_workflow_rejects_unknown_models():
    workflow = _recorded_like(lora_models=[{"name": "missing.safetensors"}])
    with pytest.raises(WorkflowRejected) as caught:
        check_workflow(workflow, recorded_object_info())
    assert "LoraLoader (node 10) input 'lora_name'" in caught.value.message


LORAS = st.lists(st.builds(lambda s1, s2: {"name": "tiny-lora.safetensors", "strength_model": s1,
                                           "strength_clip": s2},
                           st.floats(-100, 100), st.floats(-100, 100)), max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.text(max_size=200), negative=st.text(max_size=50), loras=LORAS,
       width=st.integers(2, 2048).map(lambda n: n * 8), height=st.integers(2, 2048).map(lambda n: n * 8),
       batch=st.integers(1, 8), seed=st.one_of(st.just(-1), st.integers(0, 18446744073709551615)),
       steps=st.integers(1, 150), cfg=st.floats(0, 100), denoise=st.floats(0, 1),
       sampler=st.sampled_from(recorded_object_info().samplers),
       scheduler=st.sampled_from(recorded_object_info().schedulers),
       checkpoint=st.sampled_from(recorded_object_info().checkpoints))
def test_every_built_graph_validates_against_the_recorded_object_info(prompt, negative, loras, width, height, batch,
                                                                      seed, steps, cfg, denoise, sampler, scheduler,
                                                                      checkpoint):
    workflow = build_workflow(prompt=prompt, negative_prompt=negative, checkpoint_model=checkpoint, lora_models=loras,
                              width=width, height=height, batch_size=batch,
                              sampler_params={"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
                                              "scheduler": scheduler, "denoise": denoise},
                              filename_prefix="genonaut/request-1")
    result = check_workflow(workflow, recorded_object_info())
    assert result.outputs == [SAVE_NODE_ID]
