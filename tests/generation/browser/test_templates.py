"""Publishing a ComfyUI graph in the admin and running it from its Generate form, in Chromium
(screenshots of the admin steps for docs/workflows.md)."""

import json

import pytest
from playwright.sync_api import expect

from generation.models import GenerationRequest, WorkflowTemplate
from tests.generation.workflows.test_templates import UI_TXT2IMG
from tests.plugins.browser import log_in, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_publish_a_saved_workflow_and_run_its_form(live_server, new_page, simulator, cluster_factory,
                                                   wait_for_request, user, staff_user, transactional_db, checkpoint):
    cluster_factory([simulator.url])
    admin = new_page(viewport={"width": 1366, "height": 900})
    log_in(admin, live_server.url, staff_user)
    admin.goto(f"{live_server.url}/admin/generation/workflowtemplate/add/")
    admin.get_by_label("Name").fill("Lighthouse sketch")
    graph = {**UI_TXT2IMG, "nodes": [dict(node) for node in UI_TXT2IMG["nodes"]]}
    for node in graph["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"] = [checkpoint.name]
    admin.locator("#id_graph_text").fill(json.dumps(graph))
    screenshot(admin, "admin-template-import")
    admin.get_by_role("button", name="Import and propose parameters").click()
    expect(admin.locator("#definition")).to_be_visible()
    steps = admin.locator('tr[data-key="3:steps"]')
    steps.get_by_label("Name of steps").fill("detail")
    steps.get_by_label("Label of steps").fill("Detail (steps)")
    steps.get_by_label("Maximum of steps").fill("12")
    admin.get_by_label("Is enabled").check()
    admin.get_by_label("Visibility").select_option("everyone")
    screenshot(admin, "admin-template-edit")
    admin.get_by_role("button", name="Save", exact=True).click()
    expect(admin.get_by_text("Saved: lighthouse-sketch v2 (a new version).")).to_be_visible()
    template = WorkflowTemplate.objects.get()
    assert template.is_enabled and template.versions.count() == 2

    page = new_page()
    log_in(page, live_server.url, user)
    page.get_by_role("link", name="Lighthouse sketch").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_attribute("placeholder",
                                                                      "a watercolor painting of a lighthouse")
    page.get_by_label("Prompt", exact=True).fill("a lighthouse in charcoal")
    page.get_by_text("Advanced settings").click()
    page.get_by_label("Detail (steps)").fill("20")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#err-detail")).to_contain_text("Must be between 1 and 12")
    page.get_by_label("Detail (steps)").fill("3")
    screenshot(page, "template-form")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator('.live[data-status="completed"]')).to_be_visible(timeout=30_000)
    row = GenerationRequest.objects.get(user=user)
    assert (row.workflow_slug, row.workflow_version, row.params["detail"]) == ("lighthouse-sketch", 2, 3)
    assert row.graph["3"]["inputs"]["steps"] == 3 and row.graph["6"]["inputs"]["text"] == "a lighthouse in charcoal"
