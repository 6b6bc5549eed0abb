"""The Flask adapter, through Flask's test client and a real werkzeug server.

Every request is really signed with :func:`ascend_webhooks.sign`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from flask import Flask, Request, current_app, request
from werkzeug.serving import make_server

from ascend_webhooks import Event, sign
from ascend_webhooks.receiver import (
    MEMORY,
    Claim,
    MemoryIdempotencyStore,
    RawBodyUnavailableError,
    Router,
)
from ascend_webhooks.receiver.contrib.flask import ascend_blueprint, ascend_view
from tests.support.examples import (
    check_announced_body_over_cap,
    check_chunked_body_over_cap,
    event_of_size,
    example_process,
    free_port,
    post_until_duplicate,
    raw_post,
    urlopen_post,
)

SECRET = "whsec_flask_test"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def event_body(event_id: str = "evt_1", type_: str = "invoice.paid", **data: Any) -> bytes:
    return json.dumps({"id": event_id, "type": type_, "data": data or {"amount": 4200}}).encode()


def signed(body: bytes, secret: str = SECRET, **kwargs: Any) -> dict[str, str]:
    return {**sign(body, secret, **kwargs), "Content-Type": "application/json"}


class Recorder:
    """A handler that records events and lets the test hold it (a slow handler) or break it."""

    def __init__(self, *, fail: bool = False) -> None:
        self.events: list[Event] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()
        self.ran = threading.Event()

    def __call__(self, event: Event) -> None:
        self.gate.wait(10)
        self.events.append(event)
        self.ran.set()
        if self.fail:
            raise RuntimeError("handler broke")

    def wait(self, count: int = 1) -> list[Event]:
        deadline = time.monotonic() + 5
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.events


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def make_app(
    recorder: Recorder,
    *,
    mode: str = "inline",
    secret: Any = SECRET,
    executor: ThreadPoolExecutor | None = None,
    store: Any = MEMORY,
    **options: Any,
) -> Flask:
    router = Router()
    router.add("invoice.paid", recorder)
    app = Flask(__name__)
    view = ascend_view(secret, router, mode=mode, executor=executor, store=store, **options)  # type: ignore[arg-type]
    app.add_url_rule("/webhooks", view_func=view, methods=["POST"])
    return app


def test_valid_request_is_200_and_the_handler_gets_the_event() -> None:
    recorder = Recorder()
    client = make_app(recorder).test_client()
    body = event_body(amount=4200)
    response = client.post("/webhooks", data=body, headers=signed(body))
    assert response.status_code == 200
    assert response.get_json() == {"received": True, "id": "evt_1", "status": "processed"}
    assert recorder.events == [Event("evt_1", "invoice.paid", {"amount": 4200})]
    assert recorder.events[0].raw == body


def test_bad_signature_is_401_problem_and_nothing_runs() -> None:
    recorder = Recorder()
    client = make_app(recorder).test_client()
    body = event_body()
    response = client.post("/webhooks", data=body, headers=signed(body, "wrong"))
    assert response.status_code == 401
    assert response.content_type == "application/problem+json"
    assert json.loads(response.data)["code"] == "invalid_signature"
    assert recorder.events == []


def test_stale_timestamp_is_401() -> None:
    recorder = Recorder()
    client = make_app(recorder).test_client()
    body = event_body()
    response = client.post(
        "/webhooks", data=body, headers=signed(body, timestamp=int(time.time()) - 3600)
    )
    assert response.status_code == 401
    assert recorder.events == []


def test_malformed_json_is_400() -> None:
    recorder = Recorder()
    client = make_app(recorder).test_client()
    body = b"not json at all"
    response = client.post("/webhooks", data=body, headers=signed(body))
    assert response.status_code == 400
    assert json.loads(response.data)["code"] == "invalid_payload"
    assert recorder.events == []


def test_duplicate_id_is_acknowledged_and_handled_once() -> None:
    recorder = Recorder()
    client = make_app(recorder).test_client()
    body = event_body()
    first = client.post("/webhooks", data=body, headers=signed(body))
    second = client.post("/webhooks", data=body, headers=signed(body))
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.get_json()["status"] == "duplicate"
    assert len(recorder.events) == 1


def test_inline_failure_is_500_and_the_retry_runs_again() -> None:
    recorder = Recorder(fail=True)
    client = make_app(recorder).test_client()
    body = event_body()
    assert client.post("/webhooks", data=body, headers=signed(body)).status_code == 500
    assert client.post("/webhooks", data=body, headers=signed(body)).status_code == 500
    assert len(recorder.events) == 2


def test_a_before_request_that_read_the_json_first_does_not_break_verification() -> None:
    recorder = Recorder()
    app = make_app(recorder)
    peeked: list[str] = []

    @app.before_request
    def peek() -> None:
        peeked.append(request.get_json()["type"])

    body = event_body()
    response = app.test_client().post("/webhooks", data=body, headers=signed(body))
    assert response.status_code == 200
    assert peeked == ["invoice.paid"]
    assert len(recorder.events) == 1


def test_a_hook_that_drained_the_stream_gives_a_clear_error() -> None:
    recorder = Recorder()
    app = make_app(recorder)

    app.testing = True  # let the exception reach the test instead of a 500 page

    @app.before_request
    def drain() -> None:
        request.stream.read()

    body = event_body()
    with pytest.raises(RawBodyUnavailableError, match=r"get_data\(cache=True\)"):
        app.test_client().post("/webhooks", data=body, headers=signed(body))
    assert recorder.events == []


def test_background_mode_answers_before_a_slow_handler_finishes(pool: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    recorder.gate.clear()  # the handler is "slow": it waits until the test lets it go
    client = make_app(recorder, mode="background", executor=pool).test_client()
    body = event_body()
    started = time.monotonic()
    response = client.post("/webhooks", data=body, headers=signed(body))
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.get_json()["status"] == "accepted"
    assert elapsed < 1
    assert recorder.events == []
    # The same event again while it is being handled: come back later, do not run it twice.
    busy = client.post("/webhooks", data=body, headers=signed(body))
    assert busy.status_code == 409
    recorder.gate.set()
    assert [e.id for e in recorder.wait()] == ["evt_1"]
    time.sleep(0.05)  # the completion is recorded right after the handler returns
    again = client.post("/webhooks", data=body, headers=signed(body))
    assert again.get_json()["status"] == "duplicate"
    assert len(recorder.events) == 1


def test_the_default_pool_runs_background_handlers() -> None:
    recorder = Recorder()
    router = Router()
    router.add("invoice.paid", recorder)
    view = ascend_view(SECRET, router)
    app = Flask(__name__)
    app.add_url_rule("/webhooks", view_func=view, methods=["POST"])
    body = event_body()
    try:
        assert app.test_client().post("/webhooks", data=body, headers=signed(body)).is_json
        assert [e.id for e in recorder.wait()] == ["evt_1"]
    finally:
        view.receiver.shutdown()


def test_blueprint_with_key_rotation_and_post_only() -> None:
    recorder = Recorder()
    router = Router()
    router.add("invoice.paid", recorder)
    app = Flask(__name__)
    app.register_blueprint(
        ascend_blueprint(["whsec_new", "whsec_old"], router, url_prefix="/ascend", mode="inline")
    )
    client = app.test_client()
    for n, secret in enumerate(["whsec_old", "whsec_new"]):
        body = event_body(f"evt_{n}")
        response = client.post("/ascend/webhooks", data=body, headers=signed(body, secret))
        assert response.status_code == 200
    assert client.get("/ascend/webhooks").status_code == 405
    assert [e.id for e in recorder.events] == ["evt_0", "evt_1"]


# -- the body cap ----------------------------------------------------------------------------

CAP = 4096


def test_a_body_over_the_cap_is_413_and_nothing_runs_or_is_recorded() -> None:
    recorder = Recorder()
    store = MemoryIdempotencyStore()
    client = make_app(recorder, store=store, max_body_bytes=CAP).test_client()
    body = event_of_size(CAP + 1)
    response = client.post("/webhooks", data=body, headers=signed(body))
    assert response.status_code == 413
    assert response.content_type == "application/problem+json"
    assert response.get_json()["code"] == "body_too_large"
    assert "4096 bytes" in response.get_json()["detail"]
    assert recorder.events == []
    assert store.claim("evt_big") is Claim.ACQUIRED  # nothing was claimed or completed


def test_the_default_cap_is_1_mib_and_a_body_of_exactly_the_cap_is_accepted() -> None:
    recorder = Recorder()
    client = make_app(recorder).test_client()
    body = event_of_size(1_048_576)
    response = client.post("/webhooks", data=body, headers=signed(body))
    assert (response.status_code, response.get_json()["status"]) == (200, "processed")
    over = event_of_size(1_048_577, "evt_over")
    assert client.post("/webhooks", data=over, headers=signed(over)).status_code == 413
    assert [e.id for e in recorder.events] == ["evt_big"]


def test_none_turns_the_cap_off() -> None:
    recorder = Recorder()
    client = make_app(recorder, max_body_bytes=None).test_client()
    body = event_of_size(2 * 1_048_576)
    assert client.post("/webhooks", data=body, headers=signed(body)).status_code == 200
    assert [e.id for e in recorder.events] == ["evt_big"]


def test_a_smaller_max_content_length_of_the_app_still_applies() -> None:
    recorder = Recorder()
    app = make_app(recorder, max_body_bytes=CAP)
    app.config["MAX_CONTENT_LENGTH"] = 1024
    body = event_of_size(1025)
    response = app.test_client().post("/webhooks", data=body, headers=signed(body))
    assert response.status_code == 413
    assert "1024 bytes" in response.get_json()["detail"]
    assert recorder.events == []


def test_a_body_a_before_request_read_first_is_held_to_the_cap() -> None:
    recorder = Recorder()
    app = make_app(recorder, max_body_bytes=CAP)

    @app.before_request
    def peek() -> None:
        request.get_data(cache=True)

    body = event_of_size(CAP + 1)
    # The hook read the whole body before the view: the check is on the bytes it kept.
    response = app.test_client().post("/webhooks", data=body, headers=signed(body))
    assert response.status_code == 413
    assert recorder.events == []


# -- a real server on loopback ---------------------------------------------------------------


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_real_server_receives_a_signed_post(pool: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    recorder.gate.clear()
    app = make_app(recorder, mode="background", executor=pool)
    with serve(app) as base:
        body = event_body()
        started = time.monotonic()
        status, answer = urlopen_post(base + "/webhooks", body, signed(body))
        assert status == 200
        assert time.monotonic() - started < 2
        assert json.loads(answer)["id"] == "evt_1"
        recorder.gate.set()
        assert [e.id for e in recorder.wait()] == ["evt_1"]
        status, answer = urlopen_post(base + "/webhooks", body, signed(body, "wrong"))
        assert status == 401
        assert json.loads(answer)["status"] == 401


def test_real_server_refuses_an_announced_oversized_body_without_waiting_for_it() -> None:
    recorder = Recorder()
    with serve(make_app(recorder, max_body_bytes=CAP)) as base:
        check_announced_body_over_cap(base + "/webhooks", CAP, signed)
    assert [e.id for e in recorder.events] == ["evt_big"]


def test_real_server_stops_reading_a_chunked_body_once_it_passes_the_cap() -> None:
    recorder = Recorder()
    with serve(make_app(recorder, max_body_bytes=CAP)) as base:
        check_chunked_body_over_cap(base + "/webhooks", CAP, signed)
        # One byte over, and finished: over the cap all the same.
        over = event_of_size(CAP + 1, "evt_over")
        assert raw_post(base + "/webhooks", signed(over), [over], chunked=True)[0] == 413
    assert [e.id for e in recorder.events] == ["evt_big"]


class Flask30Request(Request):
    """Flask 3.0's request: ``max_content_length`` only reads the app's MAX_CONTENT_LENGTH
    (a setter for it per request came with Flask 3.1; pyproject accepts 3.0)."""

    @property
    def max_content_length(self) -> int | None:  # type: ignore[override]
        limit: int | None = current_app.config["MAX_CONTENT_LENGTH"]
        return limit


@pytest.mark.parametrize("app_limit", [None, 1024])
def test_the_cap_holds_without_a_per_request_max_content_length(app_limit: int | None) -> None:
    # With Flask 3.0 the view answered 500 to every request, trying to set that limit.
    recorder = Recorder()
    app = make_app(recorder, max_body_bytes=CAP)
    app.request_class = Flask30Request
    app.config["MAX_CONTENT_LENGTH"] = app_limit
    cap = app_limit or CAP
    with serve(app) as base:
        body = event_body()
        assert urlopen_post(base + "/webhooks", body, signed(body)) == (
            200,
            b'{"received":true,"id":"evt_1","status":"processed"}',
        )
        check_announced_body_over_cap(base + "/webhooks", cap, signed)
        check_chunked_body_over_cap(base + "/webhooks", cap, signed)
        over = event_of_size(cap + 1, "evt_over")
        assert raw_post(base + "/webhooks", signed(over), [over], chunked=True)[0] == 413
    assert [e.id for e in recorder.events] == ["evt_1", "evt_big"]


# -- the example app -------------------------------------------------------------------------


def load_example(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    monkeypatch.setenv("ASCEND_WEBHOOK_SECRETS", f"whsec_new,{SECRET}")
    monkeypatch.setenv("ASCEND_IDEMPOTENCY_DB", str(tmp_path / "events.db"))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_flask_example_receives_a_signed_event(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    example = load_example("flask_app", monkeypatch, tmp_path)
    client = example.app.test_client()
    body = event_body("evt_ex", id="inv_7", amount=99)
    try:
        assert client.post("/webhooks", data=body, headers=signed(body)).status_code == 200
        deadline = time.monotonic() + 5
        while not example.paid_invoices and time.monotonic() < deadline:
            time.sleep(0.005)
        assert example.paid_invoices == {"inv_7": {"id": "inv_7", "amount": 99}}
        assert (tmp_path / "events.db").exists()
        bad = client.post("/webhooks", data=body, headers=signed(body, "wrong"))
        assert bad.status_code == 401
    finally:
        for view in example.app.view_functions.values():
            receiver = getattr(view, "receiver", None)
            if receiver is not None:
                receiver.shutdown()
        example.store.close()


# -- the example, run as a script ------------------------------------------------------------


def test_the_flask_example_runs_as_a_script(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "ASCEND_WEBHOOK_SECRETS": f"whsec_new,{SECRET}",
        "PORT": str(port),
        "ASCEND_IDEMPOTENCY_DB": str(tmp_path / "events.db"),
    }
    args = [str(EXAMPLES / "flask_app.py")]
    with example_process(args, env, port, tmp_path / "server.log") as base:
        body = event_body("evt_script")
        post_until_duplicate(base + "/webhooks", body, lambda: signed(body))
        status, _ = urlopen_post(base + "/webhooks", body, signed(body, "wrong"))
        assert status == 401
