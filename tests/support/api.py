"""Running the API in-process for tests: the real app, its lifespan, a real store.

``running_api`` enters the app's lifespan (store, admin token, optional worker) and yields an
``httpx.AsyncClient`` wired to the app through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from ascend_webhooks.service.app import create_app
from ascend_webhooks.service.settings import Settings
from ascend_webhooks.store import Store

ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MASTER_KEY = base64.b64encode(bytes(range(32))).decode()
PROBLEM = "application/problem+json"


def api_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for an in-process API: known admin token, loopback endpoints allowed."""
    base = Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        allow_http=True,
        allow_private_networks=True,
        master_key=MASTER_KEY,
    )
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass
class Api:
    client: httpx.AsyncClient
    app: FastAPI

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = ADMIN_TOKEN,
        json: Any = None,
        expect: int | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.client.request(method, path, json=json, headers=headers, **kwargs)
        assert response.status_code < 500, response.text
        if expect is not None:
            assert response.status_code == expect, response.text
        return response

    async def organization(self, name: str = "Acme") -> str:
        response = await self.call("POST", "/v1/organizations", json={"name": name}, expect=201)
        org_id: str = response.json()["id"]
        return org_id

    async def org_token(self, org: str) -> str:
        response = await self.call("POST", f"/v1/organizations/{org}/tokens", expect=201)
        token: str = response.json()["token"]
        return token

    async def endpoint(self, org: str, url: str = "http://127.0.0.1:9/hook", **fields: Any) -> str:
        response = await self.call(
            "POST", f"/v1/organizations/{org}/endpoints", json={"url": url, **fields}, expect=201
        )
        endpoint_id: str = response.json()["id"]
        return endpoint_id

    async def publish(self, org: str, **event: Any) -> httpx.Response:
        event.setdefault("type", "invoice.paid")
        event.setdefault("data", {})
        return await self.call("POST", f"/v1/organizations/{org}/events", json=event)


def assert_problem(response: httpx.Response, status: int) -> Mapping[str, Any]:
    """The response is an RFC 9457 problem with this status; returns its document."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


@asynccontextmanager
async def running_api(
    settings: Settings, *, store: Store | None = None, run_delivery: bool = False
) -> AsyncIterator[Api]:
    """The app with its lifespan entered, and a client talking to it in-process."""
    app = create_app(settings, store=store, run_delivery=run_delivery)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            yield Api(client, app)


def raw_database_bytes(directory: Path, name: str = "test.db") -> bytes:
    """Every byte of an SQLite database on disk, WAL and shared memory included."""
    return b"".join(
        path.read_bytes() for path in sorted(directory.iterdir()) if path.name.startswith(name)
    )
