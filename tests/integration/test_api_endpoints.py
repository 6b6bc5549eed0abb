"""Endpoints: CRUD, URL rules (HTTPS, SSRF guard), event type filters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ascend_webhooks.service.schemas import EndpointList, EndpointOut
from ascend_webhooks.store import Store
from tests.support.api import Api, api_settings, assert_problem, running_api


@pytest.fixture
async def api(store: Store, database_url: str) -> AsyncIterator[Api]:
    async with running_api(api_settings(database_url), store=store) as running:
        yield running


@pytest.fixture
async def strict_api(sqlite_url: str) -> AsyncIterator[Api]:
    """The default rules: HTTPS only, no private or loopback targets."""
    settings = api_settings(sqlite_url, allow_http=False, allow_private_networks=False)
    async with running_api(settings) as running:
        yield running


async def test_endpoint_crud(api: Api) -> None:
    org = await api.organization()
    path = f"/v1/organizations/{org}/endpoints"
    body = {"url": "http://127.0.0.1:8080/hook", "event_types": ["invoice.paid"]}
    created = EndpointOut.model_validate((await api.call("POST", path, json=body)).json())
    assert created.url == body["url"]
    assert created.event_types == ["invoice.paid"]
    assert created.enabled is True
    assert created.description is None
    assert created.organization_id == org

    one = await api.call("GET", f"{path}/{created.id}", expect=200)
    assert EndpointOut.model_validate(one.json()) == created

    patched = await api.call(
        "PATCH",
        f"{path}/{created.id}",
        json={"event_types": None, "description": "billing", "enabled": False},
        expect=200,
    )
    after = EndpointOut.model_validate(patched.json())
    assert after.event_types is None
    assert after.description == "billing"
    assert after.enabled is False
    assert after.url == created.url  # untouched fields stay

    moved = await api.call(
        "PATCH", f"{path}/{created.id}", json={"url": "http://127.0.0.1:9000/x"}, expect=200
    )
    assert moved.json()["url"] == "http://127.0.0.1:9000/x"
    assert moved.json()["description"] == "billing"
    unchanged = await api.call("PATCH", f"{path}/{created.id}", json={}, expect=200)
    assert unchanged.json()["url"] == "http://127.0.0.1:9000/x"

    deleted = await api.call("DELETE", f"{path}/{created.id}", expect=204)
    assert deleted.content == b""
    assert_problem(await api.call("GET", f"{path}/{created.id}"), 404)
    assert_problem(await api.call("DELETE", f"{path}/{created.id}"), 404)
    assert_problem(await api.call("PATCH", f"{path}/{created.id}", json={}), 404)


async def test_endpoint_list_pages(api: Api) -> None:
    org = await api.organization()
    ids = [await api.endpoint(org, f"http://127.0.0.1:9/{n}") for n in range(3)]
    first = EndpointList.model_validate(
        (await api.call("GET", f"/v1/organizations/{org}/endpoints?limit=2")).json()
    )
    assert len(first.data) == 2
    assert first.next_cursor is not None
    second = EndpointList.model_validate(
        (
            await api.call(
                "GET", f"/v1/organizations/{org}/endpoints?limit=2&after={first.next_cursor}"
            )
        ).json()
    )
    assert sorted(e.id for e in first.data + second.data) == sorted(ids)
    assert second.next_cursor is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"url": ""},
        {"url": 5},
        {"url": "not a url"},
        {"url": "ftp://127.0.0.1/x"},
        {"url": "http://127.0.0.1/x", "event_types": []},
        {"url": "http://127.0.0.1/x", "event_types": [""]},
        {"url": "http://127.0.0.1/x", "event_types": "invoice.paid"},
        {"url": "http://127.0.0.1/x", "event_types": [1]},
        {"url": "http://127.0.0.1/x", "enabled": "sometimes"},
        {"url": "http://127.0.0.1/x", "surprise": True},
        {"url": "http://user:pw@127.0.0.1/x"},
        {"url": "http://127.0.0.1/" + "x" * 3000},
    ],
)
async def test_bad_endpoint_bodies_are_422_and_store_nothing(
    api: Api, body: dict[str, Any]
) -> None:
    org = await api.organization()
    assert_problem(await api.call("POST", f"/v1/organizations/{org}/endpoints", json=body), 422)
    listed = await api.call("GET", f"/v1/organizations/{org}/endpoints", expect=200)
    assert listed.json()["data"] == []


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/hook",  # plain HTTP
        "https://127.0.0.1/hook",  # loopback
        "https://10.1.2.3/hook",  # private
        "https://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
        "https://192.0.0.192/opc/v2/instance/",  # another cloud's metadata (IANA: not global)
        "https://[::1]/hook",
        "https://localhost/hook",
    ],
)
async def test_forbidden_urls_are_422_naming_the_reason(strict_api: Api, url: str) -> None:
    org = await strict_api.organization()
    response = await strict_api.call(
        "POST", f"/v1/organizations/{org}/endpoints", json={"url": url}
    )
    problem = assert_problem(response, 422)
    assert problem["detail"].startswith("url: ")
    assert problem["errors"][0]["loc"] == ["body", "url"]


async def test_public_https_url_is_accepted_by_default(strict_api: Api) -> None:
    org = await strict_api.organization()
    endpoint = await strict_api.endpoint(org, "https://93.184.216.34/hook")
    path = f"/v1/organizations/{org}/endpoints/{endpoint}"
    # A PATCH is held to the same rules.
    response = await strict_api.call("PATCH", path, json={"url": "https://10.0.0.1/x"})
    assert_problem(response, 422)
    for field in ("url", "enabled"):
        assert_problem(await strict_api.call("PATCH", path, json={field: None}), 422)
    got = await strict_api.call("GET", path, expect=200)
    assert got.json()["url"] == "https://93.184.216.34/hook"
