"""A pure ASGI front for the hottest routes: ``POST /v1/organizations/{org}/events[/batch]``.

Why we wrote this instead of relying on FastAPI for that one route: under load, py-spy showed
the framework's per-request machinery (nested router matching, dependency solving, five layers
of middleware) costing several times the publish itself, so a single-event publish could never
come near the framework's own hello-world. This front answers the common, valid request
directly: a known bearer token (admin, or an organization's token already seen), a JSON body,
events that pass the checks of the route's models (``EventCreate``, ``EventBatch``).

What it does per event is kept small, because on the batch route it is most of the event loop's
work (measured with ``bench/profile_publish.py``): orjson parses the body into plain dicts and
lists, checked by hand against the models' rules instead of building a pydantic model per
event (1.7 µs per 1 KB event instead of 2.9, and no walk of the data for NaN and Infinity,
which orjson refuses); ids missing are made in one ``new_ids`` call;
bodies and content hashes come from ``wire_body``, the route's own builder, so they are the
same bytes; and an event's answer is its stored body with the rest of the view appended, since
``{"id","type","data"`` is exactly how the route's rendered answer starts (no second rendering
of the data), or under ``Prefer: return=minimal`` only its id and ``created``, as the route
answers it. Anything the checks are unsure of goes to the route, never the other way.

Anything else — a token never seen, an organization not yet known, a body that does not parse
or validate, an event too large, a store error — is handed, with its body replayed, to the
FastAPI application, whose route answers it exactly as before (problem documents, 400, 401,
404, 409, 413, 422). Nothing is written before the hand-over can happen: a store error means
the publish wrote nothing, and publishing is idempotent by event id, so the route running it
again gives the same answer. A 202 still means the event was committed.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..ids import new_ids
from ..metrics import EVENTS_PUBLISHED
from ..store.base import StoreError, StoreUnavailableError
from ..store.models import DeliveryStatus, NewEvent, PublishResult
from .limits import RequestLimits
from .problems import problem_response, unavailable_response
from .routes.events import MINIMAL_APPLIED, prefers_minimal, published_view, wire_body
from .schemas import EVENT_ID_PATTERN, EVENT_TYPE_PATTERN, MAX_BATCH_EVENTS, MAX_ORDERING_KEY
from .state import Services
from .tokens import hash_token, same_hash

__all__ = ["FastPublish"]

log = logging.getLogger("ascend_webhooks.service")

_PREFIX = "/v1/organizations/"
_SUFFIX = "/events"
_BATCH_SUFFIX = "/events/batch"
_MAX_TOKEN_LENGTH = 512
_JSON_HEADERS = [(b"content-type", b"application/json")]
_MINIMAL_HEADER = (MINIMAL_APPLIED[0].lower().encode(), MINIMAL_APPLIED[1].encode())
_UTC_Z = orjson.OPT_UTC_Z
_dumps = orjson.dumps
_EVENT_KEYS = frozenset(("type", "data", "id", "ordering_key"))
_valid_id = re.compile(EVENT_ID_PATTERN).fullmatch
_valid_type = re.compile(EVENT_TYPE_PATTERN).fullmatch
_MAX_KNOWN_TYPES = 1024
# Every byte a digit stands for becomes 0, any other 1: a run of 19 zeros in the translated
# body is the only place an integer beyond 64 bits can be (2**63 has 19 digits).
_DIGITS = bytes(0 if 0x30 <= byte <= 0x39 else 1 for byte in range(256))
_LONG_DIGIT_RUN = bytes(19)
_BIG = float(2**63)


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
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
            if size > limit:  # the route's body limit answers 413 on the replay
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        minimal = _minimal(scope)
        try:
            if more:
                answer = None
            elif batch:
                answer = await _publish_batch(services, org, body, minimal)
            else:
                answer = await _publish(services, org, body, minimal)
        except StoreUnavailableError as exc:
            # Taken or not, unknown (a connection lost around the commit): run again, events
            # sent without an id would be stored twice. The route's own answer to it.
            await unavailable_response(exc)(scope, receive, send)
            return
        except (ValueError, TypeError, StoreError):  # a conflict (409), say: the route answers
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
        headers = [*_JSON_HEADERS, (b"content-length", str(len(content)).encode())]
        if minimal:
            headers.append(_MINIMAL_HEADER)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


_READ_HEADERS = frozenset((b"authorization", b"content-type", b"content-length"))


def _allowed(services: Services, scope: Scope, org: str, limit: int) -> bool:
    """True for a JSON body within the limit, with a bearer token known here that may see
    ``org`` (decided without a database lookup).

    A header read here that is sent twice is the route's to answer: Starlette's ``headers.get``
    (its bearer token, its body parsing) takes the first value, and which one a client meant
    is not ours to guess."""
    read: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _READ_HEADERS:
            if name in read:
                return False
            read[name] = value
    length = read.get(b"content-length")
    content_type = read.get(b"content-type")
    authorization = read.get(b"authorization")
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


def _minimal(scope: Scope) -> bool:
    """Whether the request's ``Prefer`` headers ask for ``return=minimal``."""
    return prefers_minimal(
        value.decode("latin-1") for name, value in scope["headers"] if name == b"prefer"
    )


