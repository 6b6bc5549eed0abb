"""The dashboard in a real browser, against a real ``ascend-webhooks serve`` and real receivers.

One ``serve`` process (SQLite, delivery workers on, fast retries, loopback endpoints allowed)
and one headless Chromium serve the whole module; each test has a fresh browser context, so its
own ``sessionStorage``. Every test fails on a page error or a Content-Security-Policy violation.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from tests.support.processes import (
    ADMIN,
    ADMIN_TOKEN,
    ServiceProcess,
    eventually,
    processes,
    service_env,
    setup_organization,
)
from tests.support.receivers import Receiver, Reply

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
XSS_IMG = '<img src=x onerror="window.__pwned=1">'
XSS_SCRIPT = "<script>window.__pwned=2</script>"

expect.set_options(timeout=10_000)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    directory = tmp_path_factory.mktemp("dashboard")
    env = service_env(f"sqlite:///{directory / 'service.db'}", RETRY_SCHEDULE="0.1,0.1")
    async with processes(directory) as group:
        yield await group.serve(env)


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's chromium; missing, the tests fail (they are part of ``make test``, not optional)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard's browser tests need Debian's chromium "
            "(`make test-tools` installs it; `make test` does so first)"
        )
    return CHROMIUM


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A page in a context of its own; the test fails on a script error or a CSP violation."""
    context = await browser.new_context()
    opened = await context.new_page()
    opened.set_default_timeout(10_000)
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            if "Content Security Policy" in message.text
            else None
        ),
    )
    try:
        yield opened
    finally:
        await context.close()
    assert not problems, problems


@pytest_asyncio.fixture(loop_scope="module")
async def api(service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.base_url, headers=ADMIN, timeout=10) as client:
        yield client


