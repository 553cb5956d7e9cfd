"""validation.py reproduces ComfyUI's POST /prompt answers, checked against every recorded sample."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.comfyui.object_info import recorded_object_info
from generation.comfyui.validation import annotated_path, file_exists_check, validate_prompt
from tests.generation.comfyui.conftest import PROTOCOL, recorded

ERROR_SAMPLES = sorted(p.name for p in PROTOCOL.glob("prompt-error-400-*.json"))
PARTIAL_SAMPLES = sorted(p.name for p in PROTOCOL.glob("prompt-partial-*-200.json"))
# what the recording server's input folder held when the img2img/inpaint samples ran
RECORDED_INPUTS = {("input", "example.png"), ("input", "wf-input.png"), ("input", "wf-rgba.png"),
                   ("input", "genonaut/ab/sub.png")}
UPLOADS_CHECK = file_exists_check(lambda folder, path: (folder, path) in RECORDED_INPUTS)
IMG2IMG = recorded("prompt-accepted-img2img.json")["request"]["json"]["prompt"]


def _comparable(node_errors):
    """Node errors without what differs by machine (tracebacks) or set order (dependent outputs)."""
    out = {}
    for node_id, entry in node_errors.items():
        errors = []
        for error in entry["errors"]:
            extra = {k: v for k, v in error["extra_info"].items() if k != "traceback"}
            errors.append({**error, "extra_info": extra})
        out[node_id] = {"errors": errors, "class_type": entry["class_type"],
                        "dependent_outputs": sorted(entry["dependent_outputs"])}
    return out


def test_every_error_case_is_sampled():
    assert len(ERROR_SAMPLES) == 13 and len(PARTIAL_SAMPLES) == 2


@pytest.mark.parametrize("name", [n for n in ERROR_SAMPLES if "without-prompt-key" not in n])
def test_rejections_match_the_recorded_400_bodies(name):
    sample = recorded(name)
    expected = sample["response"]["body"]
    result = validate_prompt(sample["request"]["json"]["prompt"], recorded_object_info(),
                             custom_checks=UPLOADS_CHECK)
    assert not result.ok
    body = result.body()
    assert body["error"] == expected["error"]
    assert _comparable(body["node_errors"]) == _comparable(expected["node_errors"])


def test_exception_during_validation_carries_a_traceback(recorded_object_info_data):
    sample = recorded("prompt-error-400-link-to-missing-node.json")
    result = validate_prompt(sample["request"]["json"]["prompt"], recorded_object_info_data)
    extra = result.node_errors["3"]["errors"][0]["extra_info"]
    assert extra["exception_type"] == "KeyError"
    assert extra["traceback"] and all(isinstance(line, str) for line in extra["traceback"])


@pytest.mark.parametrize("name", PARTIAL_SAMPLES)
def test_partial_acceptance_matches_the_recorded_200_bodies(name, recorded_object_info_data):
    sample = recorded(name)
    result = validate_prompt(sample["request"]["json"]["prompt"], recorded_object_info_data)
    assert result.ok
    assert result.outputs == ["4"]
    assert _comparable(result.node_errors) == _comparable(sample["response"]["body"]["node_errors"])


@pytest.mark.parametrize("name", sorted(p.name for p in PROTOCOL.glob("prompt-accepted*.json")
                                         if p.name != "prompt-accepted-client-prompt_id.json"))
def test_accepted_graphs_validate(name):
    for checks in (UPLOADS_CHECK, None):
        result = validate_prompt(recorded(name)["request"]["json"]["prompt"], recorded_object_info(),
                                 custom_checks=checks)
        assert result.ok and result.node_errors == {}


def test_without_custom_checks_any_input_image_name_is_accepted():
    """The dispatcher cannot know a backend's files: like ComfyUI, LoadImage's list is not checked."""
    for name in ("never-uploaded.png", "genonaut/0123abcd.png", "x.png [output]"):
        graph = {**IMG2IMG, "11": {"class_type": "LoadImage", "inputs": {"image": name}}}
        assert validate_prompt(graph, recorded_object_info()).ok


def test_uploads_in_a_subfolder_validate_though_object_info_does_not_list_them():
    graph = {**IMG2IMG, "11": {"class_type": "LoadImage", "inputs": {"image": "genonaut/ab/sub.png"}}}
    assert "genonaut/ab/sub.png" not in recorded_object_info().choices("LoadImage", "image")
    assert validate_prompt(graph, recorded_object_info(), custom_checks=UPLOADS_CHECK).ok
    graph["11"]["inputs"]["image"] = "genonaut/ab/other.png"
    result = validate_prompt(graph, recorded_object_info(), custom_checks=UPLOADS_CHECK)
    (error,) = result.node_errors["11"]["errors"]
    assert (error["type"], error["details"]) == ("custom_validation_failed",
                                                 "image - Invalid image file: genonaut/ab/other.png")


def test_custom_checks_cover_every_file_loader_and_only_their_file_input():
    graph = {"1": {"class_type": "LoadImageMask", "inputs": {"image": "gone.png", "channel": "purple"}},
             "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}},
             "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "m"}}}
    result = validate_prompt(graph, recorded_object_info(), custom_checks=UPLOADS_CHECK)
    errors = {e["extra_info"]["input_name"]: e for e in result.node_errors["1"]["errors"]}
    assert errors["channel"]["type"] == "value_not_in_list"  # the other inputs keep their usual checks
    assert errors["image"]["details"] == "image - Invalid image file: gone.png"
    graph["1"] = {"class_type": "LoadLatent", "inputs": {"latent": "a.latent"}}
    graph["2"] = {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0], "vae": ["4", 2]}}
    graph["4"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15-random.safetensors"}}
    result = validate_prompt(graph, recorded_object_info(), custom_checks=UPLOADS_CHECK)
    assert result.node_errors["1"]["errors"][0]["details"] == "latent - Invalid latent file: a.latent"


@pytest.mark.parametrize("name, expected", [("a.png", ("input", "a.png")), ("sub/a.png", ("input", "sub/a.png")),
                                            ("a.png [output]", ("output", "a.png")),
                                            ("p/a_00001_.png [temp]", ("temp", "p/a_00001_.png")),
                                            ("x/../a.png", ("input", "a.png")), ("../../etc/passwd", None),
                                            ("/etc/passwd", None), ("..", None), ("", None), (5, None)])
def test_annotated_paths_never_leave_their_folder(name, expected):
    assert annotated_path(name) == expected


def test_value_below_min(recorded_object_info_data):
    graph = recorded("prompt-accepted-txt2img-lora.json")["request"]["json"]["prompt"]
    graph["3"]["inputs"]["steps"] = 0
    result = validate_prompt(graph, recorded_object_info_data)
    (error,) = result.node_errors["3"]["errors"]
    assert error["type"] == "value_smaller_than_min"
    assert error["message"] == "Value 0 smaller than min of 1"
    assert error["extra_info"]["input_name"] == "steps"


def test_newer_combo_shape_is_understood(recorded_object_info_data):
    data = recorded_object_info_data
    spec = data["KSampler"]["input"]["required"]["sampler_name"]
    data["KSampler"]["input"]["required"]["sampler_name"] = ["COMBO", {"options": spec[0]}]
    graph = recorded("prompt-accepted-txt2img-lora.json")["request"]["json"]["prompt"]
    assert validate_prompt(graph, data).ok
    graph["3"]["inputs"]["sampler_name"] = "nope"
    result = validate_prompt(graph, data)
    assert result.node_errors["3"]["errors"][0]["type"] == "value_not_in_list"
    assert "(list of length 44)" in result.node_errors["3"]["errors"][0]["details"]


def test_a_cycle_is_rejected_not_crashing(recorded_object_info_data):
    graph = recorded("prompt-accepted-txt2img-lora.json")["request"]["json"]["prompt"]
    graph["3"]["inputs"]["latent_image"] = ["3", 0]  # LATENT into LATENT: only the cycle is wrong
    result = validate_prompt(graph, recorded_object_info_data)
    assert not result.ok and result.error["type"] == "prompt_outputs_failed_validation"


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=3),
                           max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(mutations=st.lists(st.tuples(st.sampled_from(["3", "4", "5", "6", "7", "8", "9", "10"]),
                                    st.sampled_from(["seed", "steps", "cfg", "sampler_name", "model", "clip",
                                                     "images", "text", "width", "ckpt_name", "lora_name",
                                                     "class_type", "inputs"]),
                                    st.one_of(JSON_VALUES, st.tuples(st.sampled_from(["3", "4", "99", 5]),
                                                                     st.integers(-1, 4)).map(list))),
                          max_size=4))
def test_any_mutated_graph_gets_an_answer_never_an_exception(mutations):
    graph = recorded("prompt-accepted-txt2img-lora.json")["request"]["json"]["prompt"]
    for node_id, name, value in mutations:
        if name in ("class_type", "inputs"):
            graph[node_id][name] = value
        else:
            if isinstance(graph[node_id].get("inputs"), dict):
                graph[node_id]["inputs"][name] = value
    result = validate_prompt(graph, recorded_object_info())
    json.dumps(result.body() if not result.ok else result.node_errors)
