"""Health, metrics, the OpenAPI document, and errors as problem documents everywhere."""

from __future__ import annotations

import codecs
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from ascend_webhooks.service.schemas import Health
from ascend_webhooks.store import Store, open_store
from tests.support.api import ADMIN_TOKEN, Api, api_settings, assert_problem, running_api

ORG = "/v1/organizations/{org}"
EVERY_ROUTE = {
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("post", "/v1/organizations"),
    ("get", "/v1/organizations"),
    ("get", ORG),
    ("post", f"{ORG}/tokens"),
    ("get", f"{ORG}/tokens"),
    ("delete", f"{ORG}/tokens/{{token}}"),
    ("get", "/v1/tokens"),
    ("post", "/v1/tokens"),
    ("delete", "/v1/tokens/{token}"),
    ("post", f"{ORG}/keys"),
    ("get", f"{ORG}/keys"),
    ("post", f"{ORG}/keys/{{key}}/activate"),
    ("delete", f"{ORG}/keys/{{key}}"),
    ("post", f"{ORG}/endpoints"),
    ("get", f"{ORG}/endpoints"),
    ("get", f"{ORG}/endpoints/{{endpoint}}"),
    ("patch", f"{ORG}/endpoints/{{endpoint}}"),
    ("delete", f"{ORG}/endpoints/{{endpoint}}"),
    ("post", f"{ORG}/events"),
    ("post", f"{ORG}/events/batch"),
    ("get", f"{ORG}/events"),
    ("get", f"{ORG}/events/{{event}}"),
    ("get", f"{ORG}/deliveries"),
    ("get", f"{ORG}/deliveries/{{delivery}}"),
    ("post", f"{ORG}/deliveries/{{delivery}}/retry"),
}


@pytest.fixture
async def api(store: Store, database_url: str) -> AsyncIterator[Api]:
    async with running_api(api_settings(database_url), store=store) as running:
        yield running


async def test_healthz_needs_no_token(api: Api) -> None:
    response = await api.call("GET", "/healthz", token=None, expect=200)
    assert Health.model_validate(response.json()).status == "ok"


