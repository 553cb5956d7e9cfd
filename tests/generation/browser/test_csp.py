"""Every page under the strict Content-Security-Policy in a real Chromium: the header is sent, the page
works, and Chromium reports no violation (the ``new_page`` fixture fails a test that saw one)."""

import re

import pytest
from playwright.sync_api import expect

from generation.states import Status
from tests.plugins.browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def visit(page, url):
    response = page.goto(url)
    page.wait_for_load_state("load")
    policy = response.headers.get("content-security-policy", "")
    assert "default-src 'self'" in policy and "object-src 'none'" in policy, url
    return response


def test_every_page_keeps_working_under_the_policy(live_server, page, transactional_db, staff_user, lora,
                                                   make_generation, settings):
    settings.COMFYUI_BACKENDS = [{"url": "http://127.0.0.1:9", "capacity": 2}]
    settings.API_DOCS_PUBLIC = False
    done = make_generation(staff_user, Status.COMPLETED, images=2)
    base = live_server.url

    visit(page, f"{base}/accounts/login/")
    log_in(page, base, staff_user)
    for path in ["/", "/?workflow=img2img", "/?workflow=inpaint", "/history/", "/history/?layout=list",
                 "/history/?search=lighthouse&date_from=2026-01-01", "/models/", "/backends/", f"/requests/{done.pk}/",
                 f"/requests/{done.pk}/images/0/", f"/requests/{done.pk}/delete/", "/no-such-page/",
                 "/admin/", "/admin/models_registry/availablemodel/", "/admin/generation/generationrequest/",
                 f"/admin/generation/generationrequest/{done.pk}/change/", "/admin/auth/user/add/",
                 "/api/v1/comfyui/", f"/api/v1/comfyui/{done.pk}/", "/api/v1/comfyui/models/"]:
        visit(page, base + path)
    # the live parts run: the Generate form's script, the image viewer's keys, the thumbnails load
    visit(page, f"{base}/")
    page.get_by_label("Size preset").select_option("768x768")
    expect(page.get_by_label("Width")).to_have_value("768")
    visit(page, f"{base}/history/")
    expect(page.locator("img").first).to_have_js_property("complete", True)
    assert page.locator("img").first.evaluate("img => img.naturalWidth") > 0
    # the interactive API docs render the schema (scripts from files only)
    visit(page, f"{base}/api/docs/")
    expect(page.get_by_text("Genonaut API").first).to_be_visible(timeout=20_000)
    expect(page.locator(".opblock").first).to_be_visible()
    assert page.errors == []


def test_the_locked_out_login_page(live_server, page, staff_user, settings):
    settings.LOGIN_GUARD = {**settings.LOGIN_GUARD, "FAILURES_PER_ACCOUNT": 2}
    visit(page, f"{live_server.url}/admin/login/")
    for _ in range(2):
        page.locator("#id_username").fill(staff_user.username)
        page.locator("#id_password").fill("wrong")
        page.locator("input[type=submit]").click()
    expect(page.locator(".errornote, .errorlist").first).to_contain_text(re.compile("Too many failed logins"))
