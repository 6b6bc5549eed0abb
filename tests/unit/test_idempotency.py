"""Idempotency without a network: the in-memory store and the receiver's claim protocol."""

from __future__ import annotations

import json
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import pytest

from ascend_webhooks import Event, sign
from ascend_webhooks.receiver import (
    Claim,
    IdempotencyStore,
    MemoryIdempotencyStore,
    Router,
    WebhookReceiver,
)

SECRET = "whsec_unit"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def body(event_id: str = "evt_1", type_: str = "invoice.paid") -> bytes:
    return json.dumps({"id": event_id, "type": type_, "data": {"n": 1}}).encode()


class InlineExecutor(Executor):
    """Runs submitted work at once, so background-mode tests need no waiting."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


# -- Claim ---------------------------------------------------------------------------------


def test_only_acquired_is_truthy() -> None:
    assert Claim.ACQUIRED
    assert not Claim.DONE
    assert not Claim.IN_PROGRESS


# -- MemoryIdempotencyStore ----------------------------------------------------------------


def test_claim_complete_and_duplicates() -> None:
    store = MemoryIdempotencyStore()
    assert isinstance(store, IdempotencyStore)
    assert store.claim("evt_1") is Claim.ACQUIRED
    assert store.claim("evt_1") is Claim.IN_PROGRESS
    store.complete("evt_1")
    assert store.claim("evt_1") is Claim.DONE
    assert store.claim("evt_2") is Claim.ACQUIRED


def test_release_lets_a_retry_claim_again_but_never_undoes_done() -> None:
    store = MemoryIdempotencyStore()
    assert store.claim("evt_1")
    store.release("evt_1")
    assert store.claim("evt_1") is Claim.ACQUIRED
    store.complete("evt_1")
    store.release("evt_1")
    assert store.claim("evt_1") is Claim.DONE


def test_an_abandoned_claim_expires_after_the_processing_ttl() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(processing_ttl=30, done_ttl=3600, clock=clock)
    assert store.claim("evt_1")
    clock.now += 29.9
    assert store.claim("evt_1") is Claim.IN_PROGRESS
    clock.now += 0.2
    assert store.claim("evt_1") is Claim.ACQUIRED


def test_done_ids_are_forgotten_after_the_done_ttl() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(processing_ttl=30, done_ttl=3600, clock=clock)
    assert store.claim("evt_1")
    store.complete("evt_1")
    clock.now += 3599
    assert store.claim("evt_1") is Claim.DONE
    clock.now += 2
    assert store.claim("evt_1") is Claim.ACQUIRED


def test_the_store_is_bounded_and_forgets_the_oldest_first() -> None:
    store = MemoryIdempotencyStore(max_entries=3)
    for n in range(5):
        assert store.claim(f"evt_{n}")
        store.complete(f"evt_{n}")
    assert len(store) == 3
    assert store.claim("evt_4") is Claim.DONE
    assert store.claim("evt_0") is Claim.ACQUIRED  # forgotten: the oldest went first


def test_expired_entries_are_swept_on_claim() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(processing_ttl=1, done_ttl=1, clock=clock)
    for n in range(10):
        store.claim(f"evt_{n}")
    clock.now += 5
    store.claim("evt_new")
    assert len(store) == 1


def test_concurrent_claims_of_one_id_have_exactly_one_winner() -> None:
    store = MemoryIdempotencyStore()
    barrier = threading.Barrier(8)

    def contend(_: int) -> list[Claim]:
        barrier.wait()
        return [store.claim(f"evt_{n}") for n in range(200)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(contend, range(8)))
    for n in range(200):
        assert sum(1 for r in results if r[n] is Claim.ACQUIRED) == 1


@pytest.mark.parametrize(
    "options",
    [{"processing_ttl": 0}, {"done_ttl": -1}, {"done_ttl": True}, {"max_entries": 0}],
)
def test_bad_limits_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        MemoryIdempotencyStore(**options)


# -- WebhookReceiver: the protocol every adapter shares -------------------------------------


def make_receiver(
    *, mode: str = "inline", store: Any = None, fail: bool = False, **options: Any
) -> tuple[WebhookReceiver, list[Event]]:
    router = Router()
    seen: list[Event] = []

    @router.on("invoice.paid")
    def paid(e: Event) -> None:
        seen.append(e)
        if fail:
            raise RuntimeError("handler broke")

    receiver = WebhookReceiver(
        SECRET,
        router,
        store=store if store is not None else MemoryIdempotencyStore(),
        mode=mode,  # type: ignore[arg-type]
        **options,
    )
    return receiver, seen


def test_valid_request_runs_the_handler_and_answers_200() -> None:
    receiver, seen = make_receiver()
    raw = body()
    reply = receiver.handle_sync(raw, sign(raw, SECRET))
    assert reply.status == 200
    assert json.loads(reply.body) == {"received": True, "id": "evt_1", "status": "processed"}
    assert seen == [Event("evt_1", "invoice.paid", {"n": 1})]
    assert seen[0].raw == raw


def test_bad_signature_is_a_401_problem_and_runs_nothing() -> None:
    receiver, seen = make_receiver()
    raw = body()
    reply = receiver.handle_sync(raw, sign(raw, "some other secret"))
    assert reply.status == 401
    assert reply.content_type == "application/problem+json"
    problem = json.loads(reply.body)
    assert problem["status"] == 401
    assert problem["code"] == "invalid_signature"
    assert SECRET not in reply.body.decode()
    assert seen == []


def test_signed_non_event_is_a_400_problem() -> None:
    receiver, seen = make_receiver()
    raw = b'{"id": "evt_1"'
    reply = receiver.handle_sync(raw, sign(raw, SECRET))
    assert reply.status == 400
    assert json.loads(reply.body)["code"] == "invalid_payload"
    assert seen == []


def test_a_duplicate_is_acknowledged_without_running_handlers() -> None:
    receiver, seen = make_receiver()
    raw = body()
    first = receiver.handle_sync(raw, sign(raw, SECRET))
    second = receiver.handle_sync(raw, sign(raw, SECRET))
    assert (first.status, second.status) == (200, 200)
    assert json.loads(second.body)["status"] == "duplicate"
    assert len(seen) == 1


def test_an_event_in_progress_elsewhere_gets_409_so_the_sender_retries() -> None:
    store = MemoryIdempotencyStore()
    receiver, seen = make_receiver(store=store)
    assert store.claim("evt_1")  # another delivery holds it
    raw = body()
    reply = receiver.handle_sync(raw, sign(raw, SECRET))
    assert reply.status == 409
    assert reply.headers["Retry-After"]
    assert seen == []


def test_inline_handler_failure_is_a_500_and_releases_the_claim() -> None:
    errors: list[tuple[str, str]] = []
    store = MemoryIdempotencyStore()
    receiver, seen = make_receiver(
        store=store, fail=True, on_error=lambda e, exc: errors.append((e.id, str(exc)))
    )
    raw = body()
    reply = receiver.handle_sync(raw, sign(raw, SECRET))
    assert reply.status == 500
    assert b"handler broke" not in reply.body  # no internals in the answer
    assert errors == [("evt_1", "handler broke")]
    # The retry runs the handler again.
    assert receiver.handle_sync(raw, sign(raw, SECRET)).status == 500
    assert len(seen) == 2


def test_background_mode_answers_before_handling_and_marks_done_after() -> None:
    store = MemoryIdempotencyStore()
    receiver, seen = make_receiver(mode="background", store=store, executor=InlineExecutor())
    raw = body()
    reply = receiver.handle_sync(raw, sign(raw, SECRET))
    assert json.loads(reply.body)["status"] == "accepted"
    assert len(seen) == 1
    assert store.claim("evt_1") is Claim.DONE


class BrokenStore:
    def claim(self, event_id: str) -> Claim:
        raise ConnectionError("store down")

    def complete(self, event_id: str) -> None:
        raise AssertionError("not reached")

    def release(self, event_id: str) -> None:
        raise AssertionError("not reached")


def test_an_unreachable_store_is_a_503_and_runs_nothing() -> None:
    receiver, seen = make_receiver(store=BrokenStore())
    raw = body()
    reply = receiver.handle_sync(raw, sign(raw, SECRET))
    assert reply.status == 503
    assert seen == []


class AnsweringStore:
    """A custom store whose claim answers what it is told to, a Claim or not."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.calls: list[str] = []

    def claim(self, event_id: str) -> Any:
        self.calls.append("claim")
        return self.answer

    def complete(self, event_id: str) -> None:
        self.calls.append("complete")

    def release(self, event_id: str) -> None:
        self.calls.append("release")