async def call(api: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    response = await api.request(method, path, json=body)
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


async def organization(api: httpx.AsyncClient, name: str) -> str:
    org: str = (await call(api, "POST", "/v1/organizations", {"name": name}))["id"]
    return org


async def sign_in(page: Page, service: ServiceProcess, token: str, at: str = "") -> None:
    await page.goto(f"{service.base_url}/dashboard/{at}")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


def view(page: Page, name: str) -> Any:
    return expect(page.locator(f'main[data-view="{name}"]'))


async def test_a_bad_token_is_refused_and_the_admin_token_lists_the_organizations(
    page: Page, service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    await organization(api, "Globex")
    requests: list[tuple[str, str | None]] = []
    page.on("request", lambda r: requests.append((r.url, r.headers.get("authorization"))))

    await sign_in(page, service, "aw_not_a_token")
    await expect(page.locator("#login-message")).to_contain_text(
        "The API refused this token (401: invalid token)"
    )
    assert await page.evaluate("sessionStorage.length") == 0

    await page.get_by_label("API token").fill(ADMIN_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await view(page, "organizations").to_be_visible()
    await expect(page).to_have_url(re.compile(r"/dashboard/#/orgs$"))
    row = page.locator("tbody tr", has_text="Globex")
    await expect(row).to_be_visible()

    await page.reload()  # the token stays in the tab, the hash keeps the place
    await view(page, "organizations").to_be_visible()
    await row.get_by_role("link", name="Globex").click()
    await view(page, "events").to_be_visible()
    await expect(page.locator("#nav .org")).to_have_text("Globex")

    # Every API call carried a bearer token in its header; no URL ever carried a token.
    sent = {auth for url, auth in requests if "/v1/" in url}
    assert sent == {"Bearer aw_not_a_token", f"Bearer {ADMIN_TOKEN}"}
    assert not [url for url, _ in requests if ADMIN_TOKEN in url or "aw_not" in url]

    await page.locator("#nav").get_by_role("link", name="Organizations").click()
    await page.get_by_label("Name").fill("Wayne Enterprises")
    await page.get_by_role("button", name="Create organization").click()
    await view(page, "endpoints").to_be_visible()
    await expect(page.get_by_role("status")).to_have_text(
        "Organization “Wayne Enterprises” created."
    )
    names = [org["name"] for org in (await call(api, "GET", "/v1/organizations?limit=200"))["data"]]
    assert "Wayne Enterprises" in names

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("#login-message")).to_have_text("Signed out.")
    assert await page.evaluate("sessionStorage.length") == 0


async def test_an_endpoint_made_here_gets_a_signed_event_whose_delivery_shows_success(
    page: Page, service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    org = await organization(api, "Initech")
    async with Receiver() as receiver:
        await sign_in(page, service, ADMIN_TOKEN, f"#/orgs/{org}/keys")
        await view(page, "keys").to_be_visible()
        await page.get_by_role("button", name="Issue a key").click()
        secret = await page.locator("#new-secret").text_content()
        assert secret is not None
        assert secret.startswith("whsec_")
        receiver.secret = secret
        await expect(page.locator("tbody tr")).to_contain_text("signing")

        await page.locator("#nav").get_by_role("link", name="Endpoints").click()
        await view(page, "endpoints").to_be_visible()
        await page.get_by_label("URL").fill("ftp://127.0.0.1/h")  # the API's problem, shown
        await page.get_by_role("button", name="Create endpoint").click()
        await expect(page.get_by_role("alert")).to_have_text(
            "Unprocessable Entity — url: the URL must start with http:// or https://"
        )
        await page.get_by_label("URL").fill(receiver.url)
        await page.get_by_label("Event types").fill("invoice.paid, invoice.voided")
        await page.get_by_label("Description").fill("billing")
        await page.get_by_role("button", name="Create endpoint").click()
        await expect(page.get_by_role("status")).to_have_text("Endpoint created.")
        row = page.locator("tbody tr", has_text=receiver.url)
        await expect(row).to_contain_text("invoice.paid, invoice.voided")
        await expect(row).to_contain_text("billing")
        await expect(row).to_contain_text("enabled")

        await call(
            api,
            "POST",
            f"/v1/organizations/{org}/events",
            {
                "id": "inv_7:paid",
                "type": "invoice.paid",
                "data": {"invoice": "inv_7", "amount": 4200},
            },
        )
        arrived = await receiver.wait_for_requests(1)
        assert arrived[0].verified, arrived[0].verify_error

        await page.locator("#nav").get_by_role("link", name="Events").click()
        await page.get_by_role("link", name="inv_7:paid").click()
        await view(page, "event").to_be_visible()
        await expect(page).to_have_url(re.compile(r"#/orgs/org_\w+/events/inv_7%3Apaid$"))
        payload = await page.locator("pre.payload").text_content()
        assert payload == '{\n  "invoice": "inv_7",\n  "amount": 4200\n}'
        deliveries = page.locator("tbody tr")
        await expect(deliveries).to_have_count(1)
        await expect(deliveries).to_contain_text(receiver.url)
        await expect(deliveries.locator(".badge")).to_have_text("succeeded")

        await deliveries.get_by_role("link").click()
        await view(page, "delivery").to_be_visible()
        await expect(page.locator("#delivery-status")).to_have_text("succeeded")
        attempt = page.locator("tbody tr")
        await expect(attempt).to_have_count(1)
        cells = await attempt.locator("td").all_text_contents()
        assert cells[0] == "1"
        assert cells[2:4] == ["200", "ok"]
        assert re.fullmatch(r"\d+\.\d ms", cells[4])
        assert not await page.get_by_role("button", name="Retry").count()

        # Disable, then delete once the confirmation is accepted.
        await page.locator("#nav").get_by_role("link", name="Endpoints").click()
        await row.get_by_role("button", name="Disable").click()
        await expect(row).to_contain_text("disabled")
        endpoints = (await call(api, "GET", f"/v1/organizations/{org}/endpoints"))["data"]
        assert [endpoint["enabled"] for endpoint in endpoints] == [False]
        page.once("dialog", lambda dialog: dialog.accept())
        await row.get_by_role("button", name="Delete").click()
        await expect(page.get_by_role("status")).to_have_text("Endpoint deleted.")
        await expect(row).to_have_count(0)
        assert (await call(api, "GET", f"/v1/organizations/{org}/endpoints"))["data"] == []


async def test_a_failed_delivery_shows_its_attempts_and_retry_sends_it_again(
    page: Page, service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    async with Receiver(behaviour=Reply(500, b"upstream down")) as receiver:
        org = await setup_organization(api, service.base_url, receiver.url, name="Hooli")
        published = await call(
            api, "POST", f"/v1/organizations/{org.id}/events", {"type": "payout.failed", "data": {}}
        )
        delivery = published["deliveries"][0]["id"]

        await sign_in(page, service, ADMIN_TOKEN, f"#/orgs/{org.id}/deliveries/{delivery}")
        await view(page, "delivery").to_be_visible()
        # The view looks again by itself while the delivery is pending.
        await expect(page.locator("#delivery-status")).to_have_text("failed")
        attempts = page.locator("tbody tr")
        await expect(attempts).to_have_count(3)  # the first attempt and the schedule's 2 retries
        for number in (1, 2, 3):
            cells = await attempts.nth(number - 1).locator("td").all_text_contents()
            assert cells[0] == str(number)
            assert cells[2:4] == ["500", "status_500"]
            assert cells[5] == "upstream down"

        receiver.respond(Reply(200))
        await page.get_by_role("button", name="Retry").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Retry scheduled: the delivery is pending again."
        )
        await expect(page.locator("#delivery-status")).to_have_text("succeeded")
        await expect(attempts).to_have_count(4)
        cells = await attempts.nth(3).locator("td").all_text_contents()
        assert cells[0] == "4"
        assert cells[2:4] == ["200", "ok"]
        assert len(receiver.requests) == 4

        await page.locator("#nav").get_by_role("link", name="Deliveries").click()
        await page.get_by_label("Status").select_option("succeeded")
        await page.get_by_role("button", name="Filter").click()
        await expect(page).to_have_url(re.compile(r"deliveries\?status=succeeded$"))
        await expect(page.locator("tbody tr")).to_have_count(1)
        await expect(page.locator("tbody tr")).to_contain_text(delivery)


async def test_an_organizations_token_sees_that_organization_only(
    page: Page, service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    mine = await organization(api, "Umbrella")
    other = await organization(api, "Cyberdyne")
    await call(api, "POST", f"/v1/organizations/{other}/endpoints", {"url": "https://x.test/h"})
    issued = await call(api, "POST", f"/v1/organizations/{mine}/tokens", {"name": "dash"})

    await sign_in(page, service, issued["token"])
    await view(page, "endpoints").to_be_visible()
    await expect(page).to_have_url(re.compile(f"#/orgs/{mine}/endpoints$"))
    await expect(page.locator("#nav .org")).to_have_text("Umbrella")
    await expect(page.locator("#nav").get_by_role("link", name="Organizations")).to_have_count(0)

    await page.goto(f"{service.base_url}/dashboard/#/orgs/{other}/endpoints")
    await view(page, "error").to_be_visible()
    await expect(page.get_by_role("alert")).to_have_text(
        f"Not Found — organization '{other}' not found"
    )
    await expect(page.locator("main")).not_to_contain_text("x.test")
    await page.goto(f"{service.base_url}/dashboard/#/orgs")  # the list: its own organization
    await view(page, "endpoints").to_be_visible()
    await expect(page).to_have_url(re.compile(f"#/orgs/{mine}/endpoints$"))

    # Revoked: the next call is a 401, which brings the sign-in form back with the reason.
    await call(api, "DELETE", f"/v1/organizations/{mine}/tokens/{issued['id']}")
    await page.get_by_role("button", name="Refresh").click()
    await view(page, "login").to_be_visible()
    await expect(page.locator("#login-message")).to_contain_text("refused this token (401")
    assert await page.evaluate("sessionStorage.length") == 0


async def test_markup_in_api_data_is_shown_as_text_and_never_runs(
    page: Page, service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    org = await organization(api, f"Evil {XSS_IMG}")
    await call(
        api,
        "POST",
        f"/v1/organizations/{org}/endpoints",
        {"url": "https://hooks.evil.test/h", "description": XSS_IMG},
    )
    await call(
        api,
        "POST",
        f"/v1/organizations/{org}/events",
        {
            "id": "evt_xss",
            "type": "<svg/onload=window.__pwned=3>",
            "data": {"a": XSS_SCRIPT, "b": XSS_IMG},
        },
    )

    await sign_in(page, service, ADMIN_TOKEN)
    await expect(page.locator("tbody")).to_contain_text(f"Evil {XSS_IMG}")
    await page.goto(f"{service.base_url}/dashboard/#/orgs/{org}/endpoints")
    await expect(page.locator("tbody tr td.description")).to_have_text(XSS_IMG)
    await page.goto(f"{service.base_url}/dashboard/#/orgs/{org}/events")
    await expect(page.locator("tbody tr")).to_contain_text("<svg/onload=window.__pwned=3>")
    await page.goto(f"{service.base_url}/dashboard/#/orgs/{org}/events/evt_xss")
    await view(page, "event").to_be_visible()
    payload = await page.locator("pre.payload").text_content()
    assert payload is not None
    assert XSS_SCRIPT in payload
    assert 'onerror=\\"window.__pwned=1\\"' in payload  # JSON-escaped quotes, as text

    assert await page.locator("main img, main script, main svg, #nav img").count() == 0
    assert await page.evaluate("typeof window.__pwned") == "undefined"


async def test_events_are_paged_newest_first_and_filtered_by_type(
    page: Page, service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    org = await organization(api, "Soylent")
    events = [
        {"id": f"e{n:02}", "type": "payout.paid" if n % 2 else "invoice.paid", "data": {"n": n}}
        for n in range(30)
    ]
    for event in events:  # one by one: "newest first" is then the order of publication
        await call(api, "POST", f"/v1/organizations/{org}/events", event)

    await sign_in(page, service, ADMIN_TOKEN, f"#/orgs/{org}/events")
    await view(page, "events").to_be_visible()
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(25)
    await expect(rows.first).to_contain_text("e29")
    await expect(rows.last).to_contain_text("e05")

    await page.get_by_role("link", name="Next page »").click()
    await expect(rows).to_have_count(5)
    await expect(rows.first).to_contain_text("e04")
    await expect(rows.last).to_contain_text("e00")
    await expect(page.get_by_role("link", name="Next page »")).to_have_count(0)
    await page.get_by_role("link", name="« First page").click()
    await expect(rows).to_have_count(25)
    await expect(rows.first).to_contain_text("e29")

    await page.get_by_label("Type").fill("payout.paid")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"events\?type=payout\.paid$"))
    await expect(rows).to_have_count(15)
    assert set(await rows.locator("td:nth-child(2)").all_text_contents()) == {"payout.paid"}
    await page.reload()
    await expect(rows).to_have_count(15)
    await expect(page.get_by_label("Type")).to_have_value("payout.paid")


@pytest.mark.parametrize("event_id", [".", ".."])
async def test_an_event_whose_id_is_a_dot_segment_opens(
    page: Page, service: ServiceProcess, api: httpx.AsyncClient, event_id: str
) -> None:
    # "." and ".." are valid ids, and a URL path segment a browser resolves away.
    org = await organization(api, f"Dots {len(event_id)}")
    event = {"id": event_id, "type": "invoice.paid", "data": {"dots": len(event_id)}}
    await call(api, "POST", f"/v1/organizations/{org}/events", event)
    # The real server answers the id encoded twice, as the dashboard sends it.
    twice = "%252E" * len(event_id)
    assert (await call(api, "GET", f"/v1/organizations/{org}/events/{twice}"))["id"] == event_id

    await sign_in(page, service, ADMIN_TOKEN, f"#/orgs/{org}/events")
    await page.get_by_role("link", name=event_id, exact=True).click()
    await view(page, "event").to_be_visible()
    await expect(page.locator("main h1")).to_have_text(f"Event {event_id}")
    payload = await page.locator("pre.payload").text_content()
    assert payload == f'{{\n  "dots": {len(event_id)}\n}}'

    await page.reload()  # the address alone opens it again
    await view(page, "event").to_be_visible()
    await expect(page.locator("main h1")).to_have_text(f"Event {event_id}")


async def test_long_ids_types_and_urls_wrap_inside_a_1280_pixel_window(
    page: Page, service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    # An id of 255 characters is valid, so is a type of 200 and a URL of 2,048, none with a
    # space to break at: each wraps in its cell rather than widen the page.
    org = await organization(api, "Longwood" + "w" * 192)  # a name of 200, shown in the nav
    event_type = "T" * 200
    url = "https://hooks.long.test/" + "u" * 1500
    endpoints = f"/v1/organizations/{org}/endpoints"
    await call(api, "POST", endpoints, {"url": url, "event_types": [event_type]})
    event = {"id": "L" * 255, "type": event_type, "data": {}, "ordering_key": "K" * 255}
    published = await call(api, "POST", f"/v1/organizations/{org}/events", event)
    delivery = published["deliveries"][0]["id"]
    await page.set_viewport_size({"width": 1280, "height": 800})

    await sign_in(page, service, ADMIN_TOKEN, f"#/orgs/{org}/endpoints")
    await page.goto(f"{service.base_url}/dashboard/#/orgs")
    await view(page, "organizations").to_be_visible()
    widths = {"organizations": await page.evaluate("document.documentElement.scrollWidth")}
    for place, name, shows in [
        ("endpoints", "endpoints", "tbody tr td.url"),
        ("events", "events", "tbody tr"),
        (f"events?type={'X' * 200}", "events", "p.empty"),
        ("deliveries", "deliveries", "tbody tr"),
        (f"events/{'L' * 255}", "event", "tbody tr"),
        (f"deliveries/{delivery}", "delivery", "#delivery-status"),
    ]:
        await page.goto(f"{service.base_url}/dashboard/#/orgs/{org}/{place}")
        await view(page, name).to_be_visible()
        await expect(page.locator(f"main {shows}")).to_have_count(1)
        widths[place[:20]] = await page.evaluate("document.documentElement.scrollWidth")
    assert max(widths.values()) <= 1280, widths


async def test_a_token_that_cannot_be_a_header_brings_the_sign_in_form_back(
    page: Page, service: ServiceProcess
) -> None:
    # fetch() refuses a header value outside Latin-1 or with a line break with a TypeError,
    # which is not the service failing to answer.
    await sign_in(page, service, f"{ADMIN_TOKEN}…")
    await view(page, "login").to_be_visible()
    await expect(page.locator("#login-message")).to_contain_text("This is not a valid token")
    assert await page.evaluate("sessionStorage.length") == 0

    # A token already in the tab, as an earlier page kept it, goes the same way.
    token = f"{ADMIN_TOKEN}\n"
    await page.evaluate("token => sessionStorage.setItem('ascend-webhooks.token', token)", token)
    await page.reload()
    await view(page, "login").to_be_visible()
    await expect(page.locator("#login-message")).to_contain_text("This is not a valid token")
    assert await page.evaluate("sessionStorage.length") == 0

    await sign_in(page, service, ADMIN_TOKEN)
    await view(page, "organizations").to_be_visible()


async def test_an_error_keeps_the_organizations_navigation_and_a_refresh_button(
    page: Page, service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    org = await organization(api, "Massive Dynamic")
    await sign_in(page, service, ADMIN_TOKEN, f"#/orgs/{org}/endpoints")
    await view(page, "endpoints").to_be_visible()

    # The database down: the API answers 503 with a problem document.
    problem = {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "the database is not answering",
    }
    api_routes = f"{service.base_url}/v1/**"
    await page.route(
        api_routes,
        lambda route: route.fulfill(
            status=503, json=problem, headers={"Content-Type": "application/problem+json"}
        ),
    )
    await page.get_by_role("button", name="Refresh").click()
    await view(page, "error").to_be_visible()
    await expect(page.get_by_role("alert")).to_have_text(
        "Service Unavailable — the database is not answering"
    )
    links = page.locator("#nav").get_by_role("link")
    await expect(links).to_have_text(["Organizations", "Endpoints", "Events", "Deliveries", "Keys"])
    await expect(page.locator("#nav .org")).to_have_text("Massive Dynamic")

    await page.unroute(api_routes)
    await page.get_by_role("button", name="Refresh").click()
    await view(page, "endpoints").to_be_visible()


async def a_failed_delivery(
    api: httpx.AsyncClient, service: ServiceProcess, name: str
) -> tuple[str, dict[str, Any]]:
    """An organization and the document of a delivery that failed 3 times, "upstream down"."""
    async with Receiver(behaviour=Reply(500, b"upstream down")) as receiver:
        org = await setup_organization(api, service.base_url, receiver.url, name=name)
        published = await call(
            api, "POST", f"/v1/organizations/{org.id}/events", {"type": "payout.paid", "data": {}}
        )
        path = f"/v1/organizations/{org.id}/deliveries/{published['deliveries'][0]['id']}"
        for _ in range(200):
            delivery: dict[str, Any] = await call(api, "GET", path)
            if delivery["status"] == "failed":
                return org.id, delivery
            await asyncio.sleep(0.05)
    raise AssertionError(f"still {delivery['status']}: {delivery}")


def pending(delivery: dict[str, Any], *, due_in: float, updated: float = 0) -> dict[str, Any]:
    """The delivery as it was before its last attempt, that attempt due in ``due_in`` s."""
    now = datetime.now(UTC)
    return delivery | {
        "status": "pending",
        "attempt_count": 2,
        "attempts": delivery["attempts"][:2],
        "next_attempt_at": (now + timedelta(seconds=due_in)).isoformat(),
        "updated_at": (now + timedelta(seconds=updated)).isoformat(),
    }


async def answer_delivery(
    page: Page, org: str, delivery: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The page gets the last document of the first list for its delivery; the second list
    grows by one at each request."""
    answers, looks = [delivery], []

    async def answer(route: Route) -> None:
        looks.append(route.request.url)
        await route.fulfill(json=answers[-1])

    await page.route(f"**/v1/organizations/{org}/deliveries/{delivery['id']}", answer)
    return answers, looks


async def test_a_pending_delivery_keeps_a_text_selection_and_updates_once_it_is_cleared(
    page: Page, service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    org, failed = await a_failed_delivery(api, service, "Tyrell")
    answers, _ = await answer_delivery(page, org, pending(failed, due_in=5))
    await sign_in(page, service, ADMIN_TOKEN, f"#/orgs/{org}/deliveries/{failed['id']}")
    await expect(page.locator("#delivery-status")).to_have_text("pending")
    await expect(page.locator("tbody tr")).to_have_count(2)

    # The user selects a response excerpt to copy it; meanwhile the attempt is recorded.
    select = "window.getSelection().selectAllChildren(document.querySelector('code.excerpt'))"
    await page.evaluate(select)
    answers.append(failed)
    await asyncio.sleep(4)  # more than two looks apart
    assert await page.evaluate("window.getSelection().toString()") == "upstream down"
    await expect(page.locator("#delivery-status")).to_have_text("pending")

    await page.evaluate("window.getSelection().removeAllRanges()")
    await expect(page.locator("#delivery-status")).to_have_text("failed")
    await expect(page.locator("tbody tr")).to_have_count(3)


async def test_a_pending_delivery_is_not_rebuilt_unchanged_and_looks_slowly_at_a_far_attempt(
    page: Page, service: ServiceProcess, api: httpx.AsyncClient
) -> None:
    org, failed = await a_failed_delivery(api, service, "Weyland")
    answers, looks = await answer_delivery(page, org, pending(failed, due_in=5))
    await sign_in(page, service, ADMIN_TOKEN, f"#/orgs/{org}/deliveries/{failed['id']}")
    await expect(page.locator("#delivery-status")).to_have_text("pending")
    await page.evaluate("window.shown = document.getElementById('delivery-status')")
    seen = len(looks)
    await eventually(lambda: len(looks) >= seen + 2, within=8, what="two more looks")
    assert await page.evaluate("document.contains(window.shown)")  # the same page

    # Its next attempt in an hour, the last change an hour ago: it looks every 10 s at most.
    answers.append(pending(failed, due_in=3600, updated=-3600))
    await page.reload()
    await expect(page.locator("#delivery-status")).to_have_text("pending")
    seen = len(looks)
    await asyncio.sleep(5)
    assert len(looks) == seen
