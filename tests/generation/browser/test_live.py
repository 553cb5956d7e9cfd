"""Pages that update themselves from server-sent events (static/js/live.js), in a real headless Chromium
with the live server, a real qcluster and the ComfyUI simulator: the request card shows the latent
preview and rising progress without polling, History tiles change state without a reload, the staff
Backends page follows load and health, and the card falls back to polling without EventSource."""

import re
import time

import pytest
from playwright.sync_api import expect

from generation.models import GenerationRequest
from tests.plugins.browser import log_in, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.integration]

NO_EVENT_SOURCE = "delete window.EventSource;"
WATCH_TILES = """() => {
  window.sameDocument = true;  // gone if the page reloads
  window.tileStates = {};  // request id -> the states its tile showed, in order
  const note = () => document.querySelectorAll('#history [data-request-id]').forEach(tile => {
    const states = window.tileStates[tile.dataset.requestId] = window.tileStates[tile.dataset.requestId] || [];
    if (states[states.length - 1] !== tile.dataset.status) states.push(tile.dataset.status);
  });
  new MutationObserver(note).observe(document.getElementById('history'), {subtree: true, childList: true,
                                                                          attributes: true});
  note();
}"""
CARD_STATE = """() => {
  const live = document.querySelector('.live'), percent = document.querySelector('[data-testid="percent"]');
  const preview = document.querySelector('img.live-preview'), step = document.querySelector('[data-live-step]');
  const shown = preview && !preview.closest('[hidden]') && preview.naturalWidth > 0;
  return {status: live && live.dataset.status, percent: percent && percent.textContent, step: step && step.textContent,
          preview: shown ? preview.getAttribute('src') : null};
}"""


def submit(page, base_url, *, prompt, steps, size=64):
    """Submit the txt2img form; return the new request's id (the page is on its card)."""
    page.goto(f"{base_url}/")
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Checkpoint").select_option("tiny-sd15-random.safetensors")
    page.get_by_label("Width").fill(str(size))
    page.get_by_label("Height").fill(str(size))
    page.get_by_text("Advanced settings").click()
    page.get_by_label("Steps").fill(str(steps))
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/requests/[0-9a-f-]{36}/$"))
    return page.url.rstrip("/").rsplit("/", 1)[1]


def record_requests(page, path):
    """Monotonic times at which the page asked for ``path``. Playwright hands events to this thread in
    the order the browser sent them, so a request issued before a DOM read is recorded before it."""
    times = []
    page.on("request", lambda request: times.append(time.monotonic()) if request.url.endswith(path) else None)
    return times


def test_the_card_shows_the_preview_and_rising_progress_without_polling(live_server, page, simulator, cluster_factory,
                                                                         user, checkpoint):
    simulator.configure(step_time=0.25)
    cluster_factory([simulator.url])
    log_in(page, live_server.url, user)
    request_id = submit(page, live_server.url, prompt="a lighthouse at dusk, previews", steps=24, size=256)
    polls = record_requests(page, f"/requests/{request_id}/status/")
    page.evaluate("() => { window.sameDocument = true; }")

    percents, previews, sampling = [], set(), []
    deadline = time.monotonic() + 45
    while True:
        card = page.evaluate(CARD_STATE)
        if card["status"] == "completed":
            break
        assert time.monotonic() < deadline, f"the card did not complete; progress seen {percents}"
        steps = re.match(r"Step (\d+) / (\d+)", card["step"] or "") if card["status"] == "running" else None
        if steps and 0 < int(steps[1]) < int(steps[2]):
            sampling.append(time.monotonic())  # after this read: the card is sampling
            value = int(card["percent"].rstrip("%"))
            if not percents or percents[-1] != value:
                percents.append(value)
            if card["preview"]:
                previews.add(card["preview"])
                if len(previews) == 3:
                    screenshot(page, "request-preview")
        page.wait_for_timeout(50)

    assert percents == sorted(percents) and len(percents) >= 3, percents
    assert len(previews) >= 2, f"the preview did not change while sampling: {previews}"
    preview_url = rf"{re.escape(live_server.url)}/api/v1/comfyui/{request_id}/preview/\?n=\d+"
    assert all(re.fullmatch(preview_url, src) for src in previews), previews
    assert not [t for t in polls if sampling[0] < t < sampling[-1]], "the card fetched its partial while sampling"
    assert page.evaluate("() => window.sameDocument === true"), "the card reloaded the whole page"
    # the final state comes from the server: the images, and no preview any more
    expect(page.get_by_role("list", name="Images").locator("img")).to_have_count(1)
    expect(page.locator("[data-live-preview]")).to_be_hidden()
    expect(page.get_by_text(re.compile(r"1 image ready"))).to_be_visible()
    assert page.errors == []


