"""Operator-defined workflows: importing graphs (API and saved UI format), proposed parameters,
staff edits as new versions, validation errors naming node and input, visibility, and the staff API."""

import copy
import json
from pathlib import Path

import pytest
from django.contrib.auth.models import Group

from generation.comfyui.object_info import recorded_object_info
from generation.errors import ParamsInvalid
from generation.models import WorkflowTemplate
from generation.services import prepare_submission
from generation.workflows import UnknownWorkflow, all_workflows, get_workflow
from generation.workflows.importing import GraphRefused, import_graph
from generation.workflows.templates import TemplateInvalid, create_template, new_version, update_template
from tests.generation.comfyui.conftest import recorded

pytestmark = pytest.mark.django_db
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
UI_TXT2IMG = json.loads((FIXTURES / "workflows" / "txt2img-ui.json").read_text())
TEMPLATES = "/api/v1/comfyui/workflows/"


def graph_of(name):
    return copy.deepcopy(recorded(name)["request"]["json"]["prompt"])


def specs_by_name(template):
    return {spec["name"]: spec for spec in template.versions.get().parameters}


# --- importing ---------------------------------------------------------------------------------------


def test_a_saved_ui_workflow_converts_to_the_api_graph_comfyui_ran():
    imported = import_graph(UI_TXT2IMG, recorded_object_info())
    graph = {node_id: {k: v for k, v in node.items() if k != "_meta"} for node_id, node in imported.graph.items()}
    assert graph == graph_of("prompt-accepted-execution-error.json")
    assert imported.source_format == "ui" and imported.graph["6"]["_meta"] == {"title": "Positive"}
    assert any("a note" in note for note in imported.notes)


