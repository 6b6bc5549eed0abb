"""Listing and revoking API tokens (organization and admin), against every store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ascend_webhooks.service.schemas import TokenCreated, TokenList
from ascend_webhooks.service.tokens import hash_token
from ascend_webhooks.store import Store
from tests.support.api import Api, api_settings, assert_problem, running_api


@pytest.fixture
async def api(store: Store, database_url: str) -> AsyncIterator[Api]:
    async with running_api(api_settings(database_url), store=store) as running:
        yield running


async def _issue(api: Api, path: str, name: str | None = None) -> TokenCreated:
    body = {"name": name} if name is not None else None
    response = await api.call("POST", path, json=body, expect=201)
    return TokenCreated.model_validate(response.json())


async def test_listing_shows_no_secrets(api: Api) -> None:
    org = await api.organization()
    first = await _issue(api, f"/v1/organizations/{org}/tokens", "ci")
    second = await _issue(api, f"/v1/organizations/{org}/tokens")
    response = await api.call("GET", f"/v1/organizations/{org}/tokens", expect=200)
    listed = TokenList.model_validate(response.json())
    assert {(t.id, t.name) for t in listed.data} == {(first.id, "ci"), (second.id, None)}
    for item in response.json()["data"]:
        assert set(item) == {"id", "name", "created_at"}
    for secret in (first.token, second.token):
        assert secret not in response.text
        assert hash_token(secret).hex() not in response.text
    # The organization's own token may list them too.
    as_org = await api.call("GET", f"/v1/organizations/{org}/tokens", token=first.token)
    assert as_org.status_code == 200
    assert {t["id"] for t in as_org.json()["data"]} == {first.id, second.id}


async def test_a_deleted_token_is_refused_at_once(api: Api) -> None:
    org = await api.organization()
    issued = await _issue(api, f"/v1/organizations/{org}/tokens")
    # Used once first, so the token sits in this process's auth cache.
    await api.call("GET", f"/v1/organizations/{org}", token=issued.token, expect=200)
    await api.call("DELETE", f"/v1/organizations/{org}/tokens/{issued.id}", expect=204)
    response = await api.call("GET", f"/v1/organizations/{org}", token=issued.token)
    assert_problem(response, 401)
    listed = await api.call("GET", f"/v1/organizations/{org}/tokens", expect=200)
    assert listed.json()["data"] == []
    assert_problem(await api.call("DELETE", f"/v1/organizations/{org}/tokens/{issued.id}"), 404)


async def test_a_token_may_delete_itself(api: Api) -> None:
    org = await api.organization()
    issued = await _issue(api, f"/v1/organizations/{org}/tokens")
    path = f"/v1/organizations/{org}/tokens/{issued.id}"
    await api.call("DELETE", path, token=issued.token, expect=204)
    assert_problem(await api.call("GET", f"/v1/organizations/{org}", token=issued.token), 401)


async def test_organizations_cannot_see_or_delete_each_others_tokens(api: Api) -> None:
    org_a, org_b = await api.organization("A"), await api.organization("B")
    token_a = await _issue(api, f"/v1/organizations/{org_a}/tokens")
    token_b = await _issue(api, f"/v1/organizations/{org_b}/tokens")
    admin = await _issue(api, "/v1/tokens")
    for path in (f"/v1/organizations/{org_b}/tokens", f"/v1/organizations/{org_b}/tokens/x"):
        method = "GET" if path.endswith("tokens") else "DELETE"
        assert_problem(await api.call(method, path, token=token_a.token), 404)
    assert_problem(
        await api.call(
            "DELETE", f"/v1/organizations/{org_b}/tokens/{token_b.id}", token=token_a.token
        ),
        404,
    )
    # B's token named under A's organization (where A may act) is still not found.
    assert_problem(
        await api.call(
            "DELETE", f"/v1/organizations/{org_a}/tokens/{token_b.id}", token=token_a.token
        ),
        404,
    )
    # Nor is an admin token, through an organization's route.
    assert_problem(await api.call("DELETE", f"/v1/organizations/{org_a}/tokens/{admin.id}"), 404)
    assert_problem(await api.call("GET", "/v1/organizations/org_missing/tokens"), 404)
    # Everything named above still works.
    await api.call("GET", f"/v1/organizations/{org_b}", token=token_b.token, expect=200)
    await api.call("GET", "/v1/tokens", token=admin.token, expect=200)


async def test_admin_token_routes(api: Api) -> None:
    org = await api.organization()
    org_token = await _issue(api, f"/v1/organizations/{org}/tokens")
    for method, path in [("GET", "/v1/tokens"), ("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/x")]:
        assert_problem(await api.call(method, path, token=org_token.token), 403)
        assert_problem(await api.call(method, path, token=None), 401)
    issued = await _issue(api, "/v1/tokens", "ops")
    assert issued.organization_id is None
    assert issued.token.startswith("aw_")
    # The new admin token works as admin: it may create organizations and list admin tokens.
    await api.call("POST", "/v1/organizations", token=issued.token, json={"name": "B"}, expect=201)
    response = await api.call("GET", "/v1/tokens", token=issued.token, expect=200)
    assert response.json()["data"] == [
        {"id": issued.id, "name": "ops", "created_at": response.json()["data"][0]["created_at"]}
    ]
    assert issued.token not in response.text
    # An organization's token is not an admin token.
    assert_problem(await api.call("DELETE", f"/v1/tokens/{org_token.id}"), 404)
    # The configured admin token is set, so the last stored admin token may go.
    await api.call("DELETE", f"/v1/tokens/{issued.id}", expect=204)
    assert_problem(await api.call("GET", "/v1/tokens", token=issued.token), 401)
    assert (await api.call("GET", "/v1/tokens", expect=200)).json()["data"] == []
    assert_problem(await api.call("DELETE", f"/v1/tokens/{issued.id}"), 404)


async def test_the_last_stored_admin_token_cannot_be_deleted(
    database_url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    # No configured admin token: the service makes one on its first start and prints it.
    settings = api_settings(database_url, admin_token=None)
    async with running_api(settings, store=store) as api:
        printed = capsys.readouterr().out
        bootstrap = printed.rsplit(" ", 1)[-1].strip()
        listed = (await api.call("GET", "/v1/tokens", token=bootstrap, expect=200)).json()["data"]
        assert len(listed) == 1
        first_id = listed[0]["id"]
        problem = assert_problem(
            await api.call("DELETE", f"/v1/tokens/{first_id}", token=bootstrap), 409
        )
        assert problem["type"].endswith("last-admin-token")
        await api.call("GET", "/v1/tokens", token=bootstrap, expect=200)  # still works
        # Rotation: issue a second, delete the first with it; the second is now the last.
        second = await _issue_as(api, bootstrap)
        await api.call("DELETE", f"/v1/tokens/{first_id}", token=second.token, expect=204)
        assert_problem(await api.call("GET", "/v1/tokens", token=bootstrap), 401)
        assert_problem(await api.call("DELETE", f"/v1/tokens/{second.id}", token=second.token), 409)
        assert_problem(await api.call("DELETE", "/v1/tokens/tok_missing", token=second.token), 404)
        await api.call("GET", "/v1/tokens", token=second.token, expect=200)


async def _issue_as(api: Api, token: str) -> TokenCreated:
    response = await api.call("POST", "/v1/tokens", token=token, expect=201)
    return TokenCreated.model_validate(response.json())
