"""The pages in a real headless Chromium, without a worker: form behaviour, field errors,
history pagination/filter/layout, ownership, focus and small screens."""

import re

import pytest
from playwright.sync_api import expect

from generation.models import GenerationRequest, RunState
from generation.states import Status
from models_registry.models import AvailableModel, ModelType
from tests.plugins.browser import log_in, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture
def models(transactional_db):
    checkpoint = AvailableModel.objects.create(
        name="tiny-sd15-random.safetensors", type=ModelType.CHECKPOINT, base_architecture="SD1.5",
        description="Tiny SD1.5 test checkpoint", recommended_width=512, recommended_height=512)
    AvailableModel.objects.create(name="sdxl/other.safetensors", type=ModelType.CHECKPOINT, base_architecture="SDXL",
                                  description="A second checkpoint")
    lora = AvailableModel.objects.create(name="tiny-lora.safetensors", type=ModelType.LORA,
                                         trigger_words=["tinystyle"], description="Test style")
    return checkpoint, lora


def stored(user, checkpoint, n, status):
    return GenerationRequest.objects.create(
        user=user, prompt=f"history prompt {n:02}", checkpoint_model=checkpoint.name, checkpoint=checkpoint,
        status=status, width=64, height=64,
        params={"prompt": f"history prompt {n:02}", "negative_prompt": "", "checkpoint_model": checkpoint.name,
                "lora_models": [], "width": 64, "height": 64, "batch_size": 1,
                "sampler_params": {"seed": n, "steps": 4, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                                   "denoise": 1.0}})


def test_form_controls_and_a_field_error(live_server, page, user, models):
    log_in(page, live_server.url, user)
    screenshot(page, "generate")
    # checkpoint description follows the choice
    page.get_by_label("Checkpoint").select_option("sdxl/other.safetensors")
    expect(page.locator("#id_checkpoint_model-description")).to_have_text("A second checkpoint (SDXL)")
    page.get_by_label("Checkpoint").select_option("tiny-sd15-random.safetensors")
    expect(page.locator("#id_checkpoint_model-description")).to_have_text(
        "Tiny SD1.5 test checkpoint (SD1.5) · recommended size 512 × 512")
    # LoRA: ticking enables its strengths; the slider and the number stay in step
    strength = page.get_by_role("spinbutton", name="Model strength of tiny-lora.safetensors")
    expect(strength).to_be_disabled()
    page.get_by_role("checkbox", name="tiny-lora").check()
    expect(strength).to_be_enabled()
    page.get_by_label("Model strength of tiny-lora.safetensors (slider)").fill("0.5")
    expect(strength).to_have_value("0.5")
    # trigger word goes into the prompt at the caret
    page.get_by_label("Prompt", exact=True).fill("a lighthouse")
    page.get_by_role("button", name="Insert trigger word tinystyle into the prompt").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a lighthouse, tinystyle")
    # size presets fill width and height
    page.get_by_label("Size preset").select_option("832x1216")
    expect(page.get_by_label("Width")).to_have_value("832")
    expect(page.get_by_label("Height")).to_have_value("1216")
    # Advanced is collapsed until opened; randomise fills a seed
    expect(page.get_by_label("Steps")).to_be_hidden()
    page.get_by_text("Advanced settings").click()
    page.get_by_role("button", name="Randomise").click()
    assert re.fullmatch(r"\d+", page.get_by_label("Seed").input_value())
    page.get_by_label("Steps").fill("0")
    page.get_by_label("Width").fill("100")
    page.get_by_role("button", name="Generate").click()

    steps_error = page.locator("#err-sampler_params-steps")
    expect(steps_error).to_contain_text("Must be between 1 and")
    expect(page.locator("#err-width")).to_contain_text("multiple of 8")
    expect(page.get_by_label("Steps")).to_have_attribute("aria-invalid", "true")
    # the form kept everything typed, Advanced stays open, the LoRA stays chosen
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a lighthouse, tinystyle")
    expect(page.get_by_label("Width")).to_have_value("100")
    expect(page.get_by_role("checkbox", name="tiny-lora")).to_be_checked()
    expect(strength).to_have_value("0.5")
    expect(page.get_by_label("Steps")).to_be_visible()
    assert not GenerationRequest.objects.exists()
    screenshot(page, "generate-field-errors")
    assert page.errors == []


