"""End to end in a real headless Chromium: the live server, a real qcluster and the ComfyUI
simulator. Generate with two LoRAs and advanced settings, watch progress rise, view, download,
copy, regenerate, delete; cancel a queued and a running request; see a failure's reason."""

import io
import re
import time

import pytest
from django.core.files.storage import default_storage
from PIL import Image
from playwright.sync_api import expect

from generation.models import GenerationRequest
from models_registry.models import AvailableModel, ModelType
from tests.plugins.browser import log_in, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture
def offered(transactional_db, checkpoint, lora):
    watercolor = AvailableModel.objects.create(name="styles/watercolor.safetensors", type=ModelType.LORA,
                                               description="Soft watercolor look", trigger_words=["wtrclr"])
    return checkpoint, lora, watercolor


def watch_progress(page, *, until, timeout):
    """Sample the live card's percentage until ``until`` shows; return the values seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        percent = page.locator('[data-testid="percent"]')
        if percent.count():
            value = int(percent.inner_text().rstrip("%"))
            if not seen or seen[-1] != value:
                seen.append(value)
        if page.locator(f'.live[data-status="{until}"]').count():
            return seen
        page.wait_for_timeout(100)
    raise AssertionError(f"the card did not reach {until!r} within {timeout}s; progress seen {seen}")


def fill_form(page, *, prompt, steps, checkpoint="tiny-sd15-random.safetensors", size=64):
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Negative prompt").fill("blurry")
    page.get_by_label("Checkpoint").select_option(checkpoint)
    page.get_by_label("Width").fill(str(size))
    page.get_by_label("Height").fill(str(size))
    page.get_by_text("Advanced settings").click()
    page.get_by_label("Seed").fill("1234")
    page.get_by_label("Steps").fill(str(steps))


def test_generate_watch_view_download_regenerate_delete(live_server, new_page, simulator, cluster_factory,
                                                        wait_for_request, user, staff_user, offered):
    checkpoint, lora, watercolor = offered
    simulator.configure(step_time=0.08)
    cluster_factory([simulator.url])
    page = new_page()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    log_in(page, live_server.url, user)

    fill_form(page, prompt="a lighthouse at dusk", steps=30, size=256)
    page.get_by_role("checkbox", name="tiny-lora").check()
    page.get_by_role("checkbox", name="watercolor").check()
    page.get_by_role("spinbutton", name="Model strength of tiny-lora.safetensors").fill("0.8")
    page.get_by_role("spinbutton", name="CLIP strength of styles/watercolor.safetensors").fill("0.6")
    page.get_by_role("button", name="Insert trigger word wtrclr into the prompt").click()
    page.get_by_label("CFG scale").fill("6.5")
    page.get_by_label("Sampler").select_option("euler_ancestral")
    page.get_by_label("Scheduler").select_option("karras")
    page.get_by_label("Denoise").fill("0.9")
    page.get_by_label("Batch size").fill("2")
    page.get_by_role("button", name="Generate").click()

    page.wait_for_url(re.compile(r"/requests/[0-9a-f-]{36}/$"))
    request_id = page.url.rstrip("/").rsplit("/", 1)[1]
    row = GenerationRequest.objects.get(pk=request_id)
    assert row.params["lora_models"] == [{"name": watercolor.name, "strength_model": 1.0, "strength_clip": 0.6},
                               {"name": lora.name, "strength_model": 0.8, "strength_clip": 1.0}]  # form order
    assert row.prompt == "a lighthouse at dusk, wtrclr"
    assert row.params["sampler_params"] == {"seed": 1234, "steps": 30, "cfg": 6.5, "sampler_name": "euler_ancestral",
                                  "scheduler": "karras", "denoise": 0.9}

    page.evaluate("() => { window.sameDocument = true; }")  # gone if the page reloads
    expect(page.locator('.live[data-status="running"]')).to_be_visible(timeout=15_000)
    expect(page.get_by_text(re.compile(r"Step \d+ / 30"))).to_be_visible()
    screenshot(page, "request-running")
    seen = watch_progress(page, until="completed", timeout=30)
    assert seen == sorted(seen) and len([v for v in seen if 0 < v < 100]) >= 2, seen
    assert page.evaluate("() => window.sameDocument === true"), "the card reloaded the whole page"
    images = page.get_by_role("list", name="Images").locator("img")
    expect(images).to_have_count(2)
    page.wait_for_function("() => [...document.querySelectorAll('.image-grid img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    screenshot(page, "request-completed")

    # viewer: full size, copy, previous/next, download
    images.first.click()
    expect(page.get_by_role("heading", name="Image 1 of 2")).to_be_visible()
    page.wait_for_function("() => document.querySelector('.viewer-image img').naturalWidth === 256")
    expect(page.locator("#parameters-text")).to_contain_text("Seed: 1234")
    page.get_by_role("button", name="Copy parameters").click()
    expect(page.get_by_text("Copied to the clipboard.")).to_be_visible()
    assert "Sampler: euler_ancestral" in page.evaluate("() => navigator.clipboard.readText()")
    screenshot(page, "image-viewer")
    page.get_by_role("link", name="Next →").click()
    expect(page.get_by_role("heading", name="Image 2 of 2")).to_be_visible()
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".png")
    with open(download.path(), "rb") as handle:
        image = Image.open(io.BytesIO(handle.read()))
    assert image.size == (256, 256) and "Seed: 1234" in image.text["parameters"]
    page.get_by_role("link", name="← Previous").click()
    expect(page.get_by_role("heading", name="Image 1 of 2")).to_be_visible()
    page.wait_for_load_state("load")  # the key handler comes with the deferred script
    page.keyboard.press("ArrowRight")  # arrow keys walk the images too
    expect(page.get_by_role("heading", name="Image 2 of 2")).to_be_visible()
    page.wait_for_load_state("load")
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_role("heading", name="Image 1 of 2")).to_be_visible()

    # regenerate with the same seed: a new request with the same parameters
    page.get_by_role("button", name="Regenerate (same seed)").click()
    page.wait_for_url(re.compile(r"/requests/[0-9a-f-]{36}/$"))
    again_id = page.url.rstrip("/").rsplit("/", 1)[1]
    assert again_id != request_id
    expect(page.locator('.live[data-status="completed"]')).to_be_visible(timeout=30_000)
    again = GenerationRequest.objects.get(pk=again_id)
    assert again.params == row.params
    assert again.regenerated_from_id == row.pk

    # history shows both finished requests with their thumbnails
    page.goto(f"{live_server.url}/history/")
    expect(page.locator("#history > li")).to_have_count(2)
    page.wait_for_function("() => [...document.querySelectorAll('#history img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    screenshot(page, "history-completed")

    # delete the first request from its viewer, after confirming
    outputs = GenerationRequest.objects.get(pk=request_id).outputs
    assert all(default_storage.exists(name) for name in outputs)
    page.goto(f"{live_server.url}/requests/{request_id}/images/0/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete", exact=True).click()
    page.wait_for_url(re.compile(r"/history/$"))
    expect(page.get_by_text("Request and its images deleted.")).to_be_visible()
    expect(page.locator("#history > li")).to_have_count(1)
    assert not GenerationRequest.objects.filter(pk=request_id).exists()
    assert not any(default_storage.exists(name) for name in outputs)
    screenshot(page, "history-after-delete")
    assert page.errors == []

    # staff see the backend that did the work
    staff_page = new_page()
    log_in(staff_page, live_server.url, staff_user)
    staff_page.get_by_role("link", name="Backends").click()
    card = staff_page.locator(f'[data-backend-url="{simulator.url}"]')
    expect(card).to_contain_text("In rotation")
    expect(card).to_contain_text(re.compile(r"[1-9]\d* completed"))
    screenshot(staff_page, "backends")


def submit_and_open(page, base_url, **form):
    page.goto(f"{base_url}/")
    fill_form(page, **form)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/requests/[0-9a-f-]{36}/$"))
    return page.url.rstrip("/").rsplit("/", 1)[1]


def test_cancel_queued_and_running_requests_and_see_a_failure(live_server, page, simulator, cluster_factory,
                                                              wait_for_request, user, offered):
    AvailableModel.objects.create(name="fake.safetensors", type=ModelType.CHECKPOINT,
                                  description="Listed by the backend but fails to load")
    simulator.configure(step_time=0.2)
    cluster_factory([(simulator.url, 1)])  # one slot: a second request has to wait in our queue
    log_in(page, live_server.url, user)

    running_id = submit_and_open(page, live_server.url, prompt="a very slow request", steps=100)
    expect(page.get_by_text(re.compile(r"Step [1-9]\d* / 100"))).to_be_visible(timeout=15_000)
    waiting_id = submit_and_open(page, live_server.url, prompt="waiting its turn", steps=100)
    expect(page.get_by_text("Waiting for a free backend · position 1 in the queue")).to_be_visible()
    screenshot(page, "request-queued")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator('.live[data-status="cancelled"]')).to_be_visible()
    assert wait_for_request(waiting_id, "cancelled", timeout=5).started_at is None

    page.goto(f"{live_server.url}/requests/{running_id}/")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator('.live[data-status="cancelled"]')).to_be_visible()
    expect(page.get_by_text("Request cancelled.")).to_be_visible()
    expect(page.get_by_text(re.compile(r"cancelled at step \d+ / 100"))).to_be_visible()
    row = wait_for_request(running_id, "cancelled", timeout=5)
    assert row.progress < 1.0
    screenshot(page, "request-cancelled")
    # ComfyUI was told: the prompt is no longer running there
    simulator.wait_for(lambda stats: not stats.get("running"), timeout=10)

    # a checkpoint the backend cannot load: the card shows why, and what to do
    failed_id = submit_and_open(page, live_server.url, prompt="this one fails", steps=4,
                                checkpoint="fake.safetensors")
    failed = page.get_by_test_id("error")
    expect(failed).to_be_visible(timeout=20_000)
    reason = GenerationRequest.objects.get(pk=failed_id).error
    assert reason
    expect(failed).to_contain_text(reason[:60])
    expect(failed).to_contain_text("edit these settings")
    screenshot(page, "request-failed")