async def test_healthz_is_503_when_the_database_does_not_answer(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    await store.open()
    async with running_api(api_settings(sqlite_url), store=store) as api:
        await store.close()
        response = await api.client.get("/healthz")
        assert_problem(response, 503)


async def test_metrics_parse_and_count_deliveries(api: Api) -> None:
    org = await api.organization()
    await api.endpoint(org)
    await api.publish(org, id="e1")
    response = await api.call("GET", "/metrics", token=None, expect=200)
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    gauge = families["ascend_webhooks_deliveries"]
    by_status = {s.labels["status"]: s.value for s in gauge.samples}
    assert by_status == {"pending": 1.0, "succeeded": 0.0, "failed": 0.0}
    assert "ascend_webhooks_events_published" in families
    assert "ascend_webhooks_attempts" in families


async def test_openapi_is_valid_and_describes_every_route(api: Api) -> None:
    response = await api.call("GET", "/openapi.json", token=None, expect=200)
    document: dict[str, Any] = response.json()
    validate(document)
    paths = document["paths"]
    described = {(m, p) for p, ops in paths.items() for m in ops}
    assert described == EVERY_ROUTE
    for method, path in EVERY_ROUTE:
        operation = paths[path][method]
        assert operation["summary"]
        responses = operation["responses"]
        if path.startswith("/v1"):
            assert operation["security"] == [{"HTTPBearer": []}]
            assert {"401", "503"} <= responses.keys()
        if "requestBody" in operation:  # a body that is not JSON, not sent as JSON, too large
            assert {"400", "413", "415", "422"} <= responses.keys(), (method, path)
        if any(parameter["name"] == "after" for parameter in operation.get("parameters", ())):
            assert "400" in responses, (method, path)  # a cursor that is not one
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                problem = response["content"]["application/problem+json"]["schema"]
                assert problem == {"$ref": "#/components/schemas/ProblemOut"}
        ok = [code for code in responses if code.startswith("2")]
        assert ok, path
        if path != "/metrics" and ok != ["204"]:
            schema = responses[ok[0]]["content"]["application/json"]["schema"]
            # A model, or (the publish routes, by their Prefer header) one of two models.
            assert all("$ref" in one for one in schema.get("anyOf", [schema])), (path, schema)
    schemas = document["components"]["schemas"]
    assert {"DeliveryOut", "EventPublished", "ProblemOut", "KeyCreated"} <= schemas.keys()
    assert "attempts" in schemas["DeliveryOut"]["properties"]
    batch = paths["/v1/organizations/{org}/events/batch"]["post"]
    assert (
        "return=minimal"
        in next(p for p in batch["parameters"] if p["name"] == "prefer")["description"]
    )
    answers = batch["responses"]["202"]["content"]["application/json"]["schema"]["anyOf"]
    assert {"#/components/schemas/EventBatchAccepted"} < {one["$ref"] for one in answers}


async def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    assert_problem(await api.call("GET", "/nowhere"), 404)
    assert_problem(await api.call("GET", "/v1/nowhere"), 404)
    assert_problem(await api.call("DELETE", "/v1/organizations"), 405)
    assert_problem(await api.call("PUT", "/healthz"), 405)


async def test_an_unexpected_error_is_a_logged_500_problem(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom() -> None:
        raise RuntimeError("kaboom")

    api.app.add_api_route("/boom", boom)
    response = await api.client.get("/boom")
    problem = assert_problem(response, 500)
    assert "kaboom" not in problem["detail"]  # no internals leak
    assert "kaboom" in caplog.text  # but they are logged


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("POST", "/v1/organizations", b"{"),
        ("POST", "/v1/organizations", b'{"name": null}'),
        ("POST", "/v1/organizations", b"\xff\xfe"),
        ("POST", "/v1/organizations/{org}/endpoints", b'{"url": "http://[::1"}'),
        ("POST", "/v1/organizations/{org}/endpoints", b'{"url": "http://127.0.0.1:99999/"}'),
        ("POST", "/v1/organizations/{org}/endpoints", b'{"url": "http://\\u0000/"}'),
        ("PATCH", "/v1/organizations/{org}/endpoints/x", b"[1]"),
        ("POST", "/v1/organizations/{org}/events/batch", b'{"events": {}}'),
        ("POST", "/v1/organizations/{org}/events/batch", b'{"events": [null]}'),
        ("POST", "/v1/organizations/{org}/tokens", b'{"name": []}'),
        ("GET", "/v1/organizations/{org}/deliveries?status=&limit=-1", b""),
        ("GET", "/v1/organizations/{org}/events?after=%00", b""),
    ],
)
async def test_garbage_never_causes_a_5xx(api: Api, method: str, path: str, raw: bytes) -> None:
    org = await api.organization()
    response = await api.call(
        method,
        path.replace("{org}", org),
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500
    assert_problem(response, response.status_code)


async def routes_taking_a_body(api: Api) -> list[tuple[str, str]]:
    """(METHOD, path template) of every route whose OpenAPI operation takes a body."""
    document = (await api.call("GET", "/openapi.json", token=None, expect=200)).json()
    return [
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    ]


async def test_a_body_that_is_not_json_is_400_on_every_route_that_takes_one(api: Api) -> None:
    org = await api.organization()
    await api.publish(org, id="evt_known")  # known: publishes go through the publish front
    ids = {"org": org, "endpoint": await api.endpoint(org)}
    taking = [(method, path.format(**ids)) for method, path in await routes_taking_a_body(api)]
    assert len(taking) == 7
    for method, path in taking:
        for raw in (b"{", b'{"name": "x",}', b"nope", b"\xff\xfe"):
            response = await api.call(
                method, path, content=raw, headers={"Content-Type": "application/json"}
            )
            problem = assert_problem(response, 400)
            assert problem["type"].endswith("#problem-bad-request"), (path, raw)
            assert "errors" not in problem


async def test_a_body_not_sent_as_json_is_415_on_every_route_that_takes_one(api: Api) -> None:
    """`curl -d` alone says application/x-www-form-urlencoded; the answer was a 422 "Input
    should be a valid dictionary", which does not say what to change."""
    org = await api.organization()
    ids = {"org": org, "endpoint": await api.endpoint(org)}
    taking = await routes_taking_a_body(api)
    assert sorted(path for _, path in taking) == sorted(VALID_BODIES)
    for method, template in taking:
        raw, path = json.dumps(VALID_BODIES[template]).encode(), template.format(**ids)
        for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
            headers = {} if content_type is None else {"Content-Type": content_type}
            response = await api.call(method, path, content=raw, headers=headers)
            problem = assert_problem(response, 415)
            assert problem["type"].endswith("#problem-unsupported-media-type"), path
            assert "application/json" in problem["detail"]
        for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
            response = await api.call(
                method, path, content=raw, headers={"Content-Type": content_type}
            )
            assert response.status_code < 300, (path, content_type, response.text)


# A valid body of each route that takes one, by its OpenAPI path.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "/v1/organizations": {"name": "Zoë"},
    f"{ORG}/tokens": {"name": "Zoë"},
    "/v1/tokens": {"name": "Zoë"},
    f"{ORG}/endpoints": {"url": "http://127.0.0.1:9/hook", "description": "Zoë"},
    f"{ORG}/endpoints/{{endpoint}}": {"description": "Zoë"},
    f"{ORG}/events": {"type": "t", "data": {"name": "Zoë"}},
    f"{ORG}/events/batch": {"events": [{"type": "t", "data": {"name": "Zoë"}}]},
}
NOT_UTF8 = {
    "UTF-16-LE": lambda text: text.encode("utf-16-le"),
    "UTF-16-BE": lambda text: text.encode("utf-16-be"),
    "UTF-16-LE with a BOM": lambda text: codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
    "UTF-16-BE with a BOM": lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
    "UTF-32-LE": lambda text: text.encode("utf-32-le"),
    "UTF-32-BE": lambda text: text.encode("utf-32-be"),
    "UTF-32 with a BOM": lambda text: text.encode("utf-32"),
    "an encoded surrogate": lambda text: text.replace("ë", "\ud800").encode(
        "utf-8", "surrogatepass"
    ),
}


async def test_a_body_that_is_not_utf8_is_400_on_every_route_that_takes_one(api: Api) -> None:
    # Python's json.loads of bytes guesses UTF-16 and UTF-32 by itself: valid bodies in them
    # were accepted, where RFC 8259 and the reference say JSON is UTF-8.
    org = await api.organization()
    await api.publish(org, id="evt_known")  # known: publishes go through the publish front
    ids = {"org": org, "endpoint": await api.endpoint(org)}
    unseen = await api.org_token(org)  # a token the front does not know: publishes go to the route
    taking = await routes_taking_a_body(api)
    assert sorted(path for _, path in taking) == sorted(VALID_BODIES)
    for method, path in taking:
        text = json.dumps(VALID_BODIES[path], ensure_ascii=False)
        tokens = [ADMIN_TOKEN, unseen] if "/events" in path else [ADMIN_TOKEN]
        for token, (name, encode) in itertools.product(tokens, NOT_UTF8.items()):
            response = await api.call(
                method, path.format(**ids), token=token, content=encode(text),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            problem = assert_problem(response, 400)
            assert problem["type"].endswith("#problem-bad-request"), (path, name)
            assert "not UTF-8" in problem["detail"], (path, name, problem)
        # UTF-8, with or without a byte order mark (RFC 8259: a parser may ignore one).
        for raw in (text.encode(), codecs.BOM_UTF8 + text.encode()):
            response = await api.call(
                method,
                path.format(**ids),
                content=raw,
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code in (200, 201, 202), (path, response.text)
    listed = await api.call("GET", f"/v1/organizations/{org}/events?limit=10", expect=200)
    assert len(listed.json()["data"]) == 1 + 2 * 2  # nothing of the refused bodies stored


async def test_no_page_loads_scripts_from_elsewhere(api: Api) -> None:
    # FastAPI's /docs and /redoc pull their scripts from a CDN onto the dashboard's origin.
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert_problem(await api.call("GET", path, token=None), 404)
    await api.call("GET", "/openapi.json", token=None, expect=200)


async def test_bad_content_length_is_400(api: Api) -> None:
    response = await api.client.post(
        "/v1/organizations", content=b"{}", headers={"Content-Length": "nope"}
    )
    assert_problem(response, 400)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/organizations", "GET, POST"),
        ("PUT", f"{ORG}/events", "GET, POST"),
        ("PUT", f"{ORG}/events/batch", "POST"),  # not an event's id
        ("PUT", f"{ORG}/events/evt_1", "GET"),
        ("POST", f"{ORG}/endpoints/ep_1", "DELETE, GET, PATCH"),
        ("OPTIONS", f"{ORG}/tokens/tok_1", "DELETE"),
        ("PUT", "/healthz", "GET"),
        ("HEAD", ORG, "GET"),
    ],
)
async def test_a_405_names_every_method_of_its_path(
    api: Api, method: str, path: str, allowed: str
) -> None:
    # Each method of a path is a route of its own: the answer lists them all (RFC 9110).
    response = await api.call(method, path.replace("{org}", "org_1"))
    if method == "HEAD":  # (no body to a HEAD)
        assert response.status_code == 405
    else:
        assert_problem(response, 405)
    assert response.headers["Allow"] == allowed


@pytest.mark.parametrize(
    "path",
    [
        "/v1/organizations?after=zzz",
        "/v1/organizations?after=ep_06H2MT8YMHNJ8ZHZG7ZBJFR3PG",  # another list's
        f"{ORG}/endpoints?after=zzz",
        f"{ORG}/events?after=zzz",
        f"{ORG}/deliveries?after=zzz",
    ],
)
async def test_a_cursor_no_list_handed_out_is_400(api: Api, path: str) -> None:
    org = await api.organization()
    problem = assert_problem(await api.call("GET", path.replace("{org}", org)), 400)
    assert problem["type"].endswith("#problem-invalid-cursor")