def test_keyboard_focus_is_visible(live_server, page, user, models):
    log_in(page, live_server.url, user)
    page.get_by_label("Prompt", exact=True).focus()
    page.keyboard.press("Tab")
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")


def test_history_pagination_filter_and_remembered_layout(live_server, page, user, models):
    checkpoint, _ = models
    for n in range(30):
        stored(user, checkpoint, n, Status.FAILED if n % 3 == 0 else Status.CANCELLED)
    log_in(page, live_server.url, user)
    page.get_by_role("link", name="History").click()
    cards = page.locator("#history > li")
    expect(cards).to_have_count(24)
    expect(page.get_by_text("Page 1 of 2")).to_be_visible()
    page.get_by_role("link", name="Older →").click()
    expect(cards).to_have_count(6)
    expect(cards.first).to_contain_text("history prompt 05")
    # filter: choosing a status reloads the list with it
    page.get_by_label("Status").select_option("failed")
    page.wait_for_url(re.compile(r"status=failed"))
    expect(cards).to_have_count(10)
    expect(page.locator('#history > li[data-status="cancelled"]')).to_have_count(0)
    page.get_by_label("Sort").select_option("oldest")
    page.wait_for_url(re.compile(r"sort=oldest"))
    expect(cards.first).to_contain_text("history prompt 00")
    # grid/list toggle, remembered across reloads
    expect(page.locator("#history")).to_have_class(re.compile("view-grid"))
    screenshot(page, "history-grid")
    page.get_by_role("button", name="List").click()
    expect(page.locator("#history")).to_have_class(re.compile("view-list"))
    page.reload()
    expect(page.locator("#history")).to_have_class(re.compile("view-list"))
    expect(page.get_by_role("button", name="List")).to_have_attribute("aria-pressed", "true")
    screenshot(page, "history-list")
    page.get_by_role("button", name="Grid").click()


def test_delete_from_history_asks_first(live_server, page, user, models):
    checkpoint, _ = models
    stored(user, checkpoint, 1, Status.FAILED)
    log_in(page, live_server.url, user)
    page.goto(f"{live_server.url}/history/")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name=re.compile("^Delete request")).click()
    expect(page.locator("#history > li")).to_have_count(1)
    assert GenerationRequest.objects.count() == 1
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=re.compile("^Delete request")).click()
    expect(page.get_by_text("Request and its images deleted.")).to_be_visible()
    expect(page.locator("#history-empty")).to_be_visible()
    assert GenerationRequest.objects.count() == 0


def test_another_user_cannot_open_the_first_users_pages(live_server, new_page, user, other_user, models):
    checkpoint, _ = models
    theirs = stored(user, checkpoint, 1, Status.COMPLETED)
    GenerationRequest.objects.filter(pk=theirs.pk).update(outputs=["generations/1/x_0.png"])
    page = new_page()
    log_in(page, live_server.url, other_user)
    for path in (f"/requests/{theirs.pk}/", f"/requests/{theirs.pk}/status/", f"/requests/{theirs.pk}/images/0/",
                 f"/requests/{theirs.pk}/delete/", f"/api/v1/comfyui/{theirs.pk}/"):
        response = page.goto(live_server.url + path)
        assert response.status == 404, path
    page.goto(f"{live_server.url}/history/")
    expect(page.locator("#history-empty")).to_be_visible()
    assert page.get_by_text("history prompt 01").count() == 0


def test_phone_layout_has_no_sideways_scrolling(live_server, new_page, user, models):
    checkpoint, _ = models
    for n in range(3):
        stored(user, checkpoint, n, Status.CANCELLED)
    done = stored(user, checkpoint, 3, Status.COMPLETED)
    GenerationRequest.objects.filter(pk=done.pk).update(outputs=[f"generations/{user.pk}/x_0.png"])
    page = new_page(viewport={"width": 390, "height": 844})
    log_in(page, live_server.url, user)
    for path, name in (("/", "phone-generate"), ("/history/", "phone-history"), ("/models/", None),
                       (f"/requests/{done.pk}/", None), (f"/requests/{done.pk}/images/0/", None)):
        page.goto(live_server.url + path)
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), path
        if name:
            screenshot(page, name)


def test_empty_states(live_server, page, user):
    log_in(page, live_server.url, user)
    expect(page.locator("#no-checkpoints")).to_contain_text("Ask an administrator")
    page.get_by_role("link", name="History").click()
    expect(page.locator("#history-empty")).to_contain_text("Generate your first image")
    screenshot(page, "history-empty")
    page.get_by_role("link", name="Models").click()
    expect(page.get_by_text("No checkpoints are offered yet.")).to_be_visible()


