"""Organizations, API tokens and authentication, against every store."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ascend_webhooks.service.schemas import OrganizationList, OrganizationOut, TokenCreated
from ascend_webhooks.service.tokens import hash_token
from ascend_webhooks.store import Store
from tests.support.api import (
    Api,
    api_settings,
    assert_problem,
    raw_database_bytes,
    running_api,
)


@pytest.fixture
async def api(store: Store, database_url: str) -> AsyncIterator[Api]:
    async with running_api(api_settings(database_url), store=store) as running:
        yield running


async def test_create_list_get_organizations(api: Api) -> None:
    created = await api.call("POST", "/v1/organizations", json={"name": " Acme "}, expect=201)
    org = OrganizationOut.model_validate(created.json())
    assert org.name == "Acme"
    assert org.id
    await api.organization("Globex")
    listed = OrganizationList.model_validate(
        (await api.call("GET", "/v1/organizations", expect=200)).json()
    )
    assert [o.name for o in listed.data] == ["Acme", "Globex"]
    got = await api.call("GET", f"/v1/organizations/{org.id}", expect=200)
    assert OrganizationOut.model_validate(got.json()) == org


async def test_organization_pages(api: Api) -> None:
    names = [f"org{n}" for n in range(5)]
    for name in names:
        await api.organization(name)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"after": cursor} if cursor else {})
        page = (await api.call("GET", "/v1/organizations", params=params, expect=200)).json()
        assert len(page["data"]) <= 2
        seen += [o["name"] for o in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == names


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": "  "}, {"name": 5}, {"name": "x" * 201}, {"name": "a", "x": 1}, []],
)
async def test_bad_organization_bodies_are_422(api: Api, body: object) -> None:
    response = await api.call("POST", "/v1/organizations", json=body)
    problem = assert_problem(response, 422)
    assert problem["errors"]
    assert (await api.call("GET", "/v1/organizations")).json()["data"] == []


async def test_unknown_organization_is_404(api: Api) -> None:
    assert_problem(await api.call("GET", "/v1/organizations/org_nope"), 404)
    assert_problem(await api.call("POST", "/v1/organizations/org_nope/tokens"), 404)


async def test_organization_token_sees_only_its_organization(api: Api, store: Store) -> None:
    org = await api.organization("Acme")
    other = await api.organization("Globex")
    response = await api.call(
        "POST", f"/v1/organizations/{org}/tokens", json={"name": "ci"}, expect=201
    )
    created = TokenCreated.model_validate(response.json())
    assert created.organization_id == org
    assert created.name == "ci"
    assert re.fullmatch(r"aw_[A-Za-z0-9_-]{43}", created.token)
    # Stored by hash only: the hash finds it, and it belongs to the organization.
    found = await store.find_token(hash_token(created.token))
    assert found is not None
    assert found.organization_id == org

    token = created.token
    listed = (await api.call("GET", "/v1/organizations", token=token, expect=200)).json()
    assert [o["id"] for o in listed["data"]] == [org]
    await api.call("GET", f"/v1/organizations/{org}", token=token, expect=200)
    assert_problem(await api.call("GET", f"/v1/organizations/{other}", token=token), 404)
    forbidden = await api.call("POST", "/v1/organizations", json={"name": "x"}, token=token)
    assert_problem(forbidden, 403)
    # Self-service: an organization's token can issue more tokens for its organization only.
    await api.call("POST", f"/v1/organizations/{org}/tokens", token=token, expect=201)
    assert_problem(await api.call("POST", f"/v1/organizations/{other}/tokens", token=token), 404)
    # A token created without a body has no name.
    bare = await api.call("POST", f"/v1/organizations/{org}/tokens", expect=201)
    assert bare.json()["name"] is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "test-admin-token"},
        {"Authorization": "Bearer " + "x" * 5000},
    ],
)
async def test_missing_or_invalid_token_is_401(api: Api, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/v1/organizations"),
        ("POST", "/v1/organizations"),
        ("GET", "/v1/organizations/org_x/endpoints"),
        ("POST", "/v1/organizations/org_x/events"),
    ]:
        response = await api.call(method, path, token=None, headers=headers, json={})
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_generated_admin_token_is_printed_once_and_hashed(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = api_settings(sqlite_url, admin_token=None, master_key=None)
    async with running_api(settings) as api:
        lines = [line for line in capsys.readouterr().out.splitlines() if "aw_" in line]
        assert len(lines) == 1
        assert lines[0].startswith("Admin token")
        token = lines[0].rsplit(" ", 1)[1]
        await api.call("POST", "/v1/organizations", json={"name": "A"}, token=token, expect=201)
    async with running_api(settings) as api:
        assert "aw_" not in capsys.readouterr().out  # never printed again
        await api.call("GET", "/v1/organizations", token=token, expect=200)
    assert token.encode() not in raw_database_bytes(tmp_path)
    assert (tmp_path / "test.db.key").exists()  # the embedded default made its master key


async def test_configured_admin_token_needs_nothing_printed(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_api(api_settings(sqlite_url)) as api:
        await api.call("GET", "/v1/organizations", expect=200)
    assert "aw_" not in capsys.readouterr().out
