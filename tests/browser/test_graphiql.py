"""GraphiQL at /graphql in headless Chromium: the page loads from the API alone (every request
recorded, none to anywhere else) and runs a mutation, a live subscription and a query through
its own editor and buttons."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.browser.support import recorded_page, screenshot
from tests.e2e.conftest import Deployment

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator, Page

# Long enough for a cold page and a task's whole life; each wait ends as soon as it is met.
TIMEOUT_MS = 15_000


async def test_graphiql_runs_a_query_and_a_live_subscription_offline(
    browser: Browser, open_api: Deployment
) -> None:
    from playwright.async_api import expect

    async with recorded_page(browser, open_api.base_url) as view:
        page = view.page
        await page.goto(open_api.http_url)
        editor = page.locator(".graphiql-query-editor .CodeMirror")
        # The page has rendered its example query: React, GraphiQL and the editor all loaded.
        await expect(editor).to_contain_text("Welcome to GraphiQL", timeout=TIMEOUT_MS)
        response = page.locator(".graphiql-response .CodeMirror")

        await _run(page, 'mutation { createTask(input: {inputData: "stressed"}) { id status } }')
        await expect(response).to_contain_text('"status": "PENDING"', timeout=TIMEOUT_MS)
        task_id = (await _json(response))["data"]["createTask"]["id"]

        await _run(page, f'subscription {{ taskUpdated(id: "{task_id}") {{ status result }} }}')
        await expect(response).to_contain_text('"status": "COMPLETED"', timeout=TIMEOUT_MS)
        assert (await _json(response))["data"]["taskUpdated"] == {
            "status": "COMPLETED",
            "result": "desserts",
        }
        await screenshot(page, "graphiql")

        await _run(page, f'query {{ task(id: "{task_id}") {{ id result }} }}')
        await expect(response).to_contain_text(task_id, timeout=TIMEOUT_MS)
        assert (await _json(response))["data"]["task"] == {"id": task_id, "result": "desserts"}

    assert view.requests, "no request was recorded"
    assert view.outside_requests() == []
    # The subscription went over the websocket (its final event, then its completion), and
    # every asset came from the API.
    assert open_api.ws_url in view.requests
    assert view.updated_statuses()[-1] == "COMPLETED"
    assert len(view.messages("complete")) == 1
    assert any("/static/graphiql/graphiql@" in url for url in view.requests)
    assert view.errors == []


async def _run(page: Page, operation: str) -> None:
    """Replaces the editor's text by typing, then presses GraphiQL's run button."""
    await page.locator(".graphiql-query-editor .CodeMirror").click()
    await page.keyboard.press("Control+A")
    await page.keyboard.press("Delete")
    await page.keyboard.type(operation)
    # GraphiQL parses the editor 100 ms after the last keystroke, and picks the transport from
    # that parse: run before it and a subscription goes over HTTP. A person never types that
    # fast; the test waits until the parse is of the text typed.
    await page.wait_for_function(_PARSED, timeout=TIMEOUT_MS)
    await page.get_by_role("button", name="Execute query (Ctrl-Enter)").click()


_PARSED = """() => {
    const editor = document.querySelector(".graphiql-query-editor .CodeMirror").CodeMirror;
    const parsed = editor.documentAST;
    return Boolean(parsed && parsed.loc && parsed.loc.source.body === editor.getValue());
}"""


async def _json(response: Locator) -> Any:
    # The result pane is an editor showing GraphiQL's formatted JSON; it indents with
    # no-break spaces.
    return json.loads((await response.inner_text()).replace("\xa0", " "))
