"""The FastAPI application: routes, problem handlers, limits, and the lifespan that runs it all.

The lifespan opens the store (applying migrations) unless given one already open (``serve``
opens it first, waiting for the database), makes sure an admin token exists, and, unless
told otherwise, runs the delivery worker in the same process; on shutdown (SIGTERM through
uvicorn) it stops the worker, lets in-flight attempts finish, and closes the store.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..delivery.worker import Worker
from ..store import Store, open_store
from .crypto import SecretBox, load_secret_box, upgrade_stored_keys
from .dashboard import Dashboard
from .fastpath import FastPublish
from .limits import BodyLimitMiddleware, RequestLimits
from .problems import (
    NUL_IN_PATH,
    CatchAllMiddleware,
    install_problem_handlers,
    problem_response,
)
from .processes import DeliveryProcesses
from .responses import JSONResponse
from .routes import system_router, v1_router
from .routes.common import problem_answers
from .schemas import ProblemOut
from .settings import Settings
from .state import Services
from .tokens import hash_token, new_token

__all__ = ["create_app", "ensure_admin_token"]

log = logging.getLogger("ascend_webhooks.service")

_DESCRIPTION = """\
Sends signed webhooks to organizations' endpoints and retries them until they answer 200.

Every `/v1` route needs `Authorization: Bearer <token>`: an admin token, or an organization's
token (which sees that organization only). Errors are RFC 9457 problem documents.
"""


async def ensure_admin_token(store: Store, settings: Settings) -> bytes | None:
    """The hash of the configured admin token; else create and print one on the first start.

    A generated token is printed once to stdout and only its hash is stored.
    """
    if settings.admin_token is not None:
        return hash_token(settings.admin_token)
    if await store.count_admin_tokens() == 0:
        token = new_token()
        if await store.create_first_admin_token(hash_token(token), "admin") is None:
            return None  # another process starting at the same moment made (and printed) one
        # stdout, not the log: the one place the token ever appears, for the operator to copy.
        print(
            f"Admin token (shown once, only its hash is stored; keep it safe): {token}",
            file=sys.stdout,
            flush=True,
        )
    return None


async def _stop_worker(worker: Worker, task: asyncio.Task[None]) -> None:
    worker.stop()  # stop claiming; in-flight attempts finish and are recorded
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("the delivery worker failed while stopping")


def _log_worker_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the delivery worker stopped with an error", exc_info=task.exception())


# The collector's first generation is collected after this many more container objects were
# made than freed (Python's default: 700). A publish of 1,000 events holds some 10,000 parsed
# dicts and lists until it is answered, so at 700 every batch ran about fifteen young
# collections and, through them, older ones, in both the event loop's thread and the SQLite
# writer's (the writer's result objects count too). bench/profile_publish.py measured 2-3 us
# less CPU per batch event in each thread with this threshold and the start-up objects frozen.
GC_THRESHOLD = 50_000


_tuned: list[tuple[int, int, int]] = []  # the thresholds found, while some app runs tuned


@contextmanager
def _collector_tuned_for_serving() -> Iterator[None]:
    """While the app runs: the objects of start-up (modules, routes, schemas) frozen out of the
    collector's full passes, and young collections less often. Put back as found once the
    last app running in this process stops (tests run several)."""
    if not _tuned:
        thresholds = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(max(GC_THRESHOLD, thresholds[0]), *thresholds[1:])
    else:
        thresholds = _tuned[0]
    _tuned.append(thresholds)
    try:
        yield
    finally:
        _tuned.pop()
        if not _tuned:
            gc.set_threshold(*thresholds)
            gc.unfreeze()


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the problem schema every error response refers to."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas["ProblemOut"] = ProblemOut.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        for path, operations in document.get("paths", {}).items():
            for operation in operations.values():
                _document_common_problems(path, operation)
        app.openapi_schema = document
    return app.openapi_schema


def _document_common_problems(path: str, operation: dict[str, Any]) -> None:
    """The answers every route of a kind may give, whichever route it is: a body that is not
    JSON (400, or 415 when not sent as JSON) or too large (413), a cursor that is not one
    (400), the database down (503)."""
    statuses: set[int] = set()
    if "requestBody" in operation:
        statuses |= {400, 413, 415}
    if any(parameter.get("name") == "after" for parameter in operation.get("parameters", ())):
        statuses.add(400)
    if path.startswith("/v1/"):
        statuses.add(503)
    responses = operation.setdefault("responses", {})
    for status, answer in problem_answers(statuses).items():
        responses.setdefault(str(status), answer)


async def _to_dashboard() -> RedirectResponse:
    return RedirectResponse("/dashboard/", status_code=302)


class _Application(FastAPI):
    """FastAPI with :class:`.fastpath.FastPublish` in front of everything, the framework's own
    per-request work (telemetry checks, middleware) included: publishes it answers skip it."""

    _front: ASGIApp | None = None
    _stop_requested = False
    _on_stop: Callable[[], None] | None = None

    def stop_delivery(self) -> None:
        """Stop claiming and tell the delivery processes to stop, now: called when the stop
        signal arrives, since the lifespan's end (which drains them) waits for every request."""
        self._stop_requested = True
        on_stop, self._on_stop = self._on_stop, None
        if on_stop is not None:
            on_stop()

    def _stop_delivery_with(self, on_stop: Callable[[], None] | None) -> None:
        """Set by the lifespan once the delivery has started; None again at its end."""
        self._on_stop = on_stop
        if on_stop is None:
            self._stop_requested = False
        elif self._stop_requested:  # the signal came while the lifespan was starting
            self.stop_delivery()

    def set_publish_limits(self, limits: RequestLimits) -> None:
        self._front = FastPublish(self._framework, self.state, limits)

    async def _framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = _nul_refused(scope)
            if refused is not None:
                await refused(scope, receive, send)
                return
        if self._front is None:
            await super().__call__(scope, receive, send)
        else:
            await self._front(scope, receive, send)


