"""The registry: built-in workflows are found by module, each implements the whole interface, and
every built-in's definition produces a JSON Schema, a form and a graph that ComfyUI would accept."""

import pytest

from generation.comfyui.object_info import recorded_object_info
from generation.errors import ParamsInvalid
from generation.workflows import DEFAULT_WORKFLOW, InputFile, UnknownWorkflow, all_workflows, check_graph, get_workflow
from generation.workflows.base import Workflow
from generation.workflows.fields import Context

BUILT_IN = {"txt2img", "img2img", "inpaint", "hires", "upscale"}


@pytest.mark.django_db  # the registry also lists operator-defined workflows
def test_every_built_in_is_registered_and_txt2img_is_the_default():
    slugs = [workflow.slug for workflow in all_workflows()]
    assert set(slugs) == BUILT_IN and slugs[0] == DEFAULT_WORKFLOW == "txt2img"
    assert all(isinstance(w, Workflow) and w.name and w.description for w in all_workflows())


@pytest.mark.django_db
@pytest.mark.parametrize("slug", [None, "", "nope", 42, "TXT2IMG"])
def test_unknown_workflows_are_a_400_naming_the_field(slug):
    with pytest.raises(UnknownWorkflow) as caught:
        get_workflow(slug)
    assert isinstance(caught.value, ParamsInvalid) and list(caught.value.fields) == ["workflow"]


@pytest.mark.django_db
@pytest.mark.parametrize("slug", sorted(BUILT_IN))
def test_each_schema_is_a_closed_object_with_limits(slug):
    schema = get_workflow(slug).schema(Context())
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    numbers = []

    def walk(node):
        for child in node.get("properties", {}).values():
            if child.get("type") in ("integer", "number"):
                numbers.append(child)
            walk(child)

    walk(schema)
    assert numbers and all("minimum" in n and "maximum" in n for n in numbers)


def _defaults(workflow):
    """Params as validation would leave them for the simplest body (no registry needed)."""
    info = recorded_object_info()
    params = {}
    for field in workflow.parameters:
        value = {"text": "a prompt", "model": info.checkpoints[0] if field.name == "checkpoint_model" else "",
                 "loras": [], "image": "00000000-0000-0000-0000-000000000000", "seed": 7}.get(field.kind)
        if value is None:
            value = field.default
        node = params
        for part in field.path[:-1]:
            node = node.setdefault(part, {})
        node[field.path[-1]] = value
    return params


@pytest.mark.parametrize("slug", sorted(BUILT_IN))
def test_each_graph_validates_like_comfyui_and_declares_its_outputs_and_progress(slug):
    workflow = get_workflow(slug)
    params = _defaults(workflow)
    files = {path: InputFile("example.png", 64, 48) for path in workflow.input_files(params)}  # listed by LoadImage
    graph = workflow.build(params, files=files, filename_prefix="genonaut/test")
    check_graph(graph, recorded_object_info())
    outputs = workflow.output_nodes(graph)
    assert outputs and all(graph[node]["class_type"] == "SaveImage" for node in outputs)
    weights = workflow.progress_weights(graph)
    assert set(weights) == set(graph) and sum(weights.values()) == pytest.approx(1.0)
    requirements = workflow.requirements(params)
    assert set(requirements.nodes) == {node["class_type"] for node in graph.values()}