def _accepted(result: PublishResult, created: bool) -> bytes:
    """One event's answer under ``Prefer: return=minimal``: its id and whether it was created."""
    return b'{"id":%b,"created":%b}' % (_dumps(result.event.id), b"true" if created else b"false")


async def _publish(
    services: Services, org: str, body: bytes, minimal: bool
) -> tuple[int, bytes] | None:
    events = _events(services, _parsed(body, batch=False))
    if events is None:
        return None
    (result,) = await services.store.publish(org, events)
    if result.created:
        EVENTS_PUBLISHED.inc()
    status = 202 if result.created else 200
    if minimal:
        return status, _accepted(result, result.created)
    return status, _Answers().view(result, result.created, fresh=True)


async def _publish_batch(
    services: Services, org: str, body: bytes, minimal: bool
) -> tuple[int, bytes] | None:
    events = _events(services, _parsed(body, batch=True))
    if events is None:
        return None
    unique: dict[str, NewEvent] = {}
    for event in events:
        seen = unique.setdefault(event.id, event)
        if seen.content_hash != event.content_hash:
            return None  # the route answers the 409 naming the event
    results = await services.store.publish(
        org, events if len(unique) == len(events) else list(unique.values())
    )
    by_id = {result.event.id: result for result in results}
    answers = _Answers()
    view = answers.view
    if minimal:
        answered: set[str] = set()
        views = []
        for event in events:  # a repeat within the batch created nothing itself
            result = by_id[event.id]
            views.append(_accepted(result, result.created and event.id not in answered))
            answered.add(event.id)
    elif len(unique) == len(events):
        views = [
            view(result, result.created, fresh=True) for result in map(by_id.__getitem__, unique)
        ]
    else:
        views = []
        first_seen: set[str] = set()
        for event in events:
            result = by_id[event.id]
            if event.id in first_seen:  # a repeat within the batch created nothing itself
                views.append(view(result, False, fresh=False))
            else:
                first_seen.add(event.id)
                views.append(view(result, result.created, fresh=True))
    created = sum(1 for result in results if result.created)
    if created:
        EVENTS_PUBLISHED.inc(created)
    # {"data":[view,view,...]} in one join: the answer is about as large as the request.
    views[0] = b'{"data":[' + views[0]
    views[-1] += b"]}"
    return (202 if created else 200), b",".join(views)


