"""The delivery worker: claim due deliveries, sign, POST, decide, record — many at once.

One :class:`Worker` runs in one event loop; run as many workers (processes, machines) as
needed against one database: the store's leases keep them from sending the same delivery
twice while a lease is valid, and hand a delivery whose worker died to another once its lease
expires (at-least-once, SPEC section 1).

The loop, and why it looks like this:

* **Claim by free capacity.** The worker claims batches sized by its free slots, telling the
  store which endpoints it has no room for (``exclude_endpoints``) and how much room each
  other one has (``endpoint_room``, and ``per_endpoint`` = the base for endpoints it does not
  name): each endpoint may hold at most its current limit of attempts of this worker.
  Deliveries of one batch beyond that limit (a store that ignores the room) are released at
  once, unattempted.
* **Claim ahead.** Besides the deliveries it starts at once, a claim leases up to
  ``prefetch`` more (at most ``PREFETCH_PER_LIMIT`` times each endpoint's limit, none for an
  endpoint with an attempt waiting past ``slow_after``) into a ready buffer: an attempt that
  ends hands its slot straight to the next buffered delivery, so no slot waits for the claim's
  round trip to the database (one claim took ~80 ms behind a 1,000-event publish, and at 128
  slots that held delivery to ~750/s during a burst). Buffered deliveries are leased like the
  others (their leases extended while they wait), given back when their endpoint turns slow,
  and given back unattempted when the worker stops.
* **New deliveries handed over.** Once a claim finds less than it asked for (the worker has
  caught up), the worker opens a :class:`~..store.handoff.HandOff` with the room it has left;
  a store that supports it (SQLite, where ``serve`` publishes in this same process) leases
  each new due delivery to the worker in the publish's own transaction and hands it over once
  committed: the attempt starts without a wake-up or a claim. Before each claim the hand-off
  is closed, and it opens again only when caught up, so older work (other organizations'
  backlog, retries) always goes through the fair claim first.
* **Each endpoint's limit adapts (AIMD).** It starts at ``per_endpoint_limit`` (the base,
  ``endpoint_concurrency``) and grows by one for every fast, answered attempt made while the
  endpoint used its whole limit (so it doubles every round trip, as TCP's slow start), up to
  ``max_per_endpoint`` (default: ``concurrency``); a timeout, a connection failure, a 429 or
  5xx, or a slow answer halves it, and an attempt still waiting after ``slow_after`` sets it
  back to the base at once. A fixed cap of 8 would hold a fast receiver to 8 requests per
  round trip (about 1,200 deliveries/s on loopback); a hanging endpoint never answers fast,
  so it never gets more than the base.
* **A dead endpoint occupies only its own slots.** ``concurrency`` bounds the attempts that
  are *working*; an attempt that has been waiting for its receiver longer than ``slow_after``
  seconds stops counting against it (it costs a socket and a coroutine, not CPU), so even many
  hanging endpoints cannot starve healthy ones. A hard ceiling (``concurrency *
  SLOW_HEADROOM``) still bounds sockets; every attempt ends at the attempt timeout anyway.
  While an endpoint has an attempt waiting past ``slow_after``, its limit stays at the base.
  In-flight attempts are kept in start order too, so a claim looks only at those that ended
  or turned slow since the last one, never at all of them.
* **Attempt runners.** Attempts run in long-lived runner tasks, one per busy slot, each
  handed its next delivery when idle (at most ``concurrency`` idle runners are kept): a task
  per attempt cost the event loop's thread more than the hand-over does.
* **Signing.** The organization's current signing key comes from ``store.signing_keys`` and is
  cached for ``key_cache_seconds`` (2 s): a key rotation takes effect within that time. The
  secret is decrypted with the ``decrypt`` callable (the master key never reaches this module)
  for the organization and the key's id, and never logged; it is kept as a keyed HMAC-SHA256
  (a ciphertext that does not decrypt, one moved from another key's row included, or a secret
  that cannot sign, empty or not UTF-8, is a ``key_error``). Each attempt is signed with a
  fresh timestamp, exactly as :func:`ascend_webhooks.signature.sign` signs; the body is the
  stored bytes, identical on every attempt. An organization without a signing key gets an
  attempt recorded with error ``no_signing_key`` and retried on schedule: nothing is sent
  unsigned.
* **Decide and record in batches.** The :class:`RetryPolicy` turns each response into
  succeeded / retry-at / failed; outcomes are buffered and written with one ``store.record``
  call per ``flush_size`` outcomes or ``flush_interval`` seconds (20 ms), whichever comes
  first, so the database sees a few transactions per second instead of one per attempt (each
  call has a cost of its own: on PostgreSQL, 20 ms instead of 5 took the deployment's CPU per
  delivery down by about 5 %). An outcome of a delivery with an ordering key is written at
  once: the next delivery of its key waits for it.
* **Leases.** Attempts running longer than a third of the lease get their leases extended
  (heartbeat), so a slow but live attempt is not handed to another worker.
* **Dead neighbours.** A worker id names its machine and process (``identity.py``). On start,
  and every half lease after, the worker asks the store which workers hold leases, and gives
  back at once the leases of workers of its own machine whose process is gone (a ``kill -9``),
  so a restarted process does not wait out the lease of the one it replaces. Leases of other
  machines and of live processes are never touched: those run out on their own.
* **Failures of the store** (a database restarting) are logged and retried with capped
  exponential backoff; they never end the worker. Outcomes that cannot be written stay
  buffered; should their leases expire meanwhile, the deliveries are simply attempted again.
* **Stopping.** :meth:`Worker.stop` stops claiming and closes the hand-off; in-flight attempts
  finish (bounded by the attempt timeout plus a grace), their outcomes are recorded, and
  anything claimed or handed over but not attempted is released, a hand-over from a publish
  that was committing as the hand-off closed included (``Store.hand_off_settled``).
  :meth:`Worker.drain` is stop-and-wait.

Metrics: ``ATTEMPTS{outcome=succeeded|retrying|failed}`` and ``ATTEMPT_SECONDS``, counted per
attempt in the worker and added to the shared registry by the flush loop, before each batch
is written (so a recorded outcome is always counted), and when the worker stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any, Protocol, TypeVar

from ..metrics import ATTEMPT_SECONDS, ATTEMPTS
from ..service.settings import Settings
from ..signature import SIGNATURE_HEADER, TIMESTAMP_HEADER
from ..store.base import Store, StoreError
from ..store.handoff import HandOff
from ..store.models import Attempt, AttemptOutcome, ClaimedDelivery, DeliveryStatus
from .identity import is_dead_here, new_worker_id
from .retry import RetryPolicy, is_success
from .transport import PyreqwestTransport, Response, Transport

__all__ = ["PREFETCH_PER_LIMIT", "SLOW_HEADROOM", "Decrypt", "Worker"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class _Stopped(Exception):
    """stop() came while the claim loop waited on the store."""


class Decrypt(Protocol):
    """Turns a key's ``secret_ciphertext`` into the secret string (``SecretBox.decrypt``).

    Given the organization the worker signs for and the key's id, so that a ciphertext moved
    into another key's row is refused (raises) rather than signing with another secret.
    """

    def __call__(self, ciphertext: bytes, *, organization_id: str, key_id: str) -> str: ...


#: In-flight attempts, slow ones included, are capped at concurrency times this.
SLOW_HEADROOM = 8

#: Deliveries claimed ahead per endpoint: at most this many times its limit wait in the buffer.
PREFETCH_PER_LIMIT = 2

#: At most this many endpoints keep a raised limit while they have nothing in flight.
_MAX_ADAPTED = 4096

_ATTEMPTS_BY_STATUS = {
    DeliveryStatus.SUCCEEDED: ATTEMPTS.labels(outcome="succeeded"),
    DeliveryStatus.PENDING: ATTEMPTS.labels(outcome="retrying"),
    DeliveryStatus.FAILED: ATTEMPTS.labels(outcome="failed"),
}


class _InFlight:
    __slots__ = ("delivery", "done", "leased", "slow", "started")

    def __init__(self, delivery: ClaimedDelivery, started: float, leased: float) -> None:
        self.delivery = delivery
        self.started = started  # time.monotonic()
        self.leased = leased  # when it was claimed (time.monotonic()): the lease's age
        self.slow = False  # waited past slow_after: no longer counts against concurrency
        self.done = False  # ended: _capacity drops it from the start-ordered queue


@dataclass(slots=True)
class _CachedKey:
    fetched_at: float
    key_id: str | None
    mac: hmac.HMAC | None  # HMAC-SHA256 keyed with the secret, copied for each attempt
    error: str | None  # why there is no secret: no_signing_key or key_error


def _keyed_mac(secret: str) -> hmac.HMAC:
    """What ``signature.sign`` computes, with the key schedule done once per key, not per call.

    Raises ValueError for a secret ``sign`` would refuse (empty, not encodable as UTF-8).
    """
    if not secret:
        raise ValueError("empty signing secret")
    try:
        return hmac.new(secret.encode("utf-8"), digestmod=sha256)
    except UnicodeEncodeError:
        raise ValueError("signing secret not encodable as UTF-8") from None


def _header_safe(value: str) -> bool:
    """Whether ``value`` may be sent as a header value (ASCII, printable, at most 1 KiB)."""
    return value.isascii() and value.isprintable() and len(value) <= 1024


def _safe_type(event_type: str) -> bool:
    """_header_safe for event types, which are few and come back: the safe ones are kept."""
    if not _header_safe(event_type):
        return False
    if len(_SAFE_TYPES) < 1024:
        _SAFE_TYPES.add(event_type)
    return True


_SAFE_TYPES: set[str] = set()  # event types known to be valid header values
_NONE: frozenset[str] = frozenset()


def _room_filled(
    claimed: Sequence[ClaimedDelivery], room: dict[str, int], per_endpoint: int
) -> bool:
    """Whether the claim gave some endpoint all the room it had (more may be due there)."""
    if not claimed:
        return False
    counts = Counter(d.endpoint_id for d in claimed)
    return any(n >= room.get(e, per_endpoint) for e, n in counts.items())


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _Backoff:
    """Capped exponential backoff with jitter, for retrying the store."""

    def __init__(self, first: float = 0.05, cap: float = 5.0) -> None:
        self.first, self.cap, self.current = first, cap, 0.0

    def next(self) -> float:
        self.current = min(self.cap, self.current * 2 if self.current else self.first)
        return self.current * random.uniform(0.5, 1.0)  # noqa: S311 - spreads retries only

    def reset(self) -> None:
        self.current = 0.0


def _warn(message: str, *args: object) -> None:
    """Log the exception being handled as a warning. A store error is expected trouble (the
    database restarting, a lost connection) and comes by the hundred while it lasts: one line,
    with its type and message, its traceback only at DEBUG. Anything else keeps its traceback.
    """
    exc = sys.exception()
    if isinstance(exc, StoreError):
        text = " ".join(str(exc).split())  # one line, whatever the driver's message holds
        logger.warning(
            message + " (%s: %s)",
            *args,
            type(exc).__name__,
            text,
            exc_info=logger.isEnabledFor(logging.DEBUG),
        )
    else:
        logger.warning(message, *args, exc_info=True)


class Worker:
    """Delivers pending deliveries from ``store`` until stopped."""

    _loop: asyncio.AbstractEventLoop  # the loop run() runs in

    def __init__(
        self,
        store: Store,
        settings: Settings,
        decrypt: Decrypt,
        *,
        transport: Transport | None = None,
        worker_id: str | None = None,
        concurrency: int | None = None,
        per_endpoint_limit: int | None = None,
        max_per_endpoint: int | None = None,
        lease_seconds: float | None = None,
        slow_after: float = 1.0,
        key_cache_seconds: float = 2.0,
        poll_interval: float = 1.0,
        flush_size: int = 64,
        flush_interval: float = 0.02,
        drain_grace: float = 5.0,
        prefetch: int | None = None,
        recheck_interval: float = 0.5,
    ) -> None:
        self.store = store
        self.settings = settings
        self.decrypt = decrypt
        self.policy = RetryPolicy(settings.retry_schedule, settings.retry_jitter)
        self._owns_transport = transport is None
        self.transport: Transport = transport or PyreqwestTransport(
            allow_http=settings.allow_http,
            allow_private=settings.allow_private_networks,
            ca_file=settings.ca_file,
        )
        self.worker_id = worker_id or new_worker_id()
        self.concurrency = concurrency or settings.worker_concurrency
        self.per_endpoint_limit = min(
            per_endpoint_limit or settings.endpoint_concurrency, self.concurrency
        )
        # An explicit per_endpoint_limit without a maximum is a fixed limit (tests, operators
        # who want one); from the settings, the limit adapts up to the worker's concurrency.
        if max_per_endpoint is None:
            max_per_endpoint = self.concurrency if per_endpoint_limit is None else 0
        self.max_per_endpoint = min(
            max(max_per_endpoint, self.per_endpoint_limit), self.concurrency
        )
        self.lease_seconds = lease_seconds or settings.lease_seconds
        self.slow_after = slow_after
        self._fast_ms = slow_after * 1000 / 4  # an answer this quick may grow the limit
        self.key_cache_seconds = key_cache_seconds
        self.poll_interval = poll_interval
        self.flush_size = flush_size
        self.flush_interval = flush_interval
        self.drain_grace = drain_grace
        self.recheck_interval = recheck_interval
        # Claimed ahead, at most: twice the slots (a burst of publishes can hold a claim back
        # ~100 ms; at 5,000 deliveries/s that is ~500 attempts). 0 turns claiming ahead off.
        self.prefetch = 2 * self.concurrency if prefetch is None else max(0, prefetch)

        self._attempt_timeout = settings.attempt_timeout
        self._inflight: dict[str, _InFlight] = {}
        # The same attempts in the order they started: the oldest still working is at the
        # left once _capacity has dropped the ended and the slow ones (no scan per claim).
        self._started: deque[_InFlight] = deque()
        self._slow = 0  # in-flight attempts that waited past slow_after
        self._slow_per_endpoint: Counter[str] = Counter()
        self._per_endpoint: Counter[str] = Counter()
        # When each endpoint last had its whole limit in use (time.monotonic()), while it has
        # attempts in flight: a fast answer to an attempt in flight since then grows the limit.
        self._full_at: dict[str, float] = {}
        self._limits: dict[str, float] = {}  # endpoints whose limit is above the base
        # Attempt runners: long-lived tasks, each making one attempt after another; an idle
        # one waits on a future of its own in _idle_slots for its next delivery.
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle_slots: list[asyncio.Future[ClaimedDelivery | None]] = []
        self._slots_closing = False
        self._drained: asyncio.Future[None] | None = None  # set once nothing is in flight
        self._outcomes: list[AttemptOutcome] = []
        # While the record of outcomes fails: the batch being tried (out of _outcomes), whose
        # deliveries' leases the heartbeat keeps, and which a claim must not start again.
        self._recording: Sequence[AttemptOutcome] = ()
        self._record_failing = False
        # Claimed ahead and not started: per endpoint, in claim order, with when each was
        # leased (time.monotonic(), for the heartbeat); endpoints in round-robin order.
        self._ready: dict[str, deque[tuple[ClaimedDelivery, float]]] = {}
        self._ready_ids: set[str] = set()
        self._give_back: list[str] = []  # buffered deliveries to release (endpoint turned slow)
        self._handoff: HandOff | None = None  # while the store hands new deliveries over
        self._handed: list[ClaimedDelivery] = []  # handed over, not yet started or buffered
        self._claim_due = True  # the last wait ended for the store or a due time: claim
        # The last claim found less than it asked for, and no endpoint was held back by its
        # room: nothing due is left but what the store will signal (or time will bring).
        self._caught_up = False
        self._caught_up_idle = False  # waiting, caught up, for handed deliveries or the store
        # Metrics counted here and added to the shared registry by the flush loop.
        self._attempt_counts: dict[DeliveryStatus, int] = dict.fromkeys(_ATTEMPTS_BY_STATUS, 0)
        self._durations: list[float] = []
        self._keys: dict[str, _CachedKey] = {}
        self._retry_hint: datetime | None = None  # earliest retry this worker recorded
        self._stopping = asyncio.Event()
        self._wakeup = asyncio.Event()  # a slot freed, or stop()
        self._outcome_ready = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._closing = False
        # Store calls the claim loop stopped waiting for at stop() (a lock, a partition):
        # a claim that completes before the drain ends gives its deliveries back.
        self._abandoned: list[asyncio.Future[Any]] = []
        self._done = asyncio.Event()
        self._running = False

    # -- public control --------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Attempts currently being made."""
        return len(self._inflight)

    @property
    def buffered(self) -> int:
        """Deliveries claimed ahead, leased to this worker, not yet started."""
        return len(self._ready_ids)

    def stop(self) -> None:
        """Stop claiming; :meth:`run` returns once in-flight attempts are recorded."""
        self._stopping.set()
        if self._handoff is not None:
            self._handoff.close()  # new deliveries stay pending, unleased, for the next worker
        self._wakeup.set()

    async def drain(self) -> None:
        """Stop, and wait until :meth:`run` has finished (no-op if it is not running)."""
        self.stop()
        if self._running:
            await self._done.wait()

    async def run(self) -> None:
        """Deliver until :meth:`stop` (or cancellation); never ends on a store error."""
        if self._running:
            raise RuntimeError("this worker is already running")
        self._running = True
        self._done.clear()
        self._closing = False
        self._slots_closing = False
        self._drained = None
        self._loop = asyncio.get_running_loop()
        handoff = HandOff(self.worker_id, self.lease_seconds, self._take_handed)
        self._handoff = handoff if self.store.hand_off(handoff) else None
        self._claim_due = True
        self._caught_up = False
        flusher = asyncio.create_task(self._flush_loop(), name=f"{self.worker_id}-flush")
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"{self.worker_id}-lease")
        reaper = asyncio.create_task(self._reaper_loop(), name=f"{self.worker_id}-reaper")
        recheck = asyncio.create_task(self._recheck_loop(), name=f"{self.worker_id}-recheck")
        logger.info("worker %s started", self.worker_id)
        try:
            await self._claim_loop()
        finally:
            for task in (reaper, recheck):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._finish(flusher, heartbeat)

    async def _finish(self, flusher: asyncio.Task[None], heartbeat: asyncio.Task[None]) -> None:
        try:
            if self._handoff is not None:
                self._handoff.close()
                self.store.hand_off(None)
                await self._hand_offs_settled()
            abandoned = await self._drain_attempts()
            abandoned += self._abandoned_claims()
            abandoned += [*self._ready_ids, *self._give_back, *(d.id for d in self._handed)]
            self._ready.clear()
            self._ready_ids.clear()
            self._give_back = []
            self._handed = []
            self._closing = True
            self._outcome_ready.set()
            self._flush_now.set()
            await flusher
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if abandoned:
                await self._release(abandoned)
            if self._owns_transport:
                await self.transport.close()
        finally:
            self._publish_metrics()
            self._running = False
            self._done.set()
            logger.info("worker %s stopped", self.worker_id)

    # -- claiming --------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = _Backoff()
        gathered = False
        while not self._stopping.is_set():
            self._wakeup.clear()
            if self._give_back:
                give_back, self._give_back = self._give_back, []
                await self._release(give_back)
            if self._handed:
                handed, self._handed = self._handed, []
                try:
                    await self._start(handed)
                except Exception:  # (released by _start) the store may be restarting
                    _warn("worker %s: store error", self.worker_id)
                    self._claim_due = True
            free, recheck = self._capacity()
            if free > 0 and self._ready:
                free -= self._start_ready(free)
            handoff = self._handoff
            if (
                handoff is not None
                and handoff.is_open
                and not handoff.missed
                and self._caught_up
                and not self._claim_due
            ):
                # Caught up, and nothing new since but what came straight from its publish: wait
                # for more of those, a retry falling due, or work the store tells of (a freed
                # slot has nothing to claim).
                self._caught_up_idle = True
                try:
                    # (caught up means the last claim left no endpoint out)
                    self._claim_due = await self._idle(excluding=False)
                except _Stopped:
                    return
                except Exception:
                    await self._after_store_error(backoff)
                finally:
                    self._caught_up_idle = False
                continue
            want = max(0, free) + self.prefetch - len(self._ready_ids)
            if want <= 0:
                await self._wait_for_slot(recheck)
                continue
            if want < (self.concurrency + self.prefetch) // 4 and not gathered:
                # Only a few slots are free and more attempts are about to end: let them, so
                # that one claim fills many slots instead of one claim per finished attempt.
                gathered = True
                await asyncio.sleep(self.flush_interval)
                continue
            gathered = False
            room = self._endpoint_room()
            exclude = self._full_endpoints(room)
            if handoff is not None:
                handoff.close()  # the claim goes first; new deliveries wait for it
            self._claim_due = False
            self._caught_up = False
            try:
                per_endpoint = self._per_endpoint_claim()
                claimed = await self._unless_stopped(
                    self.store.claim(
                        self.worker_id,
                        want,
                        self.lease_seconds,
                        exclude_endpoints=exclude,
                        endpoint_room=room,
                        per_endpoint=per_endpoint,
                    )
                )
                self._caught_up = (
                    len(claimed) < want
                    and not exclude
                    and not _room_filled(claimed, room, per_endpoint)
                    and not self._stopping.is_set()
                )
                if claimed:
                    await self._start(claimed)
                if handoff is not None and self._caught_up and not self._stopping.is_set():
                    self._open_hand_off(handoff)  # (stop() may have come during _start)
                if not claimed:
                    self._claim_due = await self._idle(excluding=bool(exclude))
            except _Stopped:
                return
            except Exception:
                await self._after_store_error(backoff)
            else:
                backoff.reset()

    async def _after_store_error(self, backoff: _Backoff) -> None:
        """A store call of the claim loop failed (the database may be restarting): say so,
        wait the backoff's next delay, and claim again."""
        delay = backoff.next()
        _warn("worker %s: store error, retrying in %.2fs", self.worker_id, delay)
        self._claim_due = True
        await self._sleep(delay)

    def _open_hand_off(self, handoff: HandOff) -> None:
        """Caught up: take new deliveries from publishes, as many as a claim could now."""
        free = max(0, self._capacity()[0])
        total = free + self.prefetch - len(self._ready_ids)
        handoff.open(total, self._endpoint_room(), self._per_endpoint_claim())

    async def _hand_offs_settled(self) -> None:
        """Stopping, the hand-off closed: wait until a publish that leased deliveries to it
        before has handed them over (into ``_handed``: given back with the buffer)."""
        try:
            await self.store.hand_off_settled()
        except Exception:  # a delivery handed over later keeps its lease until it expires
            _warn("worker %s: could not wait for the last hand-overs", self.worker_id)

    def _take_handed(self, deliveries: list[ClaimedDelivery]) -> None:
        """Deliveries the store leased to this worker as they were published (event loop):
        started at once when their keys are cached, else by the claim loop."""
        now = time.monotonic()
        if (
            self._stopping.is_set()
            or self._handed
            or not all(self._key_fresh(d.organization_id, now) for d in deliveries)
        ):
            self._handed.extend(deliveries)
            self._wakeup.set()
            return
        excess = self._place(deliveries)
        if excess:
            self._give_back.extend(excess)
            self._wakeup.set()

    def _holds(self, endpoint_id: str) -> int:
        """How many deliveries of ``endpoint_id`` this worker may hold: its limit in flight,
        and (while it has no slow attempt and claiming ahead is on) more in the buffer."""
        limit = self.endpoint_limit(endpoint_id)
        if self.prefetch and endpoint_id not in self._slow_per_endpoint:
            return limit * (1 + PREFETCH_PER_LIMIT)
        return limit

    def _held(self, endpoint_id: str) -> int:
        ready = self._ready.get(endpoint_id)
        return self._per_endpoint.get(endpoint_id, 0) + (len(ready) if ready else 0)

    def _full_endpoints(self, room: dict[str, int] | None = None) -> list[str]:
        """The endpoints holding as many deliveries as they may (in flight and buffered):
        those with no room left (``room``: what ``_endpoint_room`` says now)."""
        room = self._endpoint_room() if room is None else room
        return [endpoint_id for endpoint_id, left in room.items() if left <= 0]

    def _endpoint_room(self) -> dict[str, int]:
        """How many more deliveries this worker may take now of each endpoint with attempts
        in flight or buffered, or a raised limit.

        Passed to the claim with ``per_endpoint`` (the base, times the buffer's share) for
        every other endpoint, so that the store leases no delivery this worker would have to
        give back unattempted.
        """
        room = {
            e: max(0, self._holds(e) - self._held(e)) for e in {*self._per_endpoint, *self._ready}
        }
        for endpoint_id in self._limits:
            room.setdefault(endpoint_id, self._holds(endpoint_id))  # raised, nothing held
        return room

    def _per_endpoint_claim(self) -> int:
        """What the claim may lease of an endpoint this worker holds nothing of."""
        if self.prefetch:
            return self.per_endpoint_limit * (1 + PREFETCH_PER_LIMIT)
        return self.per_endpoint_limit

    def _capacity(self) -> tuple[int, float]:
        """Free slots, and in how many seconds a slot frees by an attempt turning slow.

        Amortized O(1): each attempt is looked at here once when it has ended or turned slow,
        not once per claim.
        """
        now = time.monotonic()
        started = self._started
        slow_since = now - self.slow_after
        while started:
            flight = started[0]
            if flight.done:
                started.popleft()
            elif flight.started <= slow_since:
                started.popleft()
                self._turned_slow(flight)
            else:
                break
        free = min(
            self.concurrency - (len(self._inflight) - self._slow),
            self.concurrency * SLOW_HEADROOM - len(self._inflight),
        )
        recheck = self.poll_interval
        if started:  # the oldest attempt still working
            recheck = max(0.001, min(recheck, started[0].started - slow_since))
        return free, recheck

    def _turned_slow(self, flight: _InFlight) -> None:
        """An attempt waited past slow_after: it stops counting against concurrency, and its
        endpoint (struggling) is back to the base limit at once, and stays there while it has
        a slow attempt in flight (see _adapt)."""
        flight.slow = True
        self._slow += 1
        endpoint_id = flight.delivery.endpoint_id
        self._slow_per_endpoint[endpoint_id] += 1
        self._limits.pop(endpoint_id, None)
        ready = self._ready.pop(endpoint_id, None)
        if ready:  # not held while the endpoint struggles: another worker may have room
            for delivery, _ in ready:
                self._ready_ids.discard(delivery.id)
                self._give_back.append(delivery.id)
            self._wakeup.set()

    async def _idle(self, *, excluding: bool) -> bool:
        """Nothing claimable: sleep until work may be due (or a slot frees); whether the
        wait ended for the store or a due time (True: claim) rather than a wake-up."""
        due = await self._unless_stopped(self.store.next_due_at())
        wait = self.poll_interval
        hint = self._retry_hint
        if hint is not None:
            # Retries this worker scheduled itself: no need to wait for the store to tell us.
            until_hint = (hint - datetime.now(UTC)).total_seconds()
            if until_hint > 0:
                wait = min(wait, until_hint)
            else:
                self._retry_hint = None
        if due is not None:
            until_due = (due - datetime.now(UTC)).total_seconds()
            if until_due > 0:
                wait = min(wait, until_due)
            elif not excluding:
                wait = 0.01  # became due just after the claim: claim again shortly
            # else: what is due belongs to endpoints at their limit; a freed slot wakes us
        return await self._pause(wait, store=True)

    async def _wait_for_slot(self, seconds: float) -> None:
        """Wait ``seconds`` or until a slot frees / stop(); cheaper than _pause (no tasks)."""
        if self._wakeup.is_set():
            return
        timer = self._loop.call_later(seconds, self._wakeup.set)
        try:
            await self._wakeup.wait()
        finally:
            timer.cancel()

    async def _pause(self, seconds: float, *, store: bool) -> bool:
        """Wait ``seconds`` or until a slot frees / stop(); with ``store``, also new work.
        Whether it ended other than by the wake-up (the store, or the time)."""
        woken = asyncio.create_task(self._wakeup.wait())
        waiters: list[asyncio.Task[object]] = [woken]
        if store:
            waiters.append(asyncio.create_task(self.store.wait_for_work(seconds)))
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if not task.cancelled() and (exc := task.exception()) is not None:
                    raise exc
            return len(done) != 1 or woken not in done
        finally:
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _unless_stopped(self, call: Awaitable[_T]) -> _T:
        """``call``'s result, or _Stopped as soon as stop() comes: a store call can hang (a
        table lock, a network that stopped answering) and a stop must not wait for it."""
        task = asyncio.ensure_future(call)
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: so is the call
            task.cancel()
            raise
        finally:
            stopping.cancel()
        if task.done():
            return task.result()
        task.add_done_callback(_retrieve)  # its error, if it ends in one, is of no interest
        self._abandoned.append(task)
        raise _Stopped

    def _abandoned_claims(self) -> list[str]:
        """Stopping, attempts drained: the deliveries that abandoned claims leased to us since
        (to give back); those still waiting are cancelled (PostgreSQL cancels the statement;
        if the server cannot be told, a lease they take expires on its own)."""
        ids: list[str] = []
        for task in self._abandoned:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None:
                result = task.result()
                if isinstance(result, list):  # (a claim's; next_due_at gives a datetime)
                    ids += [d.id for d in result if isinstance(d, ClaimedDelivery)]
        self._abandoned = []
        return ids

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but return at once on stop()."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _start(self, claimed: Sequence[ClaimedDelivery]) -> None:
        if self._stopping.is_set():
            await self._release(d.id for d in claimed)
            return
        try:
            await self._refresh_keys({d.organization_id for d in claimed})
        except Exception:
            await self._release(d.id for d in claimed)
            raise
        excess = self._place(claimed)
        if excess:
            await self._release(excess)

    def _place(self, claimed: Sequence[ClaimedDelivery]) -> list[str]:
        """Start what there are slots and room for, buffer what may wait; the rest's ids."""
        excess: list[str] = []
        inflight, per_endpoint, ready_ids = self._inflight, self._per_endpoint, self._ready_ids
        now = time.monotonic()
        free = self._capacity()[0]
        unrecorded = self._unrecorded() if self._record_failing else _NONE
        for delivery in claimed:
            if delivery.id in inflight or delivery.id in ready_ids or delivery.id in unrecorded:
                # Its lease ran out while we held it and came back to us: the attempt in
                # flight (or its outcome, once the record works again) records it, the lease
                # being ours again; releasing it would not be.
                continue
            endpoint_id = delivery.endpoint_id
            if free > 0 and per_endpoint[endpoint_id] < self.endpoint_limit(endpoint_id):
                free -= 1
                self._begin(delivery, now)
                self._dispatch(delivery)
            elif len(ready_ids) < self.prefetch and self._held(endpoint_id) < self._holds(
                endpoint_id
            ):
                queued = self._ready.get(endpoint_id)
                if queued is None:
                    queued = self._ready[endpoint_id] = deque()
                queued.append((delivery, now))
                ready_ids.add(delivery.id)
            else:
                excess.append(delivery.id)
        return excess

    def _begin(self, delivery: ClaimedDelivery, now: float, leased: float | None = None) -> None:
        """Count ``delivery`` in flight (its attempt starts now; claimed at ``leased``)."""
        endpoint_id = delivery.endpoint_id
        per_endpoint = self._per_endpoint
        per_endpoint[endpoint_id] += 1
        if per_endpoint[endpoint_id] >= self.endpoint_limit(endpoint_id):
            self._full_at[endpoint_id] = now
        flight = _InFlight(delivery, now, now if leased is None else leased)
        self._inflight[delivery.id] = flight
        self._started.append(flight)

    def _next_ready(self, prefer: str) -> tuple[ClaimedDelivery, float] | None:
        """The next buffered delivery that may start now (the caller has a free slot):
        ``prefer``'s endpoint first (a slot of it just freed), else the first endpoint in
        round-robin order with room; that endpoint moves to the back."""
        ready = self._ready
        if not ready:
            return None
        per_endpoint = self._per_endpoint
        endpoint_id: str | None = None
        if prefer in ready and per_endpoint[prefer] < self.endpoint_limit(prefer):
            endpoint_id = prefer
        else:
            for candidate in ready:
                if per_endpoint[candidate] < self.endpoint_limit(candidate):
                    endpoint_id = candidate
                    break
            if endpoint_id is None:
                return None
        queued = ready.pop(endpoint_id)
        follow = queued.popleft()
        if queued:
            ready[endpoint_id] = queued  # to the back: endpoints take turns
        self._ready_ids.discard(follow[0].id)
        return follow

    def _start_ready(self, free: int) -> int:
        """Start up to ``free`` buffered deliveries whose endpoints have room; how many."""
        started = 0
        now = time.monotonic()
        while started < free and (follow := self._next_ready("")) is not None:
            delivery, leased = follow
            self._begin(delivery, now, leased)
            self._dispatch(delivery)
            started += 1
        return started

    def _dispatch(self, delivery: ClaimedDelivery) -> None:
        """Hand ``delivery`` to an idle attempt runner, or start one.

        A runner per slot rather than a task per attempt: creating a task costs the event
        loop's thread several microseconds (asyncio's task registry, a pid check per
        ``get_running_loop``), waking a waiting runner much less.
        """
        idle = self._idle_slots
        while idle:
            waiter = idle.pop()  # the most recently idle: its frames are warm
            if not waiter.done():  # (a cancelled runner's waiter is done)
                waiter.set_result(delivery)
                return
        task = self._loop.create_task(self._run_slot(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_slot(self, delivery: ClaimedDelivery) -> None:
        """Make attempts, one at a time, until told to end (None) or the worker stops.

        The attempt itself is inline (not a coroutine of its own): each coroutine between
        the runner and the transport is created per attempt and resumed at every wake-up.
        """
        while True:
            started_at = datetime.now(UTC)
            try:
                key = self._keys.get(delivery.organization_id)
                if key is None or key.mac is None:
                    error = key.error if key is not None else "no_signing_key"
                    response = Response(None, error, None, 0.0)
                else:
                    response = await self.transport.post(
                        delivery.url,
                        delivery.body,
                        self._signed_headers(delivery, key.mac),
                        self._attempt_timeout,
                    )
                    self._durations.append(response.duration_ms / 1000)
                outcome = self._outcome(delivery, started_at, response)
            except asyncio.CancelledError:
                self._free_slot(delivery, abandoned=True)
                raise
            except Exception:  # a bug: record a failed attempt rather than lose the worker
                logger.exception("worker %s: attempt of %s crashed", self.worker_id, delivery.id)
                outcome = self._crashed_outcome(delivery, started_at)
            self._ended(delivery, outcome)
            if self._ready and not self._stopping.is_set() and self._capacity()[0] > 0:
                follow = self._next_ready(delivery.endpoint_id)
                if follow is not None:  # straight on with a buffered one: no hand-over
                    delivery = follow[0]
                    self._begin(delivery, time.monotonic(), follow[1])
                    continue
            if self._slots_closing or len(self._idle_slots) >= self.concurrency:
                return  # more runners idle than can be busy at once: this one is not needed
            waiter: asyncio.Future[ClaimedDelivery | None] = self._loop.create_future()
            self._idle_slots.append(waiter)
            handed = await waiter
            if handed is None:
                return
            delivery = handed

    # -- per-endpoint limits ---------------------------------------------------------------

    def endpoint_limit(self, endpoint_id: str) -> int:
        """How many attempts this worker may have in flight to ``endpoint_id`` now."""
        return int(self._limits.get(endpoint_id, self.per_endpoint_limit))

    def _adapt(self, endpoint_id: str, attempt: Attempt, full: bool) -> None:
        """Grow the endpoint's limit on a fast answer at full use; halve it on trouble."""
        if self.max_per_endpoint <= self.per_endpoint_limit:
            return
        limit = self._limits.get(endpoint_id, float(self.per_endpoint_limit))
        status = attempt.status_code
        if (
            attempt.error is not None
            or status is None
            or status == 429
            or status >= 500
            or attempt.duration_ms > self._fast_ms * 2
        ):
            limit = max(float(self.per_endpoint_limit), limit / 2)
        elif (
            full
            and attempt.duration_ms < self._fast_ms
            and endpoint_id not in self._slow_per_endpoint
        ):
            # In flight while the endpoint used its whole limit, and answered fast: one more
            # slot per such answer, so the limit doubles per round trip while the endpoint
            # keeps up, as TCP's slow start counts the acks of a full window (an endpoint with
            # an attempt waiting past slow_after stays at the base meanwhile).
            limit = min(float(self.max_per_endpoint), limit + 1)
        else:
            return
        if limit <= self.per_endpoint_limit:
            self._limits.pop(endpoint_id, None)
        else:
            if endpoint_id not in self._limits and len(self._limits) >= _MAX_ADAPTED:
                # Bounded memory: forget the raised limits of endpoints with nothing in flight.
                for idle in [e for e in self._limits if e not in self._per_endpoint]:
                    del self._limits[idle]
            self._limits[endpoint_id] = limit

    async def _release(self, delivery_ids: Iterable[str]) -> None:
        ids = list(delivery_ids)
        try:
            await self.store.release(self.worker_id, ids)
        except Exception:  # their leases expire on their own: they are attempted again then
            _warn("worker %s: could not release %d deliveries", self.worker_id, len(ids))

    # -- signing keys ----------------------------------------------------------------------

    def _key_fresh(self, organization_id: str, now: float) -> bool:
        """Whether the organization's signing key was looked up within key_cache_seconds."""
        cached = self._keys.get(organization_id)
        return cached is not None and now - cached.fetched_at < self.key_cache_seconds

    async def _refresh_keys(self, organization_ids: set[str]) -> None:
        now = time.monotonic()
        stale = [org for org in organization_ids if not self._key_fresh(org, now)]
        if not stale:
            return
        keys = await self.store.signing_keys(stale)
        for org in stale:
            key = keys.get(org)
            previous = self._keys.get(org)
            if key is None:
                self._keys[org] = _CachedKey(now, None, None, "no_signing_key")
            elif previous is not None and previous.key_id == key.id and previous.mac:
                previous.fetched_at = now  # same key: keep the keyed MAC
            else:
                try:
                    secret = self.decrypt(key.secret_ciphertext, organization_id=org, key_id=key.id)
                    mac = _keyed_mac(secret)
                except Exception as exc:
                    # The exception may quote key material: log its type only.
                    logger.error(
                        "worker %s: cannot decrypt key %s of %s (%s)",
                        self.worker_id,
                        key.id,
                        org,
                        type(exc).__name__,
                    )
                    self._keys[org] = _CachedKey(now, key.id, None, "key_error")
                else:
                    self._keys[org] = _CachedKey(now, key.id, mac, None)

    # -- one attempt -----------------------------------------------------------------------

    def _ended(self, delivery: ClaimedDelivery, outcome: AttemptOutcome) -> None:
        """Adapt the endpoint's limit, buffer the outcome for the flush loop, free the slot."""
        flight = self._inflight.get(delivery.id)
        full = (
            flight is not None and self._full_at.get(delivery.endpoint_id, -1.0) >= flight.started
        )
        self._adapt(delivery.endpoint_id, outcome.attempt, full)
        outcomes = self._outcomes
        outcomes.append(outcome)
        self._outcome_ready.set()
        if len(outcomes) >= self.flush_size or delivery.ordering_key is not None:
            self._flush_now.set()  # (the next delivery of a key waits for this outcome)
        self._free_slot(delivery, abandoned=False)

    def _free_slot(self, delivery: ClaimedDelivery, *, abandoned: bool) -> None:
        if abandoned:
            return  # _drain_attempts releases it; the slot bookkeeping ends with the worker
        flight = self._inflight.pop(delivery.id, None)
        endpoint_id = delivery.endpoint_id
        if flight is not None:
            flight.done = True
            if flight.slow:
                self._slow -= 1
                self._slow_per_endpoint[endpoint_id] -= 1
                if self._slow_per_endpoint[endpoint_id] <= 0:
                    self._slow_per_endpoint.pop(endpoint_id, None)
        left = self._per_endpoint[endpoint_id] - 1
        if left <= 0:
            self._per_endpoint.pop(endpoint_id, None)
            self._full_at.pop(endpoint_id, None)
        else:
            self._per_endpoint[endpoint_id] = left
        if not self._caught_up_idle:  # (caught up, a freed slot changes nothing to claim)
            self._wakeup.set()
        if self._drained is not None and not self._inflight and not self._drained.done():
            self._drained.set_result(None)

    @staticmethod
    def _signed_headers(delivery: ClaimedDelivery, mac: hmac.HMAC) -> dict[str, str]:
        """The attempt's headers, signed now: a fresh timestamp and signature every attempt.

        Exactly what :func:`ascend_webhooks.signature.sign` makes (``X-Ascend-Signature:
        t=<ts>,v1=<hex HMAC-SHA256 of "<ts>:" + body>``), from a copy of the key's MAC.
        """
        timestamp = str(int(time.time()))
        mac = mac.copy()
        mac.update(timestamp.encode("ascii") + b":" + delivery.body)
        headers = {
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: f"t={timestamp},v1={mac.hexdigest()}",
            "Content-Type": "application/json",
        }
        # Informational copies of what the signed body says; a publisher-chosen id or type
        # that is no valid header value (non-ASCII, control characters) is left out rather
        # than failing every attempt.
        event_id, event_type = delivery.event_id, delivery.event_type
        if _header_safe(event_id):
            headers["X-Ascend-Event-Id"] = event_id
        if event_type in _SAFE_TYPES or _safe_type(event_type):
            headers["X-Ascend-Event-Type"] = event_type
        headers["X-Ascend-Delivery-Id"] = delivery.id
        headers["X-Ascend-Attempt"] = str(delivery.attempt_number)
        return headers

    def _outcome(
        self, delivery: ClaimedDelivery, started_at: datetime, response: Response
    ) -> AttemptOutcome:
        status_code, error = response.status_code, response.error
        next_attempt_at: datetime | None = None
        if is_success(status_code, error):
            status = DeliveryStatus.SUCCEEDED  # what the policy decides for any success
        else:
            # The clock is read only when a retry is scheduled.
            status, next_attempt_at = self.policy.decide(delivery.round_attempt, False)
            if error is None and status_code is not None:
                error = f"status_{response.status_code}"
            logger.log(
                logging.DEBUG if status is DeliveryStatus.PENDING else logging.INFO,
                "delivery %s to endpoint %s: attempt %d failed (%s), %s",
                delivery.id,
                delivery.endpoint_id,
                delivery.attempt_number,
                error,
                "retrying" if status is DeliveryStatus.PENDING else "giving up",
            )
        self._attempt_counts[status] += 1
        attempt = Attempt(  # number, started_at, duration_ms, status_code, error, excerpt
            delivery.attempt_number,
            started_at,
            round(response.duration_ms, 3),
            status_code,
            error,
            response.excerpt,
        )
        return AttemptOutcome(delivery.id, attempt, status, next_attempt_at)

    def _crashed_outcome(self, delivery: ClaimedDelivery, started_at: datetime) -> AttemptOutcome:
        """The outcome of an attempt that crashed: an ``internal_error``, retried as the policy
        says. Raises nothing: should deciding fail too, the delivery is failed (as after its
        last retry; a manual retry starts it again), since a runner that died here would leave
        it leased, its lease renewed by the heartbeat for ever.
        """
        try:
            return self._outcome(delivery, started_at, Response(None, "internal_error", None, 0.0))
        except Exception:
            logger.exception(
                "worker %s: no retry could be scheduled for %s; failing it",
                self.worker_id,
                delivery.id,
            )
        self._attempt_counts[DeliveryStatus.FAILED] += 1
        attempt = Attempt(delivery.attempt_number, started_at, 0.0, None, "internal_error", None)
        return AttemptOutcome(delivery.id, attempt, DeliveryStatus.FAILED, None)

    def _publish_metrics(self) -> None:
        """Add the attempts counted since the last call to the shared metrics."""
        durations, self._durations = self._durations, []
        ATTEMPT_SECONDS.observe_many(durations)
        counts = self._attempt_counts
        for status, count in counts.items():
            if count:
                _ATTEMPTS_BY_STATUS[status].inc(count)
                counts[status] = 0

    # -- recording -------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        backoff = _Backoff()
        give_up_at: float | None = None
        while True:
            await self._outcome_ready.wait()
            if len(self._outcomes) < self.flush_size and not self._closing:
                # Until flush_size outcomes or flush_interval, whichever first (a timer that
                # sets the event: asyncio.wait_for would create a task per batch).
                timer = self._loop.call_later(self.flush_interval, self._flush_now.set)
                try:
                    await self._flush_now.wait()
                finally:
                    timer.cancel()
            self._flush_now.clear()
            self._outcome_ready.clear()
            self._publish_metrics()
            if self._outcomes:
                batch, self._outcomes = self._outcomes, []
                self._recording = batch
                try:
                    # Shielded: an outcome the database has accepted must not be half-written
                    # because the worker was cancelled.
                    await asyncio.shield(self.store.record(self.worker_id, batch))
                    self._note_retries(batch)
                except Exception:
                    self._record_failing = True
                    self._outcomes[:0] = batch
                    self._outcome_ready.set()
                    if self._closing:
                        give_up_at = give_up_at or time.monotonic() + self.drain_grace
                        if time.monotonic() >= give_up_at:
                            logger.error(
                                "worker %s: %d outcomes not recorded; those deliveries will "
                                "be attempted again",
                                self.worker_id,
                                len(self._outcomes),
                            )
                            return
                    delay = backoff.next()
                    _warn(
                        "worker %s: cannot record outcomes, retrying in %.2fs",
                        self.worker_id,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                finally:
                    self._recording = ()
                self._record_failing = False
                backoff.reset()
            if self._closing and not self._outcomes:
                return

    def _note_retries(self, batch: Sequence[AttemptOutcome]) -> None:
        """Remember the earliest retry just recorded, and have the claim loop look again."""
        due = [
            o.next_attempt_at
            for o in batch
            if o.status is DeliveryStatus.PENDING and o.next_attempt_at is not None
        ]
        if due:
            earliest = min(due)
            if self._retry_hint is None or earliest < self._retry_hint:
                self._retry_hint = earliest
            self._wakeup.set()

    async def _heartbeat_loop(self) -> None:
        third = self.lease_seconds / 3
        while True:
            await asyncio.sleep(third / 2)
            now = time.monotonic()
            long_running = [i for i, f in self._inflight.items() if now - f.leased >= third]
            long_running += [d.id for q in self._ready.values() for d, at in q if now - at >= third]
            if self._record_failing:
                long_running += self._unrecorded()
            if long_running:
                try:
                    await self.store.extend_leases(self.worker_id, long_running, self.lease_seconds)
                except Exception:
                    _warn("worker %s: cannot extend leases", self.worker_id)

    def _unrecorded(self) -> frozenset[str]:
        """The deliveries whose outcome is waiting to be recorded."""
        return frozenset(o.delivery_id for o in (*self._recording, *self._outcomes))

    async def _recheck_loop(self) -> None:
        """Every ``recheck_interval``: the endpoints of deliveries claimed ahead at least that
        long ago asked about again; the deliveries of one disabled, deleted or given another
        URL since are given back (a disabled endpoint's wait, a deleted one's have ended, the
        others are claimed again with the new URL). Without it they were sent as claimed,
        for as long as the endpoint took to work through them."""
        while True:
            await asyncio.sleep(self.recheck_interval)
            since = time.monotonic() - self.recheck_interval
            held = [e for e, queued in self._ready.items() if queued and queued[0][1] <= since]
            if not held:
                continue
            try:
                urls = await self.store.endpoint_urls(held)
            except Exception:  # the database may be restarting; the next round asks again
                _warn("worker %s: cannot recheck endpoints", self.worker_id)
                continue
            for endpoint_id in held:
                queued = self._ready.get(endpoint_id)
                url = urls.get(endpoint_id)
                if not queued or all(delivery.url == url for delivery, _ in queued):
                    continue
                keep = deque(entry for entry in queued if entry[0].url == url)
                for delivery, _ in queued:
                    if delivery.url != url:
                        self._ready_ids.discard(delivery.id)
                        self._give_back.append(delivery.id)
                if keep:
                    self._ready[endpoint_id] = keep
                else:
                    del self._ready[endpoint_id]
                self._wakeup.set()

    async def _reaper_loop(self) -> None:
        """Now and every half lease: give back the leases of dead workers of this machine."""
        while True:
            try:
                await self.release_dead_workers()
            except Exception:  # the database may be restarting; the next round tries again
                _warn("worker %s: cannot look for leases of dead workers", self.worker_id)
            await asyncio.sleep(self.lease_seconds / 2)

    async def release_dead_workers(self) -> int:
        """Release the leases of workers of this machine whose process is gone; how many."""
        total = 0
        for holder in await self.store.lease_holders():
            if holder == self.worker_id or not is_dead_here(holder):
                continue
            released = await self.store.release_worker(holder)
            if released:
                logger.info(
                    "worker %s: released %d deliveries leased by %s, whose process is gone",
                    self.worker_id,
                    released,
                    holder,
                )
            total += released
        return total

    async def _drain_attempts(self) -> list[str]:
        """Let in-flight attempts end (bounded); return the ids of those cut short."""
        if self._inflight:
            self._drained = self._loop.create_future()
            await asyncio.wait({self._drained}, timeout=self._attempt_timeout + self.drain_grace)
        # Idle runners end now, busy ones when their attempt ends or is cut short here.
        self._slots_closing = True
        for waiter in self._idle_slots:
            if not waiter.done():
                waiter.set_result(None)
        self._idle_slots.clear()
        tasks = list(self._tasks)
        if self._inflight:
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        abandoned = list(self._inflight)
        self._inflight.clear()
        self._started.clear()
        self._slow = 0
        self._slow_per_endpoint.clear()
        self._per_endpoint.clear()
        self._full_at.clear()
        return abandoned