@pytest.mark.parametrize("change, named", [
    (lambda g: g["nodes"][0].update(mode=4), "Node 3 (KSampler): bypassed"),
    (lambda g: g["nodes"][0].update(type="NoSuchNode"), "Node 3 (NoSuchNode): no configured backend knows"),
    (lambda g: g["nodes"][2].update(widgets_values=[64]), "Node 5 (EmptyLatentImage) input 'height'"),
    (lambda g: g["nodes"][1].update(mode=2), "Node 3 (KSampler) input 'model': linked to node 4"),
])
def test_a_ui_workflow_that_cannot_be_converted_names_the_node(change, named):
    data = copy.deepcopy(UI_TXT2IMG)
    change(data)
    with pytest.raises(GraphRefused) as caught:
        import_graph(data, recorded_object_info())
    assert any(problem.startswith(named) for problem in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("data", [None, [], "text", {}, {"1": "x"}, {"1": {"inputs": {}}}, {"nodes": "x"},
                                  {str(i): {"class_type": "EmptyImage", "inputs": {}} for i in range(501)}])
def test_what_is_not_a_graph_is_refused(data):
    with pytest.raises(GraphRefused):
        import_graph(data, recorded_object_info())


# --- proposing and saving ------------------------------------------------------------------------------


def test_parameters_are_proposed_from_the_txt2img_graph(staff_user):
    template = create_template(name="Lighthouse txt2img", graph=graph_of("prompt-accepted-txt2img-lora.json"),
                               user=staff_user)
    specs = specs_by_name(template)
    assert set(specs) == {"prompt", "negative_prompt", "seed", "steps", "cfg", "sampler_name", "scheduler",
                          "denoise", "width", "height", "batch_size", "checkpoint_model", "lora"}
    assert specs["prompt"]["targets"] == [["6", "text"]] and specs["prompt"]["required"]
    assert specs["negative_prompt"]["default"] == "blurry, low quality"
    assert specs["steps"]["default"] == 2 and specs["steps"]["maximum"] == 10000
    assert specs["sampler_name"]["kind"] == "choice" and "euler" in specs["sampler_name"]["choices"]
    assert specs["width"]["multiple_of"] == 8
    assert (specs["lora"]["kind"], specs["lora"]["model_type"]) == ("model", "lora")
    assert template.versions.get().outputs == ["9"] and not template.is_enabled
    assert template.slug == "lighthouse-txt2img"


def test_image_loaders_and_second_samplers_are_proposed(staff_user):
    img2img = create_template(name="i2i", graph=graph_of("prompt-accepted-img2img.json"), user=staff_user)
    assert specs_by_name(img2img)["input_image"]["targets"] == [["11", "image"]]
    hires = create_template(name="two pass", graph=graph_of("prompt-accepted-hires-two-pass.json"), user=staff_user)
    specs = specs_by_name(hires)
    assert {"steps", "steps_14", "denoise_14", "seed_14"} <= set(specs)
    assert specs["denoise_14"]["default"] == 0.5 and specs["steps_14"]["label"] == "Steps (node 14)"


@pytest.mark.parametrize("graph, message", [
    ({"1": {"class_type": "NoSuchNode", "inputs": {}}}, "Node 1 (NoSuchNode): no configured backend knows"),
    ({"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}},
     "Pick at least one output node"),
    ({"1": {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "x"}}},
     "SaveImage (node 1)"),
])
def test_bad_graphs_are_refused_with_a_reason_and_nothing_saved(staff_user, graph, message):
    with pytest.raises(TemplateInvalid) as caught:
        create_template(name="bad", graph=graph, user=staff_user)
    assert message in str(caught.value)
    assert not WorkflowTemplate.objects.exists()


def test_staff_edits_make_new_versions_and_errors_name_node_and_input(staff_user):
    template = create_template(name="t2i", graph=graph_of("prompt-accepted-txt2img-lora.json"), user=staff_user)
    specs = template.versions.get().parameters
    steps = next(spec for spec in specs if spec["name"] == "steps")
    steps.update(name="quality", label="Quality (steps)", minimum=1, maximum=30, default=12)
    strength = {"name": "lora_strength", "kind": "number", "label": "LoRA strength",
                "targets": [["10", "strength_model"]], "default": 0.5, "minimum": 0, "maximum": 1}
    version = new_version(template=template, user=staff_user, parameters=[*specs, strength])
    assert version.version == 2
    workflow = get_workflow("t2i")
    assert workflow.version == 2 and {"quality", "lora_strength"} <= {f.name for f in workflow.parameters}
    cfg = next(spec for spec in specs if spec["name"] == "cfg")
    cfg["default"] = 500.0  # beyond KSampler's range: ComfyUI would refuse it
    with pytest.raises(TemplateInvalid) as caught:
        new_version(template=template, user=staff_user, parameters=specs)
    assert "KSampler (node 3) input 'cfg'" in caught.value.fields["graph"][0]
    with pytest.raises(TemplateInvalid) as caught:
        new_version(template=template, user=staff_user, parameters=[{**strength, "targets": [["10", "model"]]}])
    assert "is a link" in caught.value.fields["parameters.0.targets"][0]
    assert template.versions.count() == 2
    assert new_version(template=template, user=staff_user, parameters=workflow.specs).version == 2  # unchanged


def test_submitting_a_template_validates_like_a_built_in(staff_user, user, checkpoint, lora):
    template = create_template(name="t2i", graph=graph_of("prompt-accepted-txt2img-lora.json"), user=staff_user)
    with pytest.raises(UnknownWorkflow):  # disabled: unknown to everyone but staff (who may test it)
        prepare_submission(user=user, data={"workflow": "t2i", "prompt": "x"})
    update_template(template=template, user=staff_user, is_enabled=True, visibility="everyone")
    submission = prepare_submission(user=user, data={"workflow": "t2i", "prompt": "a fox", "steps": 3,
                                                     "checkpoint_model": checkpoint.name, "lora": lora.name})
    graph = submission.workflow.build(submission.params, files={}, filename_prefix="genonaut/r")
    assert graph["6"]["inputs"]["text"] == "a fox" and graph["3"]["inputs"]["steps"] == 3
    assert graph["9"]["inputs"]["filename_prefix"] == "genonaut/r" and graph["10"]["inputs"]["lora_name"] == lora.name
    assert submission.summary.width == 64 and submission.summary.checkpoint_model == checkpoint.name
    with pytest.raises(ParamsInvalid) as caught:
        prepare_submission(user=user, data={"workflow": "t2i", "steps": 0, "bogus": 1})
    assert {"prompt", "steps", "bogus", "checkpoint_model"} <= set(caught.value.fields)


def test_visibility_everyone_staff_or_groups(staff_user, user, other_user):
    template = create_template(name="private", graph=graph_of("prompt-accepted-txt2img-lora.json"), user=staff_user)
    update_template(template=template, user=staff_user, is_enabled=True)  # staff only by default
    slugs = lambda who: {w.slug for w in all_workflows(who)}  # noqa: E731
    assert "private" in slugs(staff_user) and "private" not in slugs(user)
    artists = Group.objects.create(name="artists")
    user.groups.add(artists)
    update_template(template=template, user=staff_user, visibility="groups", groups=["artists"])
    assert "private" in slugs(user) and "private" not in slugs(other_user)
    with pytest.raises(TemplateInvalid):
        update_template(template=template, user=staff_user, groups=["nobody"])


# --- the staff API -------------------------------------------------------------------------------------


def test_the_staff_api_publishes_edits_and_deletes(client_for, staff_user, user, make_generation):
    staff, person = client_for(staff_user), client_for(user)
    created = staff.post(TEMPLATES, {"name": "From UI", "graph": UI_TXT2IMG}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["slug"] == "from-ui" and body["version"] == 1 and not body["is_enabled"]
    assert {spec["name"] for spec in body["definition"]["parameters"]} >= {"prompt", "seed", "width"}
    assert any(widget["input"] == "filename_prefix" for widget in body["widgets"])
    assert person.post(TEMPLATES, {"name": "x", "graph": UI_TXT2IMG}, format="json").status_code == 403
    assert person.get(f"{TEMPLATES}from-ui/").status_code == 404  # disabled
    edited = staff.patch(f"{TEMPLATES}from-ui/", {"is_enabled": True, "visibility": "everyone",
                                                  "outputs": ["9"]}, format="json")
    assert edited.status_code == 200 and edited.json()["version"] == 1
    listed = person.get(TEMPLATES).json()
    assert "from-ui" in {w["slug"] for w in listed}
    schema = next(w for w in listed if w["slug"] == "from-ui")["parameters"]
    assert schema["properties"]["steps"]["maximum"] == 10000
    bad = staff.patch(f"{TEMPLATES}from-ui/", {"parameters": [{"name": "Bad Name", "kind": "text"}]}, format="json")
    assert bad.status_code == 400 and "parameters.0.name" in bad.json()["error"]["fields"]
    make_generation(user, "completed", workflow_slug="from-ui", workflow_version=1)
    assert staff.delete(f"{TEMPLATES}from-ui/").status_code == 409
    assert staff.delete(f"{TEMPLATES}from-ui/versions/1/").status_code == 409


@pytest.mark.parametrize("graph", ["not a graph", [1, 2], {"nodes": [], "links": []}])
def test_the_staff_api_refuses_bad_graphs_naming_the_field(client_for, staff_user, graph):
    response = client_for(staff_user).post(TEMPLATES, {"name": "bad", "graph": graph}, format="json")
    assert response.status_code == 400 and "graph" in response.json()["error"]["fields"]
    assert not WorkflowTemplate.objects.exists()


def test_a_template_cannot_take_a_built_in_slug(client_for, staff_user):
    response = client_for(staff_user).post(TEMPLATES, {"name": "x", "slug": "txt2img",
                                                       "graph": graph_of("prompt-accepted.json")}, format="json")
    assert response.status_code == 400 and "slug" in response.json()["error"]["fields"]