@pytest.mark.parametrize("answer", [False, None, 0, 1, "acquired", "done"])
async def test_a_claim_answered_with_no_claim_is_a_503_and_runs_nothing(
    answer: object, caplog: pytest.LogCaptureFixture
) -> None:
    # Such answers ran the handlers (anything but DONE and IN_PROGRESS did): a store meaning
    # "someone has it" by False would have had a duplicate run.
    store = AnsweringStore(answer)
    receiver, seen = make_receiver(store=store)
    raw = body()
    replies = [
        receiver.handle_sync(raw, sign(raw, SECRET)),
        await receiver.handle(raw, sign(raw, SECRET)),
    ]
    for reply in replies:
        assert reply.status == 503
        assert json.loads(reply.body)["code"] == "store_unavailable"
        assert reply.run_after is None
    assert seen == []
    assert store.calls == ["claim", "claim"]  # nothing completed, nothing released
    assert caplog.text.count("not a Claim") == 2


async def test_a_claim_answered_true_runs_the_handlers() -> None:
    store = AnsweringStore(True)
    receiver, seen = make_receiver(store=store)
    raw = body()
    assert receiver.handle_sync(raw, sign(raw, SECRET)).status == 200
    assert (await receiver.handle(raw, sign(raw, SECRET))).status == 200
    assert len(seen) == 2
    assert store.calls == ["claim", "complete", "claim", "complete"]


