"""The Django adapter, through Django's test client and real servers (wsgiref, Werkzeug's,
uvicorn under ASGI).

Every request is really signed with :func:`ascend_webhooks.sign`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from asgiref.sync import sync_to_async
from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import make_server as make_werkzeug_server

from tests.integration import django_settings

django_settings.configure()

from django.core.handlers.asgi import ASGIHandler  # noqa: E402 (needs configured settings)
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402

from ascend_webhooks import Event, sign  # noqa: E402
from ascend_webhooks.receiver import (  # noqa: E402
    Claim,
    MemoryIdempotencyStore,
    RawBodyUnavailableError,
    Router,
)
from ascend_webhooks.receiver.contrib.django import DjangoView, ascend_view  # noqa: E402
from tests.support.asgi import serve_in_thread  # noqa: E402
from tests.support.examples import (  # noqa: E402
    check_announced_body_over_cap,
    check_chunked_body_over_cap,
    event_of_size,
    example_process,
    free_port,
    pieces,
    post_until_duplicate,
    raw_post,
    urlopen_post,
)

SECRET = "whsec_django_test"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HERE = __name__


def event_body(event_id: str = "evt_1", type_: str = "invoice.paid", **data: Any) -> bytes:
    return json.dumps({"id": event_id, "type": type_, "data": data or {"amount": 4200}}).encode()


def signed(body: bytes, secret: str = SECRET, **kwargs: Any) -> dict[str, str]:
    return sign(body, secret, **kwargs)


class Recorder:
    """A handler that records events and lets the test hold it (a slow handler) or break it."""

    def __init__(self, *, fail: bool = False) -> None:
        self.events: list[Event] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, event: Event) -> None:
        self.gate.wait(10)
        self.events.append(event)
        if self.fail:
            raise RuntimeError("handler broke")

    def wait(self, count: int = 1) -> list[Event]:
        deadline = time.monotonic() + 5
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.events


@contextmanager
def urls(view: Callable[..., Any], route: str = "webhooks/") -> Iterator[None]:
    """Serve ``view`` at ``/route`` for the duration of the block."""
    module = types.ModuleType("ascend_test_urls")
    module.urlpatterns = [path(route, view)]  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=module):
        yield


def make_view(recorder: Recorder, **options: Any) -> DjangoView:
    router = Router()
    router.add("invoice.paid", recorder)
    options.setdefault("mode", "inline")
    return ascend_view(options.pop("secret", SECRET), router, **options)


def client() -> Client:
    # CSRF checks on, as in production: the view must be exempt by itself.
    return Client(enforce_csrf_checks=True)


def post(c: Client, body: bytes, headers: dict[str, str], url: str = "/webhooks/") -> Any:
    return c.post(url, data=body, content_type="application/json", headers=headers)


def test_valid_request_is_200_and_the_handler_gets_the_event() -> None:
    recorder = Recorder()
    body = event_body(amount=4200)
    with urls(make_view(recorder)):
        response = post(client(), body, signed(body))
    assert response.status_code == 200
    assert response.json() == {"received": True, "id": "evt_1", "status": "processed"}
    assert recorder.events == [Event("evt_1", "invoice.paid", {"amount": 4200})]
    assert recorder.events[0].raw == body


def test_bad_signature_is_401_problem_and_nothing_runs() -> None:
    recorder = Recorder()
    body = event_body()
    with urls(make_view(recorder)):
        response = post(client(), body, signed(body, "wrong"))
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert json.loads(response.content)["code"] == "invalid_signature"
    assert recorder.events == []


def test_stale_timestamp_is_401() -> None:
    recorder = Recorder()
    body = event_body()
    with urls(make_view(recorder)):
        response = post(client(), body, signed(body, timestamp=int(time.time()) - 3600))
    assert response.status_code == 401
    assert recorder.events == []


def test_malformed_json_is_400() -> None:
    recorder = Recorder()
    body = b"[1, 2"
    with urls(make_view(recorder)):
        response = post(client(), body, signed(body))
    assert response.status_code == 400
    assert json.loads(response.content)["code"] == "invalid_payload"
    assert recorder.events == []


def test_duplicate_id_is_acknowledged_and_handled_once() -> None:
    recorder = Recorder()
    body = event_body()
    with urls(make_view(recorder)):
        c = client()
        first = post(c, body, signed(body))
        second = post(c, body, signed(body))
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["status"] == "duplicate"
    assert len(recorder.events) == 1


def test_inline_failure_is_500_and_the_retry_runs_again() -> None:
    recorder = Recorder(fail=True)
    body = event_body()
    with urls(make_view(recorder)):
        assert post(client(), body, signed(body)).status_code == 500
        assert post(client(), body, signed(body)).status_code == 500
    assert len(recorder.events) == 2


def test_only_post_is_allowed() -> None:
    with urls(make_view(Recorder())):
        assert client().get("/webhooks/").status_code == 405


class BodyReadingMiddleware:
    """Reads ``request.body`` (Django keeps it): the webhook view still sees the raw bytes."""

    seen: list[str] = []  # noqa: RUF012 (a test probe)

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        self.seen.append(json.loads(request.body)["type"])
        return self.get_response(request)


class StreamReadingMiddleware:
    """Reads the request stream itself, so Django has no body left to give."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        json.load(request)  # HttpRequest is file-like: this consumes the stream
        return self.get_response(request)