def test_login_models_and_staff_backends_pages(live_server, page, staff_user, models, settings):
    settings.COMFYUI_BACKENDS = [{"url": "http://127.0.0.1:9", "capacity": 2}]
    page.goto(f"{live_server.url}/history/")
    page.wait_for_url(re.compile(r"/accounts/login/\?next=/history/"))
    screenshot(page, "login")
    page.get_by_label("Username").fill(staff_user.username)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".error-box")).to_contain_text("enter a correct username and password")
    page.get_by_label("Password").fill(staff_user.raw_password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server.url}/history/")
    page.get_by_role("link", name="Models").click()
    expect(page.get_by_role("heading", name="tiny-sd15-random")).to_be_visible()
    expect(page.get_by_text("512 × 512")).to_be_visible()
    expect(page.get_by_text("tinystyle")).to_be_visible()
    screenshot(page, "models")
    page.get_by_role("link", name="Backends").click()
    expect(page.locator('[data-backend-url="http://127.0.0.1:9"]')).to_contain_text("In rotation")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/accounts/login/"))


UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
    .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
    .map(el => el.outerHTML.slice(0, 120))"""


def test_every_control_has_a_label(live_server, page, user, models):
    checkpoint, _ = models
    request = stored(user, checkpoint, 1, Status.FAILED)
    log_in(page, live_server.url, user)
    for path in ("/", "/history/", "/models/", f"/requests/{request.pk}/", f"/requests/{request.pk}/delete/",
                 f"/?from={request.pk}"):
        page.goto(live_server.url + path)
        assert page.evaluate(UNLABELLED) == [], path


def test_without_event_source_the_card_polls_the_row_and_stops(live_server, page, user, models, reachable_backend):
    """The card's fallback (static/js/live.js) when the browser has no EventSource: it polls its partial,
    so it follows rows changed behind its back, stops when the request ends, and says when it is logged
    out or the request was deleted. (With EventSource it follows events: tests/generation/browser/test_live.py.)"""
    from generation import states

    checkpoint, _ = models
    page.add_init_script("delete window.EventSource;")
    waiting = stored(user, checkpoint, 1, Status.QUEUED)
    gone = stored(user, checkpoint, 2, Status.QUEUED)
    polls = []
    page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/status/") else None)
    log_in(page, live_server.url, user)

    page.goto(f"{live_server.url}/requests/{waiting.pk}/")
    expect(page.get_by_text("position 1 in the queue")).to_be_visible()
    GenerationRequest.objects.filter(pk=waiting.pk).update(status=Status.RUNNING, attempts=1)
    RunState.objects.create(request_id=waiting.pk, attempt=1, current_step=3, total_steps=8, progress=0.375,
                            current_node="KSampler (3)")
    expect(page.get_by_text("Step 3 / 8 · KSampler (3)")).to_be_visible()
    expect(page.get_by_test_id("percent")).to_have_text("38%")
    assert states.transition(waiting.pk, Status.CANCELLED)
    expect(page.locator('.live[data-status="cancelled"]')).to_be_visible()
    count = len(polls)
    page.wait_for_timeout(2500)
    assert len(polls) == count, "the card kept polling a finished request"

    page.goto(f"{live_server.url}/requests/{gone.pk}/")
    page.context.clear_cookies()
    expect(page.get_by_text("You were logged out; reload the page to log in again.")).to_be_visible()
    log_in(page, live_server.url, user)
    page.goto(f"{live_server.url}/requests/{gone.pk}/")
    GenerationRequest.objects.filter(pk=gone.pk).delete()
    expect(page.get_by_text("This request no longer exists")).to_be_visible()


def test_waiting_with_no_reachable_backend_is_said_until_one_answers(live_server, page, user, models, settings):
    """Not "position 1 in the queue" forever: the card and the Generate page say no backend answers,
    and the card switches to the queue position by itself once one does."""
    from django.utils import timezone

    from generation.models import BackendState

    checkpoint, _ = models
    waiting = stored(user, checkpoint, 1, Status.QUEUED)
    log_in(page, live_server.url, user)
    page.goto(f"{live_server.url}/")
    expect(page.get_by_test_id("no-backend")).to_contain_text("Waiting: no backend is reachable")
    page.goto(f"{live_server.url}/requests/{waiting.pk}/")
    expect(page.get_by_test_id("waiting-reason")).to_have_text("Waiting: no backend is reachable")
    expect(page.get_by_text("position 1 in the queue")).to_have_count(0)
    screenshot(page, "request-no-backend")
    BackendState.objects.create(url=settings.COMFYUI_BACKENDS[0]["url"], last_ok_at=timezone.now())
    expect(page.get_by_text("position 1 in the queue")).to_be_visible()
    expect(page.get_by_test_id("waiting-reason")).to_have_count(0)


def test_history_filters_apply_as_they_change(live_server, page, transactional_db, user, checkpoint, make_generation):
    other = AvailableModel.objects.create(name="sdxl/other.safetensors", type=ModelType.CHECKPOINT)
    rows = [("a lighthouse at dusk", Status.COMPLETED, {"images": 1}),
            ("a harbour at dawn", Status.FAILED, {"error": "ComfyUI refused the graph: ckpt_name not in list"}),
            ("a lighthouse in fog", Status.RUNNING, {"progress": 0.4, "current_step": 8, "total_steps": 20}),
            ("stormy sea", Status.QUEUED, {})]
    for n, (prompt, status, fields) in enumerate(rows):
        row = make_generation(user, status, prompt=prompt, **fields)
        GenerationRequest.objects.filter(pk=row.pk).update(created_at=f"2026-03-0{n + 1}T12:00:00Z")
    sdxl = make_generation(user, Status.COMPLETED, images=1, prompt="a lighthouse, sdxl", checkpoint=other,
                           checkpoint_model=other.name, workflow_slug="hires")
    GenerationRequest.objects.filter(pk=sdxl.pk).update(created_at="2026-03-09T12:00:00Z")
    done = make_generation(user, Status.COMPLETED, images=3, prompt="three moons")  # a batch: every image shown
    log_in(page, live_server.url, user)
    page.goto(f"{live_server.url}/history/")
    page.evaluate("() => { window.sameDocument = true; }")  # gone if the page reloads
    cards = page.locator("#history > li")
    expect(cards).to_have_count(6)
    expect(page.locator(f'[data-request-id="{done.pk}"] .card-thumbs img')).to_have_count(3)
    expect(page.get_by_role("button", name="Apply")).to_have_count(0)  # no Apply button: changes apply themselves
    page.wait_for_function("() => [...document.querySelectorAll('#history img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    screenshot(page, "history-tiles")

    page.get_by_label("Search prompts").press_sequentially("lighthouse", delay=20)
    expect(cards).to_have_count(3)
    expect(page.get_by_label("Search prompts")).to_be_focused()  # typing goes on where it was
    page.wait_for_url(re.compile(r"search=lighthouse"))
    page.get_by_label("Workflow").select_option("hires")
    expect(cards).to_have_count(1)
    expect(cards.first).to_contain_text("a lighthouse, sdxl")
    page.get_by_label("Workflow").select_option("")
    page.get_by_label("Checkpoint").select_option(checkpoint.name)
    expect(cards).to_have_count(2)
    page.get_by_label("From").fill("2026-03-02")
    expect(cards).to_have_count(1)
    expect(cards.first).to_contain_text("a lighthouse in fog")
    page.get_by_label("To").fill("2026-03-01")  # before the start: said so, and left out
    expect(page.locator("#err-filter-date_to")).to_have_text("Must not be before the start date.")
    expect(cards).to_have_count(1)
    page.get_by_label("To").fill("2026-03-03")
    expect(page.locator("#err-filter-date_to")).to_have_count(0)
    page.get_by_label("Status").select_option("completed")
    expect(page.locator("#history-no-match")).to_contain_text("No request matches these filters.")
    screenshot(page, "history-filters-none")
    page.get_by_label("Status").select_option("")
    expect(page.locator("#filter-summary")).to_contain_text("1 matching request")
    assert page.evaluate("() => window.sameDocument === true"), "a filter reloaded the whole page"
    # the address says what is shown: a reload shows the same
    page.reload()
    expect(cards).to_have_count(1)
    expect(page.get_by_label("Search prompts")).to_have_value("lighthouse")
    page.get_by_role("link", name="Clear filters").click()
    expect(cards).to_have_count(6)
    page.get_by_label("Search prompts").fill("lighthouse")
    expect(cards).to_have_count(3)
    screenshot(page, "history-filters")
    assert page.errors == []


def test_viewer_zoom_and_full_screen(live_server, page, transactional_db, user, make_generation):
    done = make_generation(user, Status.COMPLETED, images=1)  # a 64 × 48 image
    log_in(page, live_server.url, user)
    page.goto(f"{live_server.url}/requests/{done.pk}/images/0/")
    image = page.locator(".zoom-stage img")
    page.wait_for_function("(img) => img.complete && img.naturalWidth === 64", arg=image.element_handle())
    level = page.locator("[data-zoom-level]")
    expect(level).to_have_text("Fit")
    fit_width = image.evaluate("img => img.getBoundingClientRect().width")
    assert fit_width > 64 * 4  # a small image is shown large, its ratio kept (object-fit)

    page.get_by_role("button", name="100%").click()
    expect(level).to_have_text("100%")
    assert image.evaluate("img => [img.getBoundingClientRect().width, img.getBoundingClientRect().height]") == [64, 48]
    page.get_by_role("button", name="Zoom in").click()
    expect(level).to_have_text("150%")
    page.get_by_role("button", name="Zoom in").click()
    expect(level).to_have_text("200%")
    assert image.evaluate("img => img.getBoundingClientRect().width") == 128
    page.get_by_role("button", name="Zoom out").click()
    expect(level).to_have_text("150%")
    page.keyboard.press("0")  # keys: 0 fits, + and − zoom
    expect(level).to_have_text("Fit")
    page.keyboard.type("-")  # from "fit" (over 800 % for this small image) to the next step down
    expect(level).to_have_text("800%")
    page.keyboard.type("+")  # the largest step
    expect(level).to_have_text("800%")
    page.get_by_role("button", name="Fit").click()
    expect(level).to_have_text("Fit")
    # a click on the picture toggles 100 % and back
    image.click()
    expect(level).to_have_text("100%")
    image.click()
    expect(level).to_have_text("Fit")
    # zoomed in, the picture's pixels show as squares; the stage scrolls, never the page sideways
    page.get_by_role("button", name="100%").click()
    for _ in range(6):
        page.get_by_role("button", name="Zoom in").click()
    expect(level).to_have_text("800%")
    assert image.evaluate("img => [img.getBoundingClientRect().width, getComputedStyle(img).imageRendering]") == [
        512, "pixelated"]
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: 512 px is wider than the stage
    stage = page.locator(".zoom-stage")
    assert stage.evaluate("s => s.scrollWidth > s.clientWidth")
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    page.set_viewport_size({"width": 1280, "height": 900})
    screenshot(page, "image-viewer-zoomed")

    page.get_by_role("button", name="Full screen").click()
    page.wait_for_function("() => document.fullscreenElement && document.fullscreenElement.matches('.viewer-image')")
    expect(page.get_by_role("button", name="Exit full screen")).to_have_attribute("aria-pressed", "true")
    page.get_by_role("button", name="Exit full screen").click()
    page.wait_for_function("() => document.fullscreenElement === null")
    expect(page.get_by_role("button", name="Full screen")).to_be_visible()
    assert page.errors == []


ADMIN_FITS = """() => {
  const table = document.querySelector('#result_list');
  return {page: document.documentElement.scrollWidth - window.innerWidth,
          table: table ? table.scrollWidth - table.parentElement.clientWidth : 0, rows: table ? table.rows.length : 0};
}"""


def test_admin_list_pages_fit_a_laptop_screen(live_server, new_page, transactional_db, staff_user, make_generation,
                                              settings):
    """Every admin list page, with long values in every column, fits 1366 px without sideways scrolling."""
    from django.utils import timezone
    from django_q.models import Failure, Schedule, Success

    from generation.models import BackendState
    from models_registry.models import RegistryJob

    long_url = "http://comfyui-gpu-worker-01.render.internal.example.org:8188"
    settings.COMFYUI_BACKENDS = [{"url": long_url, "capacity": 2}]
    for status in (Status.COMPLETED, Status.RUNNING, Status.FAILED):
        make_generation(staff_user, status, backend=long_url, prompt="a lighthouse at dusk, stormy sea, " * 6)
    BackendState.objects.create(url=long_url, is_healthy=False, loaded_checkpoint="sdxl/juggernautXL_v9Rundiffusion"
                                "photo2_withVAE.safetensors", last_error="HTTPConnectionPool(host='comfyui-gpu-worker"
                                "-01.render.internal.example.org', port=8188): Max retries exceeded with url: "
                                "/system_stats (Caused by NewConnectionError('Connection refused'))")
    lora = AvailableModel.objects.create(name="styles/a-very-long-lora-file-name_for-testing-v2.1-final.safetensors",
                                         type=ModelType.LORA, base_architecture="SDXL 1.0", backends=[long_url],
                                         sha256="f" * 64, size_bytes=123456789, last_seen=timezone.now())
    RegistryJob.objects.create(kind="hash", model=lora, status="failed", requested_by=staff_user,
                               started_at=timezone.now(), finished_at=timezone.now(),
                               summary="could not read /models/loras/styles/a-very-long-lora-file-name.safetensors")
    now = timezone.now()
    Schedule.objects.create(name="reconcile stale requests", func="generation.tasks.reconcile_stale_requests",
                            schedule_type=Schedule.MINUTES, minutes=1)
    for model, success in ((Success, True), (Failure, False)):
        model.objects.create(id=("a" if success else "b") * 32, name="seventeen-lima-hotel-delta", started=now,
                             stopped=now, func="generation.tasks.process_generation_request", success=success,
                             group="process", result=None if success else "Traceback (most recent call last): …")
    page = new_page(viewport={"width": 1366, "height": 768})
    log_in(page, live_server.url, staff_user)
    page.goto(f"{live_server.url}/admin/")
    lists = sorted(set(page.eval_on_selector_all(
        "#content-main a", "links => links.map(a => a.getAttribute('href'))"
        ".filter(href => /^\\/admin\\/[a-z_]+\\/[a-z_]+\\/$/.test(href))")))
    assert len(lists) >= 10, lists
    for path in lists:
        page.goto(live_server.url + path)
        measured = page.evaluate(ADMIN_FITS)
        if measured["page"] > 0 or measured["table"] > 0:
            page.screenshot(path="/tmp/ui/fail.png")
        assert measured["page"] <= 0 and measured["table"] <= 0, (path, measured)
        if path == "/admin/generation/generationrequest/":
            assert measured["rows"] == 4  # the header and the three requests
            screenshot(page, "admin-requests")


def test_a_down_backend_keeps_its_error_inside_its_box(live_server, page, transactional_db, staff_user, settings):
    from generation.models import BackendState

    url = "http://127.0.0.1:9"
    settings.COMFYUI_BACKENDS = [{"url": url, "capacity": 2}]
    BackendState.objects.create(
        url=url, is_healthy=False, consecutive_failures=4, loaded_checkpoint="tiny-sd15-random.safetensors",
        last_error="HTTPConnectionPool(host='127.0.0.1',port=9):Max_retries_exceeded_with_url:/system_stats_(Caused_by_"
                   "NewConnectionError('<urllib3.connection.HTTPConnection_object_at_0x7f3a2c1d9e50>:_Failed_to_establish"
                   "_a_new_connection:_[Errno_111]_Connection_refused'))")
    log_in(page, live_server.url, staff_user)
    page.goto(f"{live_server.url}/backends/")
    card = page.locator(f'[data-backend-url="{url}"]')
    expect(card).to_contain_text("No other backend is in rotation: requests wait in the queue until one answers.")
    expect(card).to_contain_text("not known: it has never answered")
    expect(card).not_to_contain_text("tiny-sd15-random")
    box = card.locator(".error-box")
    assert box.evaluate("el => el.scrollWidth <= el.clientWidth")  # the unbroken error wraps inside
    assert card.evaluate("el => el.scrollWidth <= el.clientWidth")
    screenshot(page, "backends-down")


def test_every_kind_of_page_has_the_favicon(live_server, page, transactional_db, staff_user, settings):
    settings.API_DOCS_PUBLIC = True
    log_in(page, live_server.url, staff_user)
    for path in ("/", "/history/", "/admin/", "/admin/generation/generationrequest/", "/api/v1/comfyui/?format=api",
                 "/api/docs/", "/accounts/login/"):
        page.goto(live_server.url + path)
        icon = page.locator('link[rel="icon"]')
        expect(icon).to_have_count(1)
        answer = icon.evaluate("link => fetch(link.href).then(r => [r.status, r.headers.get('content-type')])")
        assert answer == [200, "image/svg+xml"], (path, answer)