async def test_the_cursors_lists_hand_out_page_on(api: Api) -> None:
    for n in range(3):
        await api.organization(f"org {n}")
    first = (await api.call("GET", "/v1/organizations?limit=2", expect=200)).json()
    after = first["next_cursor"]
    rest = (await api.call("GET", f"/v1/organizations?limit=2&after={after}", expect=200)).json()
    assert {o["id"] for o in first["data"]}.isdisjoint(o["id"] for o in rest["data"])
    assert rest["data"]


@pytest.mark.parametrize("listing", ["events", "deliveries"])
async def test_event_and_delivery_cursors_tell_nothing_and_stay_with_their_organization(
    api: Api, listing: str
) -> None:
    # Their positions are sequence numbers that all organizations' rows share: in the clear,
    # two cursors of one organization would count the others' events published between them.
    mine, theirs = await api.organization("mine"), await api.organization("theirs")
    for org in (mine, theirs):
        await api.endpoint(org)
    for n in range(3):
        await api.publish(mine, id=f"evt_{n}")
    page = (await api.call("GET", f"/v1/organizations/{mine}/{listing}?limit=1", expect=200)).json()
    cursor = page["next_cursor"]
    assert cursor is not None
    assert not cursor.isdigit()
    again = (
        await api.call("GET", f"/v1/organizations/{mine}/{listing}?limit=1", expect=200)
    ).json()
    assert again["next_cursor"] != cursor  # sealed afresh each time: no two compare
    rest = await api.call(
        "GET", f"/v1/organizations/{mine}/{listing}", params={"after": cursor}, expect=200
    )
    assert len(rest.json()["data"]) == 2
    elsewhere = await api.call(
        "GET", f"/v1/organizations/{theirs}/{listing}", params={"after": cursor}
    )
    assert assert_problem(elsewhere, 400)["type"].endswith("#problem-invalid-cursor")


async def test_an_event_or_delivery_cursor_opens_only_in_the_list_that_handed_it_out(
    api: Api,
) -> None:
    # Both are sealed sequence numbers, but an event's seq is no position among deliveries.
    org = await api.organization()
    await api.endpoint(org)
    for n in range(3):
        await api.publish(org, id=f"evt_{n}")
    lists = f"/v1/organizations/{org}"
    cursors = {}
    for listing in ("events", "deliveries"):
        page = await api.call("GET", f"{lists}/{listing}?limit=1", expect=200)
        cursors[listing] = page.json()["next_cursor"]
    for listing, other in (("events", "deliveries"), ("deliveries", "events")):
        refused = await api.call("GET", f"{lists}/{other}", params={"after": cursors[listing]})
        assert assert_problem(refused, 400)["type"].endswith("#problem-invalid-cursor")
    # Filters keep a list's positions: a filtered page's cursor pages on without the filter.
    for listing, query in (("events", "type=invoice.paid"), ("deliveries", "status=pending")):
        page = await api.call("GET", f"{lists}/{listing}?limit=1&{query}", expect=200)
        after = page.json()["next_cursor"]
        rest = await api.call("GET", f"{lists}/{listing}", params={"after": after}, expect=200)
        assert len(rest.json()["data"]) == 2


async def test_answers_that_carry_a_secret_shown_once_may_not_be_cached(api: Api) -> None:
    # Found by their schemas, so that a new route handing out a secret is held to it too.
    document = (await api.call("GET", "/openapi.json", token=None, expect=200)).json()
    schemas = document["components"]["schemas"]
    shown_once = {
        name
        for name, schema in schemas.items()
        if any(
            "shown once" in p.get("description", "") for p in schema.get("properties", {}).values()
        )
    }
    assert shown_once == {"TokenCreated", "KeyCreated"}
    carrying = set()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                if schema.get("$ref", "").rsplit("/", 1)[-1] in shown_once:
                    assert answer["headers"]["Cache-Control"]["schema"]["const"] == "no-store"
                    carrying.add((method.upper(), path, status))
    assert carrying == {
        ("POST", f"{ORG}/tokens", "201"),
        ("POST", "/v1/tokens", "201"),
        ("POST", f"{ORG}/keys", "201"),
    }
    org = await api.organization()
    for method, path, status in sorted(carrying):
        answer = await api.call(method, path.format(org=org), expect=int(status))
        assert answer.headers["Cache-Control"] == "no-store", path
    # The others are left to the usual rules (nothing is cached without freshness anyway).
    listed = await api.call("GET", f"/v1/organizations/{org}/keys", expect=200)
    assert "Cache-Control" not in listed.headers
