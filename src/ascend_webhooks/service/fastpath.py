"""A pure ASGI front for the hottest routes: ``POST /v1/organizations/{org}/events[/batch]``.

Why we wrote this instead of relying on FastAPI for that one route: under load, py-spy showed
the framework's per-request machinery (nested router matching, dependency solving, five layers
of middleware) costing several times the publish itself, so a single-event publish could never
come near the framework's own hello-world. This front answers the common, valid request
directly: a known bearer token (admin, or an organization's token already seen), a JSON body,
an event that validates with the very same pydantic model and ``build_event`` as the route.

Anything else — a token never seen, an organization not yet known, a body that does not parse
or validate, an event too large, a store error — is handed, with its body replayed, to the
FastAPI application, whose route answers it exactly as before (problem documents, 401, 404,
409, 413, 422). Nothing is written before the hand-over can happen: a store error means the
publish wrote nothing, and publishing is idempotent by event id, so the route running it again
gives the same answer. A 202 still means the event was committed.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..metrics import EVENTS_PUBLISHED
from ..store.base import StoreError
from .limits import RequestLimits
from .problems import Problem, problem_response
from .routes.events import build_event, publish_many, published_view
from .schemas import EventBatch, EventCreate
from .state import Services
from .tokens import hash_token, same_hash

__all__ = ["FastPublish"]

log = logging.getLogger("ascend_webhooks.service")

_PREFIX = "/v1/organizations/"
_SUFFIX = "/events"
_BATCH_SUFFIX = "/events/batch"
_MAX_TOKEN_LENGTH = 512
_JSON_HEADERS = [(b"content-type", b"application/json")]


class FastPublish:
    """Answers valid publishes (single and batch) itself; hands every other request to ``app``."""

    def __init__(self, app: ASGIApp, state: Any, limits: RequestLimits) -> None:
        self.app = app
        self.state = state  # the FastAPI app's state: ``services`` appears once it has started
        self.limit = limits.event
        self.batch_limit = limits.batch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
            org, batch, limit = path[len(_PREFIX) : -len(_SUFFIX)], False, self.limit
        elif path.startswith(_PREFIX) and path.endswith(_BATCH_SUFFIX):
            org, batch, limit = path[len(_PREFIX) : -len(_BATCH_SUFFIX)], True, self.batch_limit
        else:
            await self.app(scope, receive, send)
            return
        services: Services | None = getattr(self.state, "services", None)
        if not org or "/" in org or services is None or not _allowed(services, scope, org, limit):
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:  # the route's body limit answers 413 on the replay
                break
        try:
            if more:
                answer = None
            elif batch:
                answer = await _publish_batch(services, org, body)
            else:
                answer = await _publish(services, org, body)
        except (ValueError, TypeError, Problem, StoreError):  # ValidationError is a ValueError
            answer = None
        except Exception:
            log.exception("unhandled error on POST %s", path)
            await problem_response(
                500, "an internal error occurred; it has been logged", slug="internal-error"
            )(scope, receive, send)
            return
        if answer is None:  # the route answers it, with every check and error it has
            await self.app(scope, _replay(body, more, receive), send)
            return
        status, content = answer
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": content})


def _allowed(services: Services, scope: Scope, org: str, limit: int) -> bool:
    """True for a JSON body within the limit, with a bearer token known here that may see
    ``org`` (decided without a database lookup)."""
    authorization = content_type = length = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value
        elif name == b"content-type":
            content_type = value
        elif name == b"content-length":
            length = value
    if length is None or not length.isdigit() or int(length) > limit:
        return False
    if content_type is None or content_type.split(b";")[0].strip().lower() != b"application/json":
        return False
    if authorization is None or authorization[:7].lower() != b"bearer ":
        return False
    token = authorization[7:]
    if not token or len(token) > _MAX_TOKEN_LENGTH or b" " in token:
        return False
    token_hash = hash_token(token.decode("latin-1"))  # as Starlette decodes header values
    admin = services.admin_token_hash
    if admin is not None and same_hash(token_hash, admin):
        return org in services.known_organizations
    principal = services.cached_principal(token_hash)
    return principal is not None and principal.organization_id == org


async def _publish(services: Services, org: str, body: bytes) -> tuple[int, bytes] | None:
    # Parsed and validated in one go by pydantic's own JSON parser, which keeps integers of
    # any size (as the route's json.loads does; orjson would turn large ones into floats).
    item = EventCreate.model_validate_json(body)
    event = build_event(item, services.settings.max_payload_bytes)
    (result,) = await services.store.publish(org, [event])
    if result.created:
        EVENTS_PUBLISHED.inc()
    view = published_view(result, item.data if result.created else None)
    return (202 if result.created else 200), orjson.dumps(view, option=orjson.OPT_UTC_Z)


async def _publish_batch(services: Services, org: str, body: bytes) -> tuple[int, bytes] | None:
    batch = EventBatch.model_validate_json(body)
    status, answer = await publish_many(services, org, batch.events)
    return status, orjson.dumps(answer, option=orjson.OPT_UTC_Z)


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    """A ``receive`` that gives the body already read once, then whatever the client sends."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay
