"""Fixtures for browser tests: one headless Chromium per test module, a fresh context per test.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``scripts/system-deps.sh``), driven by
Playwright's sync API; the pages are served by pytest-django's ``live_server`` (a real HTTP
server on a free loopback port, sharing the test database). ``GENONAUT_SCREENSHOTS=1`` makes
``screenshot(page, name)`` write ``docs/screenshots/<name>.png``; without it nothing is written,
so CI runs do not rewrite the committed pictures.
"""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
SCREENSHOT_DIR = ROOT / "docs" / "screenshots"
DEFAULT_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium shared by the tests of one module.

    Playwright's sync API keeps an asyncio loop current in this thread while it is started, which
    Django's async-safety guard mistakes for async code; the guard is relaxed only for as long as
    the browser lives, and Playwright is stopped at the end of the module so tests that run
    afterwards in this process see neither the loop nor the relaxed guard.
    """
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run scripts/system-deps.sh (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def is_csp_violation(message):
    """Chromium reports each Content-Security-Policy refusal on the console."""
    return message.type == "error" and "Content Security Policy" in message.text


@pytest.fixture
def new_page(browser):
    """``new_page(viewport=…)`` → a page in its own context (own cookies and localStorage).

    Every page any browser test opens is watched for Content-Security-Policy violations
    (``page.csp_violations``); a test that saw one fails at teardown."""
    contexts, pages = [], []

    def make(*, viewport=None, accept_downloads=True):
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900},
                                      accept_downloads=accept_downloads)
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.csp_violations = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on("console", lambda message: page.csp_violations.append(f"{page.url}: {message.text}")
                if is_csp_violation(message) else None)
        pages.append(page)
        return page

    yield make
    for context in contexts:
        context.close()
    violations = [violation for page in pages for violation in page.csp_violations]
    assert not violations, "Content-Security-Policy violations:\n" + "\n".join(violations)


@pytest.fixture
def page(new_page):
    return new_page()


def log_in(page, base_url, user):
    """Log ``user`` in through the real login form and land on the Generate page."""
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(user.raw_password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}/")


def screenshot(page, name, *, full_page=True):
    """Save the page to ``docs/screenshots/<name>.png`` when ``GENONAUT_SCREENSHOTS`` is set."""
    if not os.environ.get("GENONAUT_SCREENSHOTS"):
        return None
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