def test_a_middleware_that_read_request_body_first_does_not_break_verification() -> None:
    recorder = Recorder()
    body = event_body()
    BodyReadingMiddleware.seen.clear()
    middleware = [*django_settings.MIDDLEWARE, f"{HERE}.BodyReadingMiddleware"]
    with urls(make_view(recorder)), override_settings(MIDDLEWARE=middleware):
        response = post(client(), body, signed(body))
    assert response.status_code == 200
    assert BodyReadingMiddleware.seen == ["invoice.paid"]
    assert len(recorder.events) == 1


def test_a_middleware_that_consumed_the_stream_gives_a_clear_error() -> None:
    recorder = Recorder()
    body = event_body()
    middleware = [*django_settings.MIDDLEWARE, f"{HERE}.StreamReadingMiddleware"]
    with (
        urls(make_view(recorder)),
        override_settings(MIDDLEWARE=middleware),
        pytest.raises(RawBodyUnavailableError, match=r"read\s+request\.body there"),
    ):
        post(client(), body, signed(body))
    assert recorder.events == []


def test_background_mode_answers_before_a_slow_handler_finishes() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    body = event_body()
    with ThreadPoolExecutor(2) as pool, urls(make_view(recorder, mode="background", executor=pool)):
        c = client()
        started = time.monotonic()
        response = post(c, body, signed(body))
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert response.json()["status"] == "accepted"
        assert elapsed < 1
        assert recorder.events == []
        assert post(c, body, signed(body)).status_code == 409  # being handled right now
        recorder.gate.set()
        assert [e.id for e in recorder.wait()] == ["evt_1"]
        time.sleep(0.05)
        assert post(c, body, signed(body)).json()["status"] == "duplicate"
    assert len(recorder.events) == 1


def test_key_rotation_accepts_the_old_and_the_new_secret() -> None:
    recorder = Recorder()
    with urls(make_view(recorder, secret=["whsec_new", "whsec_old"])):
        for n, secret in enumerate(["whsec_old", "whsec_new"]):
            body = event_body(f"evt_{n}")
            assert post(client(), body, signed(body, secret)).status_code == 200
    assert [e.id for e in recorder.events] == ["evt_0", "evt_1"]


# -- the body cap ----------------------------------------------------------------------------

CAP = 4096


def test_a_body_over_the_cap_is_413_and_nothing_runs_or_is_recorded() -> None:
    recorder = Recorder()
    store = MemoryIdempotencyStore()
    body = event_of_size(CAP + 1)
    with urls(make_view(recorder, store=store, max_body_bytes=CAP)):
        response = post(client(), body, signed(body))
    assert response.status_code == 413
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "body_too_large"
    assert "4096 bytes" in response.json()["detail"]
    assert recorder.events == []
    assert store.claim("evt_big") is Claim.ACQUIRED  # nothing was claimed or completed


