"""models_missing_everywhere: which of a request's models no configured backend has."""

import pytest

from models_registry.models import AvailableModel, ModelType
from models_registry.selectors import models_missing_everywhere

CKPT, LORA, UPSCALE = ModelType.CHECKPOINT, ModelType.LORA, ModelType.UPSCALE_MODEL
GPU1, GPU2, RETIRED = "http://gpu1:8188", "http://gpu2:8188", "http://retired:8188"


@pytest.fixture
def fleet(db, settings):
    settings.COMFYUI_BACKENDS = [{"url": GPU1, "capacity": 2}, {"url": GPU2, "capacity": 2}]
    for model_type, name, backends in [(CKPT, "both.safetensors", [GPU1, GPU2]), (CKPT, "gpu2.safetensors", [GPU2]),
                                       (CKPT, "nowhere.safetensors", []), (CKPT, "retired.safetensors", [RETIRED]),
                                       (CKPT, "folder-only.safetensors", None), (LORA, "ink.safetensors", []),
                                       (UPSCALE, "4x-UltraSharp.pth", [GPU1])]:
        AvailableModel.objects.create(type=model_type, name=name, backends=backends)


def test_names_offered_models_that_no_configured_backend_has(fleet):
    refs = [(CKPT, "both.safetensors"), (CKPT, "gpu2.safetensors"), (CKPT, "nowhere.safetensors"),
            (CKPT, "retired.safetensors"), (LORA, "ink.safetensors"), (UPSCALE, "4x-UltraSharp.pth")]
    assert models_missing_everywhere(refs) == [(CKPT, "nowhere.safetensors"), (CKPT, "retired.safetensors"),
                                               (LORA, "ink.safetensors")]


def test_not_known_per_backend_counts_as_present(fleet):
    assert models_missing_everywhere([(CKPT, "folder-only.safetensors")]) == []


def test_unknown_or_not_offered_models_are_left_to_validation(fleet):
    AvailableModel.objects.filter(name="nowhere.safetensors").update(is_active=False)
    AvailableModel.objects.filter(name="ink.safetensors").update(is_present=False)
    refs = [(CKPT, "nowhere.safetensors"), (LORA, "ink.safetensors"), (CKPT, "never-heard-of.safetensors"),
            (LORA, "both.safetensors")]  # a checkpoint's name asked for as a LoRA
    assert models_missing_everywhere(refs) == []


def test_keeps_order_drops_repeats_and_costs_one_query(fleet, django_assert_num_queries):
    refs = [(LORA, "ink.safetensors"), ("checkpoint", "nowhere.safetensors"), (LORA, "ink.safetensors")]
    with django_assert_num_queries(1):
        assert models_missing_everywhere(refs) == [(LORA, "ink.safetensors"), (CKPT, "nowhere.safetensors")]
    with django_assert_num_queries(0):
        assert models_missing_everywhere([]) == []


def test_a_backend_dropped_from_the_configuration_no_longer_counts(fleet, settings):
    settings.COMFYUI_BACKENDS = [{"url": GPU1, "capacity": 2}]
    assert models_missing_everywhere([(CKPT, "gpu2.safetensors"), (CKPT, "both.safetensors")]) == [
        (CKPT, "gpu2.safetensors")]
