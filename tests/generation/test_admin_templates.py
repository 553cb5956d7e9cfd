"""Publishing a ComfyUI graph in the admin: import (pasted or uploaded), confirm and edit parameters
(a new version), outputs, versions in use kept, a test run."""

import copy
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from generation.models import GenerationRequest, WorkflowTemplate
from tests.generation.comfyui.conftest import recorded
from tests.generation.workflows.test_templates import UI_TXT2IMG

pytestmark = pytest.mark.django_db
ADD = "admin:generation_workflowtemplate_add"


def change_url(template):
    return reverse("admin:generation_workflowtemplate_change", args=[template.pk])


def editor_post(page, **overrides):
    """What the browser posts back from the edit page, as rendered (every row, as it stands)."""
    data = {}
    for row in page.context["rows"]:
        key, spec = row["key"], row["spec"]
        if row["exposed"]:
            data[f"{key}:exposed"] = "1"
        data[f"{key}:name"], data[f"{key}:label"] = spec["name"], spec["label"]
        for field in ("default", "minimum", "maximum"):
            if spec.get(field) is not None:
                data[f"{key}:{field}"] = str(spec[field])
        if spec.get("required"):
            data[f"{key}:required"] = "1"
        if spec.get("advanced"):
            data[f"{key}:advanced"] = "1"
    template = page.context["original"]
    data.update(name=template.name, description=template.description, visibility=template.visibility,
                outputs=[o["node"] for o in page.context["outputs"] if o["chosen"]])
    if template.is_enabled:
        data["is_enabled"] = "on"
    data.update(overrides)
    return data


def test_import_by_paste_then_confirm_edit_and_enable(client, staff_user):
    client.force_login(staff_user)
    page = client.get(reverse(ADD))
    assert page.status_code == 200 and b"Export (API)" in page.content
    response = client.post(reverse(ADD), {"name": "From UI", "graph_text": json.dumps(UI_TXT2IMG)})
    template = WorkflowTemplate.objects.get()
    assert response.status_code == 302 and response["Location"] == change_url(template)
    page = client.get(change_url(template))
    assert page.status_code == 200 and b'id="definition"' in page.content
    keys = {row["key"]: row for row in page.context["rows"]}
    assert keys["3:steps"]["exposed"] and not keys["9:filename_prefix"]["exposed"]
    data = editor_post(page, is_enabled="on", visibility="everyone")
    data["3:steps:name"], data["3:steps:maximum"] = "quality", "30"
    data["9:filename_prefix:exposed"] = "1"  # expose a value that was not proposed
    response = client.post(change_url(template), data)
    assert response.status_code == 302, response.context and response.context["problems"]
    template.refresh_from_db()
    latest = template.versions.order_by("-version").first()
    names = {spec["name"]: spec for spec in latest.parameters}
    assert latest.version == 2 and template.is_enabled and names["quality"]["maximum"] == 30
    assert names["filename_prefix_9"]["targets"] == [["9", "filename_prefix"]]


def test_import_errors_are_shown_and_nothing_saved(client, staff_user):
    client.force_login(staff_user)
    upload = SimpleUploadedFile("graph.json", b'{"1": {"class_type": "NoSuchNode", "inputs": {}}}')
    page = client.post(reverse(ADD), {"name": "bad", "graph_file": upload})
    assert page.status_code == 200 and b"no configured backend knows this node class" in page.content
    page = client.post(reverse(ADD), {"name": "bad", "graph_text": "{not json"})
    assert b"The graph is not JSON" in page.content
    assert not WorkflowTemplate.objects.exists()


def test_a_definition_error_names_node_and_input_and_saves_nothing(client, staff_user):
    client.force_login(staff_user)
    client.post(reverse(ADD), {"name": "t", "graph_text": json.dumps(
        recorded("prompt-accepted-txt2img-lora.json")["request"]["json"]["prompt"])})
    template = WorkflowTemplate.objects.get()
    page = client.get(change_url(template))
    page = client.post(change_url(template), editor_post(page, **{"3:cfg:default": "500"}))
    assert page.status_code == 200 and "KSampler (node 3) input &#x27;cfg&#x27;" in page.content.decode()
    assert template.versions.count() == 1


def test_versions_in_use_stay_and_a_test_run_submits_the_defaults(client, staff_user, checkpoint, lora, settings):
    client.force_login(staff_user)
    graph = copy.deepcopy(recorded("prompt-accepted-txt2img-lora.json")["request"]["json"]["prompt"])
    client.post(reverse(ADD), {"name": "tested", "graph_text": json.dumps(graph)})
    template = WorkflowTemplate.objects.get()
    page = client.get(change_url(template))
    response = client.post(change_url(template), editor_post(page, test_run="1"))
    run = GenerationRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("request-detail", args=[run.pk])
    assert (run.workflow_slug, run.workflow_version, run.user) == ("tested", 1, staff_user)
    assert run.params["prompt"] == graph["6"]["inputs"]["text"]
    page = client.post(change_url(template), {"delete_version": "1"}, follow=True)
    assert template.versions.count() == 1 and b"cannot be deleted" in page.content
    page = client.post(change_url(template), {"delete_template": "1"}, follow=True)
    assert WorkflowTemplate.objects.exists() and b"disable it instead" in page.content