def test_the_default_cap_is_1_mib_and_a_body_of_exactly_the_cap_is_accepted() -> None:
    recorder = Recorder()
    body = event_of_size(1_048_576)
    over = event_of_size(1_048_577, "evt_over")
    with urls(make_view(recorder)):
        response = post(client(), body, signed(body))
        assert (response.status_code, response.json()["status"]) == (200, "processed")
        assert post(client(), over, signed(over)).status_code == 413
    assert [e.id for e in recorder.events] == ["evt_big"]


def test_none_turns_the_cap_off() -> None:
    recorder = Recorder()
    body = event_of_size(2 * 1_048_576)  # under Django's own 2.5 MB default
    with urls(make_view(recorder, max_body_bytes=None)):
        assert post(client(), body, signed(body)).status_code == 200
    assert [e.id for e in recorder.events] == ["evt_big"]


@pytest.mark.parametrize("cap", [None, CAP])
def test_over_djangos_own_limit_is_a_413_too(cap: int | None) -> None:
    recorder = Recorder()
    body = event_of_size(1025)
    with (
        urls(make_view(recorder, max_body_bytes=cap)),
        override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1024),
    ):
        response = post(client(), body, signed(body))
    assert response.status_code == 413
    assert "1024 bytes" in response.json()["detail"]
    assert recorder.events == []


# -- a real server on loopback ---------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(*, dechunking: bool = False) -> Iterator[str]:
    """Serve Django on loopback: with wsgiref (what ``runserver`` builds on), whose input
    stream is the socket as it is; or, ``dechunking``, with Werkzeug's server, which decodes a
    chunked body and sets ``wsgi.input_terminated`` as gunicorn and mod_wsgi do."""
    server: BaseWSGIServer | WSGIServer
    if dechunking:
        server = make_werkzeug_server("127.0.0.1", 0, WSGIHandler(), threaded=True)
    else:
        server = make_server("127.0.0.1", 0, WSGIHandler(), handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_real_server_receives_a_signed_post() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    with (
        ThreadPoolExecutor(2) as pool,
        urls(make_view(recorder, mode="background", executor=pool)),
        serve() as base,
    ):
        body = event_body()
        started = time.monotonic()
        status, answer = urlopen_post(base + "/webhooks/", body, signed(body))
        assert status == 200
        assert time.monotonic() - started < 2
        assert json.loads(answer)["status"] == "accepted"
        recorder.gate.set()
        assert [e.id for e in recorder.wait()] == ["evt_1"]
        status, _ = urlopen_post(base + "/webhooks/", body, signed(body, "wrong"))
        assert status == 401


def test_real_server_refuses_an_announced_oversized_body_without_waiting_for_it() -> None:
    recorder = Recorder()
    with urls(make_view(recorder, max_body_bytes=CAP)), serve() as base:
        check_announced_body_over_cap(
            base + "/webhooks/", CAP, signed, {"Content-Type": "application/json"}
        )
    assert [e.id for e in recorder.events] == ["evt_big"]


def test_real_server_stops_reading_a_chunked_body_once_it_passes_the_cap() -> None:
    recorder = Recorder()
    with urls(make_view(recorder, max_body_bytes=CAP)), serve(dechunking=True) as base:
        check_chunked_body_over_cap(base + "/webhooks/", CAP, signed)
        # One byte over, and finished: over the cap all the same.
        over = event_of_size(CAP + 1, "evt_over")
        assert raw_post(base + "/webhooks/", signed(over), [over], chunked=True)[0] == 413
    assert [e.id for e in recorder.events] == ["evt_big"]


def test_a_chunked_body_over_djangos_own_limit_is_a_413_too() -> None:
    recorder = Recorder()
    body = event_of_size(1025)
    with (
        urls(make_view(recorder, max_body_bytes=CAP)),
        override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1024),
        serve(dechunking=True) as base,
    ):
        status, answer = raw_post(base + "/webhooks/", signed(body), pieces(body), chunked=True)
    assert status == 413
    assert "1024 bytes" in json.loads(answer)["detail"]
    assert recorder.events == []


def test_a_chunked_body_the_server_does_not_decode_is_411_unread() -> None:
    recorder = Recorder()
    with urls(make_view(recorder, max_body_bytes=CAP)), serve() as base:
        body = event_of_size(4 * CAP)
        # wsgiref hands over the socket with the chunks' framing and no end to read to: the
        # view answers at once, the unfinished body unread.
        status, answer = raw_post(
            base + "/webhooks/", signed(body), pieces(body), chunked=True, finish=False
        )
        assert status == 411
        assert json.loads(answer)["code"] == "length_required"
    assert recorder.events == []


