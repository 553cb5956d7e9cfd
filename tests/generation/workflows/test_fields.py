"""Parameter validation through a workflow's definition (txt2img's): defaults, ranges named by field
path, unknown fields, seeds, model checks."""

import pytest

from generation.errors import ParamsInvalid
from generation.services import prepare_submission
from generation.workflows import get_workflow
from generation.workflows.fields import SEED_MAX, Context
from models_registry.models import AvailableModel, ModelType, offered_models

SAMPLER_DEFAULTS = {"seed": -1, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                    "denoise": 1.0}


def validate_params(data):
    return get_workflow("txt2img").validate(data, Context())


def errors_of(data):
    with pytest.raises(ParamsInvalid) as caught:
        validate_params(data)
    return caught.value.fields


def test_defaults_fill_everything_but_prompt_and_checkpoint(checkpoint):
    params = validate_params({"prompt": "  a fox  ", "checkpoint_model": checkpoint.name})
    assert params["prompt"] == "a fox"
    assert (params["width"], params["height"], params["batch_size"]) == (512, 512, 1)
    assert params["negative_prompt"] == "" and params["lora_models"] == []
    assert params["checkpoint_model"] == checkpoint.name
    expected = {k: v for k, v in SAMPLER_DEFAULTS.items() if k != "seed"}
    assert {k: v for k, v in params["sampler_params"].items() if k != "seed"} == expected


def test_valid_params_round_trip(valid_params, lora):
    valid_params["lora_models"] = [{"name": lora.name, "strength_model": 0.5}]
    params = validate_params(valid_params)
    assert params["sampler_params"] == valid_params["sampler_params"]
    assert params["lora_models"] == [{"name": lora.name, "strength_model": 0.5, "strength_clip": 1.0}]


def test_random_seed_is_drawn(checkpoint):
    seeds = {validate_params({"prompt": "p", "checkpoint_model": checkpoint.name,
                              "sampler_params": {"seed": -1}})["sampler_params"]["seed"] for _ in range(5)}
    assert len(seeds) > 1 and all(isinstance(s, int) and 0 <= s < 2**53 for s in seeds)
    drawn = validate_params({"prompt": "p", "checkpoint_model": checkpoint.name})["sampler_params"]["seed"]
    assert isinstance(drawn, int) and drawn >= 0


def test_explicit_seed_is_kept_up_to_uint64(checkpoint):
    params = validate_params({"prompt": "p", "checkpoint_model": checkpoint.name,
                              "sampler_params": {"seed": SEED_MAX}})
    assert params["sampler_params"]["seed"] == SEED_MAX


@pytest.mark.parametrize("path, value", [
    ("width", 8), ("width", 16392), ("width", 500), ("height", 0), ("height", "abc"),
    ("batch_size", 0), ("batch_size", 9), ("batch_size", 1.5), ("batch_size", True),
    ("sampler_params.steps", 0), ("sampler_params.steps", 151), ("sampler_params.cfg", -1),
    ("sampler_params.cfg", 100.5), ("sampler_params.denoise", 1.5), ("sampler_params.seed", SEED_MAX + 1),
    ("sampler_params.seed", -2), ("sampler_params.sampler_name", "warp-drive"),
    ("sampler_params.scheduler", "sometimes"), ("sampler_params.cfg", "nan"),
])
def test_each_range_error_names_its_field_path(valid_params, path, value):
    data = dict(valid_params, sampler_params=dict(valid_params["sampler_params"]))
    if path.startswith("sampler_params."):
        data["sampler_params"][path.split(".", 1)[1]] = value
    else:
        data[path] = value
    assert list(errors_of(data)) == [path]


def test_too_many_pixels_is_reported_at_width(valid_params):
    assert "width" in errors_of(dict(valid_params, width=4096, height=4096))


def test_every_problem_is_reported_at_once(valid_params):
    errors = errors_of(dict(valid_params, prompt="", width=7, sampler_params={"steps": 0, "bogus": 1}))
    assert {"prompt", "width", "sampler_params.steps", "sampler_params.bogus"} <= set(errors)


def test_unknown_fields_are_refused(valid_params, lora):
    data = dict(valid_params, colour="blue", lora_models=[{"name": lora.name, "weight": 2}])
    errors = errors_of(data)
    assert errors["colour"] == ["Unknown field."]
    assert errors["lora_models.0.weight"] == ["Unknown field."]


