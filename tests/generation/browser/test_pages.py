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


def test_live_card_follows_the_row_and_stops_polling(live_server, page, user, models, reachable_backend):
    from generation import states

    checkpoint, _ = models
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