def test_under_asgi_a_chunked_body_over_the_cap_is_413() -> None:
    # Django's ASGI handler receives the whole body (spooling it to disk) before any view
    # runs; the view still holds it to the cap, reading no more than one byte past it.
    recorder = Recorder()
    with urls(make_view(recorder, max_body_bytes=CAP)), serve_in_thread(ASGIHandler()) as base:
        over = event_of_size(CAP + 1, "evt_over")
        status, answer = raw_post(base + "/webhooks/", signed(over), pieces(over), chunked=True)
        assert status == 413
        assert json.loads(answer)["code"] == "body_too_large"
        exact = event_of_size(CAP)
        assert raw_post(base + "/webhooks/", signed(exact), pieces(exact), chunked=True)[0] == 200
    assert [e.id for e in recorder.events] == ["evt_big"]


@pytest.mark.parametrize("mode", ["inline", "background"])
@pytest.mark.parametrize("server", ["wsgi", "asgi"])
def test_an_async_handler_may_await_sync_to_async(server: str, mode: str) -> None:
    # The Django way to use the ORM from async code. Under ASGI the view holds asgiref's one
    # thread-sensitive thread: run in a fresh event loop there, the handler waited for good
    # for its call, queued to that very thread (the wait_for ends that wait in the test).
    threads: dict[str, int] = {}
    done = threading.Event()

    def orm_work(event: Event) -> None:
        threads["sync_to_async"] = threading.get_ident()

    def sync_handler(event: Event) -> None:
        threads["handlers"] = threading.get_ident()

    async def async_handler(event: Event) -> None:
        await asyncio.wait_for(sync_to_async(orm_work)(event), 3)
        done.set()

    router = Router()
    router.add("invoice.paid", sync_handler)
    router.add("invoice.paid", async_handler)
    server_cm = serve() if server == "wsgi" else serve_in_thread(ASGIHandler())
    with (
        ThreadPoolExecutor(2) as pool,
        urls(ascend_view(SECRET, router, mode=mode, executor=pool)),
        server_cm as base,
    ):
        body = event_body()
        status, answer = urlopen_post(base + "/webhooks/", body, signed(body))
        assert status == 200, answer
        assert json.loads(answer)["status"] == ("processed" if mode == "inline" else "accepted")
        assert done.wait(5)
    # And the call came back to the thread that runs the handlers, as Django's would.
    assert threads["sync_to_async"] == threads["handlers"]


# -- the example app -------------------------------------------------------------------------


def test_the_django_example_receives_a_signed_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASCEND_WEBHOOK_SECRETS", f"whsec_new,{SECRET}")
    spec = importlib.util.spec_from_file_location("example_django_app", EXAMPLES / "django_app.py")
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)
    spec.loader.exec_module(example)
    body = event_body("evt_ex", id="inv_7", amount=99)
    view = example.urlpatterns[0].callback
    try:
        with override_settings(ROOT_URLCONF=example):
            assert post(client(), body, signed(body)).status_code == 200
            deadline = time.monotonic() + 5
            while not example.paid_invoices and time.monotonic() < deadline:
                time.sleep(0.005)
            assert example.paid_invoices == {"inv_7": {"id": "inv_7", "amount": 99}}
            assert post(client(), body, signed(body, "wrong")).status_code == 401
    finally:
        view.receiver.shutdown()


# -- the example, run as a script ------------------------------------------------------------


def test_the_django_example_runs_as_a_script(tmp_path: Path) -> None:
    port = free_port()
    env = {"ASCEND_WEBHOOK_SECRETS": f"whsec_new,{SECRET}"}
    args = [str(EXAMPLES / "django_app.py"), "runserver", f"127.0.0.1:{port}", "--noreload"]
    with example_process(args, env, port, tmp_path / "server.log") as base:
        body = event_body("evt_script")
        post_until_duplicate(base + "/webhooks/", body, lambda: signed(body))
        status, _ = urlopen_post(base + "/webhooks/", body, signed(body, "wrong"))
        assert status == 401