def test_history_tiles_change_state_live(live_server, page, simulator, cluster_factory, user, checkpoint):
    simulator.configure(step_time=0.2)
    cluster_factory([(simulator.url, 1)])  # one slot: the second request waits its turn
    log_in(page, live_server.url, user)
    first = submit(page, live_server.url, prompt="first in line", steps=40)
    expect(page.locator('.live[data-status="running"]')).to_be_visible(timeout=15_000)
    second = submit(page, live_server.url, prompt="second in line", steps=40)

    page.goto(f"{live_server.url}/history/")
    page.evaluate(WATCH_TILES)
    first_tile = page.locator(f'[data-request-id="{first}"]')
    second_tile = page.locator(f'[data-request-id="{second}"]')
    expect(second_tile.locator("[data-tile-detail]")).to_have_text("Position 1 in the queue")
    expect(first_tile.locator("[data-tile-progress]")).to_be_visible()
    expect(first_tile.locator("[data-tile-detail]")).to_have_text(re.compile(r"Step [1-9]\d* / 40"), timeout=15_000)
    screenshot(page, "history-live")

    expect(second_tile).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(second_tile.locator(".card-thumbs img")).to_have_count(1)
    expect(first_tile.locator(".card-thumbs img")).to_have_count(1)
    page.wait_for_function("() => [...document.querySelectorAll('#history img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    seen = page.evaluate("() => window.tileStates")
    assert seen[first] == ["running", "completed"], seen
    assert seen[second] == ["queued", "running", "completed"], seen
    assert page.evaluate("() => window.sameDocument === true"), "History reloaded the whole page"
    # a re-rendered tile's delete button still returns to this History page
    expect(second_tile.locator('input[name="next"]')).to_have_value("/history/")
    assert page.errors == []


def test_the_backends_page_follows_load_and_health(live_server, new_page, simulator_factory, cluster_factory,
                                                   user, staff_user, checkpoint):
    backend = simulator_factory(step_time=0.2)
    cluster_factory([(backend.url, 1)])
    staff = new_page()
    log_in(staff, live_server.url, staff_user)
    staff.goto(f"{live_server.url}/backends/")
    staff.evaluate("() => { window.sameDocument = true; }")
    card = staff.locator(f'[data-backend-url="{backend.url}"]')
    expect(card).to_contain_text("In rotation")
    expect(card.locator('[data-cell="queue"]')).to_contain_text("0 assigned")

    person = new_page()
    log_in(person, live_server.url, user)
    request_id = submit(person, live_server.url, prompt="keeps the backend busy", steps=100)
    expect(card.locator('[data-cell="queue"]')).to_contain_text("1 assigned · 1 executing", timeout=20_000)
    expect(card.locator('[data-cell="capacity"]')).to_have_text("1 (0 free)")

    backend.stop()  # the backend goes away mid-job
    expect(card).to_contain_text("Down · out of rotation", timeout=30_000)
    expect(card.locator(".error-box")).to_be_visible()
    assert staff.evaluate("() => window.sameDocument === true"), "the Backends page reloaded"
    assert GenerationRequest.objects.filter(pk=request_id).exists()
    assert staff.errors == []


@pytest.mark.parametrize("breakage", ["no EventSource", "stream unreachable"])
def test_without_a_working_stream_the_card_polls_to_the_end(live_server, page, simulator, cluster_factory, user,
                                                            checkpoint, breakage):
    simulator.configure(step_time=0.1)
    cluster_factory([simulator.url])
    if breakage == "no EventSource":
        page.add_init_script(NO_EVENT_SOURCE)
    else:  # every connection attempt fails: the card gives up on the stream after a few
        page.route(re.compile(r"/events/$"), lambda route: route.abort())
    log_in(page, live_server.url, user)
    request_id = submit(page, live_server.url, prompt=f"{breakage} here", steps=40)
    polls = record_requests(page, f"/requests/{request_id}/status/")
    expect(page.locator('.live[data-status="completed"]')).to_be_visible(timeout=40_000)
    expect(page.get_by_role("list", name="Images").locator("img")).to_have_count(1)
    assert polls, "the card did not poll"
    assert page.errors == []
