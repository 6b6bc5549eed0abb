"""The Starlette / FastAPI adapter, through Starlette's TestClient and a real uvicorn.

Every request is really signed with :func:`ascend_webhooks.sign`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response
from starlette.applications import Starlette
from starlette.testclient import TestClient

from ascend_webhooks import Event, sign
from ascend_webhooks.receiver import (
    MEMORY,
    AsyncRedisIdempotencyStore,
    Claim,
    MemoryIdempotencyStore,
    Router,
    SQLiteIdempotencyStore,
)
from ascend_webhooks.receiver.contrib.fastapi import (
    ascend_api_router,
    ascend_endpoint,
    ascend_route,
)
from tests.support.asgi import serve_in_thread as serve
from tests.support.examples import (
    check_announced_body_over_cap,
    check_chunked_body_over_cap,
    event_of_size,
    example_process,
    free_port,
    post_until_duplicate,
    urlopen_post,
)

SECRET = "whsec_fastapi_test"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def event_body(event_id: str = "evt_1", type_: str = "invoice.paid", **data: Any) -> bytes:
    return json.dumps({"id": event_id, "type": type_, "data": data or {"amount": 4200}}).encode()


def signed(body: bytes, secret: str = SECRET, **kwargs: Any) -> dict[str, str]:
    return {**sign(body, secret, **kwargs), "Content-Type": "application/json"}


def make_app(
    *,
    mode: str = "background",
    store: Any = MEMORY,
    fail: bool = False,
    secret: Any = SECRET,
    **options: Any,
) -> tuple[FastAPI, list[Event]]:
    router = Router()
    seen: list[Event] = []

    @router.on("invoice.paid")
    async def paid(event: Event) -> None:
        seen.append(event)
        if fail:
            raise RuntimeError("handler broke")

    app = FastAPI()
    app.add_api_route(
        "/webhooks",
        ascend_endpoint(secret, router, store=store, mode=mode, **options),  # type: ignore[arg-type]
        methods=["POST"],
    )
    return app, seen


@pytest.mark.parametrize("mode", ["background", "inline"])
def test_valid_request_is_200_and_the_handler_gets_the_event(mode: str) -> None:
    app, seen = make_app(mode=mode)
    body = event_body(amount=4200)
    response = TestClient(app).post("/webhooks", content=body, headers=signed(body))
    assert response.status_code == 200
    expected = "accepted" if mode == "background" else "processed"
    assert response.json() == {"received": True, "id": "evt_1", "status": expected}
    assert seen == [Event("evt_1", "invoice.paid", {"amount": 4200})]
    assert seen[0].raw == body


def test_bad_signature_is_401_problem_and_nothing_runs() -> None:
    app, seen = make_app()
    body = event_body()
    response = TestClient(app).post("/webhooks", content=body, headers=signed(body, "wrong"))
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "invalid_signature"
    assert seen == []


def test_a_tampered_body_is_401() -> None:
    app, seen = make_app()
    body = event_body(amount=1)
    headers = signed(body)
    response = TestClient(app).post("/webhooks", content=event_body(amount=1000), headers=headers)
    assert response.status_code == 401
    assert seen == []


def test_stale_timestamp_is_401() -> None:
    app, seen = make_app()
    body = event_body()
    headers = signed(body, timestamp=int(time.time()) - 3600)
    response = TestClient(app).post("/webhooks", content=body, headers=headers)
    assert response.status_code == 401
    assert "tolerance" in response.json()["detail"]
    assert seen == []


def test_malformed_json_is_400() -> None:
    app, seen = make_app()
    body = b'{"id": "evt_1", "type": '
    response = TestClient(app).post("/webhooks", content=body, headers=signed(body))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_payload"
    assert seen == []


def test_duplicate_id_is_acknowledged_and_handled_once() -> None:
    app, seen = make_app()
    client = TestClient(app)
    body = event_body()
    first = client.post("/webhooks", content=body, headers=signed(body))
    # The retry is signed afresh (a new timestamp), as the sender does on every attempt.
    second = client.post("/webhooks", content=body, headers=signed(body))
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["status"] == "duplicate"
    assert len(seen) == 1


def test_a_sqlite_store_dedupes_through_the_async_path(tmp_path: Path) -> None:
    with SQLiteIdempotencyStore(tmp_path / "events.db") as store:
        app, seen = make_app(store=store)
        other_app, other_seen = make_app(store=SQLiteIdempotencyStore(tmp_path / "events.db"))
        body = event_body()
        assert TestClient(app).post("/webhooks", content=body, headers=signed(body)).is_success
        # A second worker process with the same file sees the event as handled.
        again = TestClient(other_app).post("/webhooks", content=body, headers=signed(body))
        assert again.json()["status"] == "duplicate"
        assert (len(seen), len(other_seen)) == (1, 0)


def test_inline_failure_is_500_and_the_retry_runs_the_handler_again() -> None:
    app, seen = make_app(mode="inline", fail=True)
    client = TestClient(app)
    body = event_body()
    assert client.post("/webhooks", content=body, headers=signed(body)).status_code == 500
    assert client.post("/webhooks", content=body, headers=signed(body)).status_code == 500
    assert len(seen) == 2


def test_a_background_failure_releases_the_event_for_a_later_delivery() -> None:
    app, seen = make_app(mode="background", fail=True)
    client = TestClient(app)
    body = event_body()
    assert client.post("/webhooks", content=body, headers=signed(body)).status_code == 200
    assert client.post("/webhooks", content=body, headers=signed(body)).json()["status"] == (
        "accepted"
    )
    assert len(seen) == 2


def test_a_middleware_that_read_the_json_first_does_not_break_verification() -> None:
    app, seen = make_app()
    peeked: list[str] = []

    @app.middleware("http")
    async def peek(request: Request, call_next: Any) -> Response:
        if request.method == "POST":
            peeked.append((await request.json())["type"])
        response: Response = await call_next(request)
        return response

    body = event_body()
    response = TestClient(app).post("/webhooks", content=body, headers=signed(body))
    assert response.status_code == 200
    assert peeked == ["invoice.paid"]
    assert len(seen) == 1


def test_key_rotation_accepts_the_old_and_the_new_secret() -> None:
    app, seen = make_app(secret=["whsec_new", "whsec_old"])
    client = TestClient(app)
    for n, secret in enumerate(["whsec_old", "whsec_new"]):
        body = event_body(f"evt_{n}")
        assert client.post("/webhooks", content=body, headers=signed(body, secret)).is_success
    assert [e.id for e in seen] == ["evt_0", "evt_1"]


def test_plain_starlette_route_and_fastapi_api_router() -> None:
    router = Router()
    seen: list[str] = []
    router.add("invoice.paid", lambda e: seen.append(e.id))
    starlette_app = Starlette(routes=[ascend_route("/hooks", SECRET, router, mode="inline")])
    fastapi_app = FastAPI()
    fastapi_app.include_router(ascend_api_router(SECRET, router, path="/in", mode="inline"))
    for app, url, event_id in [(starlette_app, "/hooks", "evt_s"), (fastapi_app, "/in", "evt_f")]:
        body = event_body(event_id)
        assert TestClient(app).post(url, content=body, headers=signed(body)).status_code == 200
        assert TestClient(app).get(url).status_code == 405
    assert seen == ["evt_s", "evt_f"]
    assert "/in" not in fastapi_app.openapi()["paths"]


# -- the body cap ----------------------------------------------------------------------------

CAP = 4096


def test_a_body_over_the_cap_is_413_and_nothing_runs_or_is_recorded() -> None:
    store = MemoryIdempotencyStore()
    app, seen = make_app(mode="inline", store=store, max_body_bytes=CAP)
    body = event_of_size(CAP + 1)
    response = TestClient(app).post("/webhooks", content=body, headers=signed(body))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "body_too_large"
    assert "4096 bytes" in response.json()["detail"]
    assert seen == []
    assert store.claim("evt_big") is Claim.ACQUIRED  # nothing was claimed or completed


def test_the_default_cap_is_1_mib_and_a_body_of_exactly_the_cap_is_accepted() -> None:
    app, seen = make_app(mode="inline")
    client = TestClient(app)
    body = event_of_size(1_048_576)
    response = client.post("/webhooks", content=body, headers=signed(body))
    assert (response.status_code, response.json()["status"]) == (200, "processed")
    over = event_of_size(1_048_577, "evt_over")
    assert client.post("/webhooks", content=over, headers=signed(over)).status_code == 413
    assert [e.id for e in seen] == ["evt_big"]


def test_none_turns_the_cap_off() -> None:
    app, seen = make_app(mode="inline", max_body_bytes=None)
    body = event_of_size(2 * 1_048_576)
    assert TestClient(app).post("/webhooks", content=body, headers=signed(body)).is_success
    assert [e.id for e in seen] == ["evt_big"]


def test_a_streamed_body_is_refused_once_it_passes_the_cap() -> None:
    app, seen = make_app(mode="inline", max_body_bytes=CAP)
    body = event_of_size(CAP + 1)
    # No Content-Length: the adapter can only count the bytes as they come.
    response = TestClient(app).post(
        "/webhooks", content=iter([body[:CAP], body[CAP:]]), headers=signed(body)
    )
    assert response.status_code == 413
    assert seen == []


def test_a_body_a_middleware_read_first_is_held_to_the_cap() -> None:
    app, seen = make_app(mode="inline", max_body_bytes=CAP)

    @app.middleware("http")
    async def peek(request: Request, call_next: Any) -> Response:
        await request.body()
        response: Response = await call_next(request)
        return response

    client = TestClient(app)
    over = event_of_size(CAP + 1, "evt_over")
    # A Content-Length is no use here: the check must be on the bytes the middleware kept.
    streamed = client.post("/webhooks", content=iter([over]), headers=signed(over))
    assert streamed.status_code == 413
    exact = event_of_size(CAP)
    assert client.post("/webhooks", content=iter([exact]), headers=signed(exact)).is_success
    assert [e.id for e in seen] == ["evt_big"]


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), ("1", TypeError), (True, TypeError)])
def test_max_body_bytes_must_be_a_positive_int(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_body_bytes"):
        ascend_endpoint(SECRET, Router(), max_body_bytes=value)


# -- a real server on loopback ---------------------------------------------------------------


def test_real_server_answers_200_before_a_slow_handler_finishes() -> None:
    router = Router()
    gate = threading.Event()
    finished: list[Event] = []

    @router.on("invoice.paid")
    def slow(event: Event) -> None:
        gate.wait(10)  # stands for a handler that takes long
        finished.append(event)

    app = FastAPI()
    app.add_api_route("/webhooks", ascend_endpoint(SECRET, router), methods=["POST"])
    with serve(app) as base:
        body = event_body()
        started = time.monotonic()
        status, answer = urlopen_post(base + "/webhooks", body, signed(body))
        elapsed = time.monotonic() - started
        assert status == 200
        assert json.loads(answer)["status"] == "accepted"
        assert elapsed < 2  # the handler is still blocked: the answer did not wait for it
        assert finished == []
        gate.set()
        deadline = time.monotonic() + 5
        while not finished and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e.id for e in finished] == ["evt_1"]
        bad_status, _ = urlopen_post(base + "/webhooks", body, signed(body, "wrong"))
        assert bad_status == 401


# -- the example app -------------------------------------------------------------------------


def load_example(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("ASCEND_WEBHOOK_SECRETS", f"whsec_new,{SECRET}")
    monkeypatch.delenv("REDIS_URL", raising=False)
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_fastapi_example_receives_a_signed_event(monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example("fastapi_app", monkeypatch)
    client = TestClient(example.app)
    body = event_body("evt_ex", id="inv_7", amount=99)
    response = client.post("/webhooks", content=body, headers=signed(body))
    assert response.status_code == 200
    assert example.paid_invoices == {"inv_7": {"id": "inv_7", "amount": 99}}
    other = event_body("evt_po", "payout.failed", id="po_1")
    assert client.post("/webhooks", content=other, headers=signed(other, "whsec_new")).is_success
    assert example.failed_payouts == ["evt_po"]
    assert client.post("/webhooks", content=body, headers=signed(body, "wrong")).status_code == 401


# -- the example, run as a script ------------------------------------------------------------


def test_the_fastapi_example_runs_as_a_script(tmp_path: Path) -> None:
    port = free_port()
    env = {"ASCEND_WEBHOOK_SECRETS": f"whsec_new,{SECRET}", "PORT": str(port)}
    args = [str(EXAMPLES / "fastapi_app.py")]
    with example_process(args, env, port, tmp_path / "server.log") as base:
        body = event_body("evt_script")
        post_until_duplicate(base + "/webhooks", body, lambda: signed(body))
        status, _ = urlopen_post(base + "/webhooks", body, signed(body, "wrong"))
        assert status == 401


# -- a shared Redis store ----------------------------------------------------------------------


async def test_two_apps_sharing_async_redis_handle_an_event_once() -> None:
    import httpx
    import redis

    url = "redis://127.0.0.1:6379/0"
    probe = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        probe.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no Redis at {url}: {exc}")
        pytest.skip(f"no Redis at {url}: {exc}")
    prefix = f"ascend-webhooks-test:{uuid.uuid4().hex}:"
    stores = [AsyncRedisIdempotencyStore.from_url(url, prefix=prefix) for _ in range(2)]
    try:
        apps = [make_app(store=store, mode="inline") for store in stores]
        body = event_body()
        answers = []
        for app, _ in apps:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as c:
                answers.append(
                    (await c.post("/webhooks", content=body, headers=signed(body))).json()
                )
        assert [a["status"] for a in answers] == ["processed", "duplicate"]
        assert [len(seen) for _, seen in apps] == [1, 0]
        assert probe.get(prefix + "evt_1") == b"d"
    finally:
        for store in stores:
            await store.aclose()
        keys = list(probe.scan_iter(match=prefix + "*"))
        if keys:
            probe.delete(*keys)
        probe.close()


def test_real_server_refuses_an_announced_oversized_body_without_waiting_for_it() -> None:
    app, seen = make_app(mode="inline", max_body_bytes=CAP)
    with serve(app) as base:
        check_announced_body_over_cap(base + "/webhooks", CAP, signed)
    assert [e.id for e in seen] == ["evt_big"]


def test_real_server_stops_reading_a_chunked_body_once_it_passes_the_cap() -> None:
    app, seen = make_app(mode="inline", max_body_bytes=CAP)
    with serve(app) as base:
        check_chunked_body_over_cap(base + "/webhooks", CAP, signed)
    assert [e.id for e in seen] == ["evt_big"]