def _parsed(body: bytes, *, batch: bool) -> list[dict[str, Any]] | None:
    """The events of a publish body, each checked as ``EventCreate`` checks it; None for
    anything else (the route then answers it, with its problem document).

    orjson parses: it refuses NaN, Infinity, lone surrogates and a BOM, which the route's own
    parser lets through to its checks (the route then answers those), and it reads an integer
    beyond 64 bits as a float where the route keeps the integer (and answers 422): a body with
    a run of 19 digits anywhere is looked at closely for such a number.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    items: list[Any]
    if not batch:
        items = [document]
    elif type(document) is not dict or len(document) != 1:
        return None
    else:
        events = document.get("events")
        if type(events) is not list or not 1 <= len(events) <= MAX_BATCH_EVENTS:
            return None
        items = events
    for item in items:
        if type(item) is not dict or type(item.get("data")) is not dict:
            return None
        if len(item) > 2 and not _EVENT_KEYS.issuperset(item):
            return None
        event_type = item.get("type")
        if type(event_type) is not str:
            return None
        if event_type not in _known_types:
            if _valid_type(event_type) is None:
                return None
            if len(_known_types) >= _MAX_KNOWN_TYPES:
                _known_types.clear()
            _known_types.add(event_type)
        if len(item) > 2:
            event_id = item.get("id")
            if event_id is not None and (type(event_id) is not str or _valid_id(event_id) is None):
                return None
            key = item.get("ordering_key")
            if key is not None and (
                type(key) is not str or not 1 <= len(key) <= MAX_ORDERING_KEY or "\0" in key
            ):
                return None  # (the route's model refuses a NUL in the key: 422)
    if body.translate(_DIGITS).find(_LONG_DIGIT_RUN) >= 0 and _has_big_number(items):
        return None
    return items


_known_types: set[str] = set()  # event types that passed the pattern already


def _has_big_number(items: list[dict[str, Any]]) -> bool:
    """Whether any event's data holds a number of magnitude 2**63 or more: as orjson reads
    them, integers beyond 64 bits (which the route refuses) are such floats."""
    stack: list[Any] = [item["data"] for item in items]
    while stack:
        value = stack.pop()
        if type(value) is float:
            if abs(value) >= _BIG:
                return True
        elif type(value) is dict:
            stack.extend(value.values())
        elif type(value) is list:
            stack.extend(value)
    return False


def _events(services: Services, items: list[dict[str, Any]] | None) -> list[NewEvent] | None:
    """The events as stored (bodies and hashes by ``wire_body``, as the route builds them); None
    if one cannot be (too large, not encodable), for the route to answer."""
    if items is None:
        return None
    limit = services.settings.max_payload_bytes
    missing = sum(1 for item in items if item.get("id") is None)
    fresh = iter(new_ids("evt", missing)) if missing else None
    events: list[NewEvent] = []
    append = events.append
    for item in items:
        event_id = item.get("id")
        if event_id is None:
            assert fresh is not None
            event_id = next(fresh)
        event_type = item["type"]
        key = item.get("ordering_key")
        try:
            body, content_hash = wire_body(event_id, event_type, item["data"], key)
        except orjson.JSONEncodeError:
            return None
        if len(body) > limit:
            return None
        event = _allocate(NewEvent)
        _set_id(event, event_id)
        _set_type(event, event_type)
        _set_body(event, body)
        _set_hash(event, content_hash)
        _set_key(event, key)
        append(event)
    return events


# ``NewEvent`` is a frozen dataclass: its ``__init__`` sets each field through
# ``object.__setattr__``, twice the cost of setting its slots directly (as ``event.py`` does for
# the receiver's events). A test checks that these are all of its fields.
_allocate = object.__new__
_set_id, _set_type, _set_body, _set_hash, _set_key = (
    vars(NewEvent)[name].__set__ for name in ("id", "type", "body", "content_hash", "ordering_key")
)


class _Answers:
    """Renders the answer for each published event as the route does, with
    ``orjson.dumps(published_view(...), option=OPT_UTC_Z)``, in fewer steps.

    For an event this call created (``fresh`` and ``created``), its stored body is the exact
    start of that answer: ``{"id":…,"type":…,"data":…`` are the answer's first three keys,
    rendered by the same orjson from the same values. The rest is appended to it instead of
    rendering the data again, from parts that repeat across a batch rendered once each (the
    time it was stored, each endpoint with its delivery status). Anything else goes through
    ``published_view``.
    """

    __slots__ = ("_ends", "_stamp", "_stamp_of")

    def __init__(self) -> None:
        self._stamp_of: datetime | None = None
        self._stamp = b""
        self._ends: dict[str, tuple[DeliveryStatus, bytes]] = {}

    def view(self, result: PublishResult, created: bool, *, fresh: bool) -> bytes:
        event = result.event
        if not (fresh and created):
            view = published_view(result)
            view["created"] = created
            return _dumps(view, option=_UTC_Z)
        if event.created_at is not self._stamp_of:
            self._stamp_of = event.created_at
            self._stamp = b',"created_at":' + _dumps(event.created_at, option=_UTC_Z)
        deliveries = []
        for delivery in event.deliveries:
            status = delivery.status
            known = self._ends.get(delivery.endpoint_id)
            if known is None or known[0] is not status:  # (statuses are enum members)
                end = b',"endpoint_id":%b,"status":%b}' % (
                    _dumps(delivery.endpoint_id),
                    _dumps(status.value),
                )
                known = self._ends[delivery.endpoint_id] = (status, end)
            deliveries.append(b'{"id":' + _dumps(delivery.id) + known[1])
        key = event.ordering_key
        return b"".join(
            (
                event.body[:-1],
                b',"ordering_key":',
                b"null" if key is None else _dumps(key),
                self._stamp,
                b',"deliveries":[',
                b",".join(deliveries),
                b'],"created":true}',
            )
        )


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