def test_prompt_rules(valid_params, settings):
    assert "prompt" in errors_of(dict(valid_params, prompt="   "))
    assert "prompt" in errors_of(dict(valid_params, prompt=None))
    assert "prompt" in errors_of(dict(valid_params, prompt=["a"]))
    assert "prompt" in errors_of(dict(valid_params, prompt="a\x00b"))
    settings.GENERATION = {**settings.GENERATION, "MAX_PROMPT_LENGTH": 10}
    assert "prompt" in errors_of(dict(valid_params, prompt="x" * 11))


def test_not_an_object_is_refused():
    assert errors_of(["prompt"]) == {"non_field_errors": ["Expected a JSON object."]}


def test_missing_checkpoint(db):
    assert "checkpoint_model" in errors_of({"prompt": "p"})


@pytest.mark.parametrize("change", [{"is_active": False}, {"is_present": False}])
def test_inactive_or_absent_checkpoint_is_refused(valid_params, checkpoint, change):
    AvailableModel.objects.filter(pk=checkpoint.pk).update(**change)
    assert "is not an available checkpoint" in errors_of(valid_params)["checkpoint_model"][0]


def test_lora_used_as_checkpoint_and_checkpoint_used_as_lora_are_refused(valid_params, checkpoint, lora):
    assert "checkpoint_model" in errors_of(dict(valid_params, checkpoint_model=lora.name))
    errors = errors_of(dict(valid_params, lora_models=[{"name": checkpoint.name}]))
    assert "is not an available LoRA" in errors["lora_models.0.name"][0]


@pytest.mark.parametrize("change", [{"is_active": False}, {"is_present": False}])
def test_inactive_or_absent_lora_is_refused(valid_params, lora, change):
    AvailableModel.objects.filter(pk=lora.pk).update(**change)
    assert "lora_models.0.name" in errors_of(dict(valid_params, lora_models=[{"name": lora.name}]))


def test_lora_list_errors_have_item_paths(valid_params, lora):
    errors = errors_of(dict(valid_params, lora_models=[{"name": lora.name, "strength_clip": 101}, "x",
                                                       {"name": lora.name}, {}]))
    assert set(errors) == {"lora_models.0.strength_clip", "lora_models.1", "lora_models.2.name",
                           "lora_models.3.name"}
    assert "listed twice" in errors["lora_models.2.name"][0]
    assert "lora_models" in errors_of(dict(valid_params, lora_models="tiny-lora"))


def test_lora_count_limit(valid_params, settings):
    settings.GENERATION = {**settings.GENERATION, "MAX_LORAS": 1}
    assert "lora_models" in errors_of(dict(valid_params, lora_models=[{"name": "a"}, {"name": "b"}]))


def test_webhook_url_must_be_http(valid_params, user):
    for bad in ("file:///etc/passwd", 42):
        with pytest.raises(ParamsInvalid) as caught:
            prepare_submission(user=user, data=dict(valid_params, webhook_url=bad, width=7))
        assert {"webhook_url", "width"} <= set(caught.value.fields)  # reported with the parameters' problems


def test_unicode_digits_are_not_numbers(valid_params):
    for value in ("²", "①", "١٢"):
        assert list(errors_of(dict(valid_params, batch_size=value))) == ["batch_size"]
        assert list(errors_of(dict(valid_params, sampler_params={"seed": value}))) == ["sampler_params.seed"]


def test_long_bad_values_are_not_echoed_in_full(valid_params):
    errors = errors_of(dict(valid_params, sampler_params={"sampler_name": "x" * 100_000}))
    message = errors["sampler_params.sampler_name"]
    assert len(message[0]) < 200


def test_offered_models_are_active_and_present(checkpoint, lora):
    AvailableModel.objects.create(name="off.safetensors", type=ModelType.CHECKPOINT, is_active=False)
    AvailableModel.objects.create(name="gone.safetensors", type=ModelType.CHECKPOINT, is_present=False)
    assert list(offered_models(ModelType.CHECKPOINT)) == [checkpoint]
    assert list(offered_models(ModelType.LORA)) == [lora]
