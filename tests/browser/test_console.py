"""The task console at `/` in headless Chromium, against real deployments: a task submitted
there is followed live to COMPLETED, the recent list survives a reload, and against a secured
API the page shows UNAUTHENTICATED until a token is given."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tests.browser.support import RecordedPage, recorded_page, screenshot
from tests.e2e.conftest import Deployment
from tests.support.auth import token_for

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator, Page

TIMEOUT_MS = 15_000
# How the console writes a short duration: "12 ms", "0.3 s".
SHORT_DURATION = re.compile(r"^\d+(\.\d)? (ms|s)$")
# What Chromium logs for a request answered 401 (the refused createTask).
REFUSED_REQUEST = "the server responded with a status of 401"
# Enough Tabs to reach the input from the top of the page, with room for a few more controls.
MAX_TABS = 12


def _card(page: Page, task_id: str | None = None) -> Locator:
    cards = page.locator("li.task")
    return cards.first if task_id is None else page.locator(f'li.task[data-task-id="{task_id}"]')


def _field(card: Locator, name: str) -> Locator:
    return card.locator(f'[data-field="{name}"]')


async def _submit_with_keyboard(page: Page, text: str) -> None:
    """Tabs to the input from the top of the page, types, and submits with Ctrl+Enter: the
    form works without a mouse."""
    textarea = page.get_by_label("Input text")
    for _ in range(MAX_TABS):
        await page.keyboard.press("Tab")
        if await textarea.evaluate("element => element === document.activeElement"):
            break
    else:
        raise AssertionError(f"the input was not reached in {MAX_TABS} Tabs")
    await page.keyboard.type(text)
    await page.keyboard.press("Control+Enter")


def _assert_clean(view: RecordedPage, *, expected_error: str | None = None) -> None:
    assert view.outside_requests() == []
    # A script or style refused by the Content-Security-Policy is logged as an error, and so
    # is an exception in the page's script.
    unexpected = [e for e in view.errors if expected_error is None or expected_error not in e]
    assert unexpected == []


async def test_console_follows_a_task_live_to_completed(
    browser: Browser, open_api: Deployment
) -> None:
    from playwright.async_api import expect

    async with recorded_page(browser, open_api.base_url) as view:
        page = view.page
        response = await page.goto(open_api.base_url + "/")
        assert response is not None
        assert "script-src 'self'" in response.headers["content-security-policy"]
        await _submit_with_keyboard(page, "stressed")

        card = _card(page)
        await expect(_field(card, "status")).to_have_text("COMPLETED", timeout=TIMEOUT_MS)
        await expect(_field(card, "result")).to_have_text("desserts")
        await expect(_field(card, "inputData")).to_have_text("stressed")
        await expect(_field(card, "attempts")).to_have_text("1 / 3")
        await expect(_field(card, "error")).to_have_text("—")
        for name in ("createdAt", "startedAt", "finishedAt", "queuedFor", "ranFor"):
            await expect(_field(card, name)).not_to_have_text("—")
        await expect(_field(card, "ranFor")).to_have_text(SHORT_DURATION)
        # Each change was announced to screen readers as it arrived over the websocket.
        announcer = page.locator("#announcer")
        await expect(announcer).to_contain_text("is now PROCESSING")
        await expect(announcer).to_contain_text("is now COMPLETED: desserts")
        assert open_api.ws_url in view.requests
        statuses = view.updated_statuses()
        assert statuses[-1] == "COMPLETED"
        assert "PROCESSING" in statuses
        await screenshot(page, "console")

        task_id = await _field(card, "id").inner_text()
        await page.reload()
        # The recent list comes back from localStorage, read again with task(id).
        await expect(_field(_card(page, task_id), "result")).to_have_text("desserts")
        await expect(page.locator("li.task")).to_have_count(1)
        _assert_clean(view)


async def test_console_reports_unauthenticated_until_a_token_is_given(
    browser: Browser, secured_api: Deployment
) -> None:
    from playwright.async_api import expect

    async with recorded_page(browser, secured_api.base_url) as view:
        page = view.page
        await page.goto(secured_api.base_url + "/")
        await page.get_by_label("Input text").fill("live")
        await page.get_by_role("button", name="Create task").click()
        errors = page.locator("#errors")
        await expect(errors).to_contain_text("UNAUTHENTICATED")
        await expect(errors).to_contain_text("bearer token", ignore_case=True)
        await expect(page.locator("li.task")).to_have_count(0)

        await page.get_by_label("Bearer token").fill(token_for("browser-alice"))
        await page.get_by_label("Bearer token").press("Enter")
        await expect(errors).to_be_empty()
        await page.get_by_role("button", name="Create task").click()
        card = _card(page)
        # The live updates carried the token in connection_init, or nothing would arrive.
        await expect(_field(card, "status")).to_have_text("COMPLETED", timeout=TIMEOUT_MS)
        await expect(_field(card, "result")).to_have_text("evil")
        await screenshot(page, "console-secured")

        # Another user's token: the task is not theirs to see, so it leaves the list.
        await page.get_by_label("Bearer token").fill(token_for("browser-bob"))
        await page.get_by_role("button", name="Use token").click()
        await expect(page.locator("li.task")).to_have_count(0)
        await page.reload()
        await expect(page.get_by_text("No tasks yet.")).to_be_visible()
        _assert_clean(view, expected_error=REFUSED_REQUEST)


async def test_console_reconnects_and_shows_what_happened_meanwhile(
    browser: Browser, open_api: Deployment
) -> None:
    """The API dies while a task waits; the task finishes while the page has no connection.
    The page reconnects on its own and shows the task COMPLETED. (Last in the module: it
    restarts the module's processes.)"""
    from playwright.async_api import expect

    (processor,) = open_api.processors
    processor.stop()  # the task waits in the queue until the API is gone
    try:
        async with recorded_page(browser, open_api.base_url) as view:
            page = view.page
            await page.goto(open_api.base_url + "/")
            await page.get_by_label("Input text").fill("outage")
            await page.get_by_role("button", name="Create task").click()
            card = _card(page)
            live = page.locator("#live-state")
            await expect(_field(card, "status")).to_have_text("PENDING")
            await expect(live).to_have_text("live")

            open_api.api.kill()
            await expect(live).to_have_text("reconnecting", timeout=TIMEOUT_MS)
            processor.start()
            await open_api.start_api()
            await expect(_field(card, "status")).to_have_text("COMPLETED", timeout=TIMEOUT_MS)
            await expect(_field(card, "result")).to_have_text("egatuo")
            # Only a new connection could have brought this: the page made it by itself.
            assert view.requests.count(open_api.ws_url) >= 2
    finally:
        if not processor.running:
            processor.start()
        if not open_api.api.running:
            await open_api.start_api()


async def test_console_asks_for_a_new_token_when_the_live_connection_refuses_it(
    browser: Browser, secured_api: Deployment
) -> None:
    """A token expires while a task is followed: the server closes the websocket with 4403,
    the page says so (and does not retry with the same token); a fresh token resumes it."""
    from playwright.async_api import expect

    (processor,) = secured_api.processors
    processor.stop()  # the task stays PENDING until the token has expired
    try:
        async with recorded_page(browser, secured_api.base_url) as view:
            page = view.page
            await page.goto(secured_api.base_url + "/")
            token = page.get_by_label("Bearer token")
            await token.fill(token_for("browser-carol", ttl_seconds=3))
            await token.press("Enter")
            await page.get_by_label("Input text").fill("expiring")
            await page.get_by_role("button", name="Create task").click()
            card = _card(page)
            live = page.locator("#live-state")
            await expect(_field(card, "status")).to_have_text("PENDING")
            await expect(live).to_have_text("live")

            await expect(live).to_have_text("refused", timeout=TIMEOUT_MS)
            errors = page.locator("#errors")
            await expect(errors).to_contain_text("WEBSOCKET_4403")
            await expect(errors).to_contain_text("Token expired")

            await token.fill(token_for("browser-carol"))
            await token.press("Enter")
            processor.start()
            await expect(_field(card, "status")).to_have_text("COMPLETED", timeout=TIMEOUT_MS)
            await expect(_field(card, "result")).to_have_text("gniripxe")
            await expect(errors).to_be_empty()
            _assert_clean(view)
    finally:
        if not processor.running:
            processor.start()