async def test_the_async_path_follows_the_same_protocol() -> None:
    receiver, seen = make_receiver()
    raw = body()
    assert (await receiver.handle(raw, sign(raw, SECRET))).status == 200
    assert json.loads((await receiver.handle(raw, sign(raw, SECRET))).body)["status"] == "duplicate"
    assert (await receiver.handle(raw, sign(raw, "wrong"))).status == 401
    assert len(seen) == 1


async def test_async_background_reply_carries_the_work_to_run_after_sending() -> None:
    store = MemoryIdempotencyStore()
    receiver, seen = make_receiver(mode="background", store=store)
    raw = body()
    reply = await receiver.handle(raw, sign(raw, SECRET))
    assert reply.status == 200
    assert reply.run_after is not None
    assert seen == []  # nothing ran yet: the framework sends the reply first
    await reply.run_after()
    assert len(seen) == 1
    assert store.claim("evt_1") is Claim.DONE


def test_without_a_store_every_delivery_runs() -> None:
    router = Router()
    seen: list[str] = []
    router.add("invoice.paid", lambda e: seen.append(e.id))
    receiver = WebhookReceiver(SECRET, router, store=None, mode="inline")
    raw = body()
    receiver.handle_sync(raw, sign(raw, SECRET))
    receiver.handle_sync(raw, sign(raw, SECRET))
    assert seen == ["evt_1", "evt_1"]


def test_key_rotation_accepts_either_secret() -> None:
    router = Router()
    seen: list[str] = []
    router.add("invoice.paid", lambda e: seen.append(e.id))
    receiver = WebhookReceiver(["whsec_new", "whsec_old"], router, mode="inline")
    for n, secret in enumerate(["whsec_old", "whsec_new"]):
        raw = body(f"evt_{n}")
        assert receiver.handle_sync(raw, sign(raw, secret)).status == 200
    assert seen == ["evt_0", "evt_1"]


def test_receiver_options_are_checked() -> None:
    with pytest.raises(ValueError, match="mode"):
        WebhookReceiver(SECRET, Router(), mode="later")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Router"):
        WebhookReceiver(SECRET, object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="secret"):
        WebhookReceiver("", Router())


class AsyncMemoryStore:
    """An async store (the shape of AsyncRedisIdempotencyStore) over the memory store."""

    def __init__(self) -> None:
        self.inner = MemoryIdempotencyStore()
        self.calls: list[str] = []

    async def claim(self, event_id: str) -> Claim:
        self.calls.append("claim")
        return self.inner.claim(event_id)

    async def complete(self, event_id: str) -> None:
        self.calls.append("complete")
        self.inner.complete(event_id)

    async def release(self, event_id: str) -> None:
        self.calls.append("release")
        self.inner.release(event_id)


async def test_an_async_store_is_awaited_on_the_async_path() -> None:
    store = AsyncMemoryStore()
    failing, _ = make_receiver(store=store, fail=True)
    raw = body()
    assert (await failing.handle(raw, sign(raw, SECRET))).status == 500
    assert store.calls == ["claim", "release"]
    receiver, seen = make_receiver(store=store)
    assert (await receiver.handle(raw, sign(raw, SECRET))).status == 200
    assert len(seen) == 1
    assert store.calls[2:] == ["claim", "complete"]
    assert store.inner.claim("evt_1") is Claim.DONE


def test_an_async_store_is_refused_on_the_blocking_path() -> None:
    receiver, _ = make_receiver(store=AsyncMemoryStore())
    with pytest.raises(TypeError, match="blocking idempotency store"):
        receiver.require_blocking_store()
    raw = body()
    with pytest.raises(TypeError, match="blocking idempotency store"):
        receiver.handle_sync(raw, sign(raw, SECRET))


def test_the_default_pool_is_created_once_and_shut_down() -> None:
    receiver, seen = make_receiver(mode="background")
    raw = body()
    assert receiver.handle_sync(raw, sign(raw, SECRET)).status == 200
    receiver.shutdown()  # waits for the queued handler
    assert len(seen) == 1
    receiver.shutdown()  # twice is harmless


def test_after_shutdown_a_background_request_is_503_and_the_claim_released() -> None:
    store = MemoryIdempotencyStore()
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    receiver, seen = make_receiver(mode="background", store=store, executor=pool)
    raw = body()
    reply = receiver.handle_sync(raw, sign(raw, SECRET))
    assert reply.status == 503
    assert json.loads(reply.body)["code"] == "shutting_down"
    assert store.claim("evt_1") is Claim.ACQUIRED  # released: the retry will run it
    assert seen == []