def _nul_refused(scope: Scope) -> Response | None:
    """The answer to a NUL character in the path or the query, the same on both stores: no id
    holds one (404), and no query parameter takes one (422). Left to the routes, SQLite found
    nothing and PostgreSQL, whose text cannot hold a NUL, refused the value. (A route that
    decodes its segment once more checks the id it decodes: see ``routes.events``.)"""
    if "\0" in scope["path"]:
        return problem_response(404, NUL_IN_PATH, slug="not-found")
    if b"%00" in scope["query_string"] or b"\0" in scope["query_string"]:
        return problem_response(
            422, "query parameters may not contain NUL characters", slug="validation-error"
        )
    return None


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    run_delivery: bool = True,
    secret_box: SecretBox | None = None,
    delivery_processes: DeliveryProcesses | None = None,
) -> _Application:
    """The API application. A ``store`` given here must already be open; it is not closed.

    ``delivery_processes`` are started once the admin token exists and stopped on shutdown,
    at the same time as the worker of this process, so that both drain together.
    """

    @asynccontextmanager
    async def lifespan(app: _Application) -> AsyncIterator[None]:
        box = secret_box if secret_box is not None else load_secret_box(settings)
        owned = store is None
        active = open_store(settings.database_url) if store is None else store
        if owned:
            await active.open()
        worker_task: asyncio.Task[None] | None = None
        worker: Worker | None = None
        stopping = False

        def stop_delivery() -> None:
            nonlocal stopping
            if stopping:
                return
            stopping = True
            if delivery_processes is not None:
                delivery_processes.signal_stop()
            if worker is not None:
                log.info("stopping the delivery worker (finishing attempts in flight)")
                worker.stop()

        try:
            # Before the worker starts: it refuses keys still in the format of earlier releases.
            await upgrade_stored_keys(active, box)
            services = Services(store=active, settings=settings, box=box)
            services.admin_token_hash = await ensure_admin_token(active, settings)
            app.state.services = services
            if run_delivery:
                worker = Worker(active, settings, box.decrypt)
                worker_task = asyncio.create_task(worker.run(), name="delivery-worker")
                worker_task.add_done_callback(_log_worker_exit)
                log.info("delivery worker started")
            if delivery_processes is not None:
                delivery_processes.start()
            app._stop_delivery_with(stop_delivery)
            with _collector_tuned_for_serving():
                yield
        finally:
            app._stop_delivery_with(None)
            stop_delivery()
            if worker is not None and worker_task is not None:
                await _stop_worker(worker, worker_task)
            if delivery_processes is not None:
                await delivery_processes.stop()
            if owned:
                await active.close()

    app = _Application(
        title="ascend-webhooks",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        default_response_class=JSONResponse,
        # No /docs or /redoc: FastAPI's pages load their scripts from a CDN (a floating
        # version, no integrity check) on the dashboard's origin, where a token may be in
        # sessionStorage. /openapi.json is served; any OpenAPI viewer reads it.
        docs_url=None,
        redoc_url=None,
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    install_problem_handlers(app)
    app.include_router(v1_router)
    app.include_router(system_router)
    # The dashboard is static files calling /v1 like any client; FastPublish sees POSTs to
    # /v1/organizations/{org}/events only, so every dashboard request passes it untouched.
    app.mount("/dashboard", Dashboard(), name="dashboard")
    app.add_api_route("/", _to_dashboard, include_in_schema=False)
    limits = RequestLimits(settings.max_payload_bytes)
    app.set_publish_limits(limits)
    app.add_middleware(BodyLimitMiddleware, limits=limits)
    app.add_middleware(CatchAllMiddleware)
    return app
