"""The event router: handlers by type, in order, sync or async, and the fallback."""

from __future__ import annotations

import ast
import asyncio
import functools
import re
import subprocess
import sys
import threading
from collections.abc import Awaitable
from pathlib import Path

import pytest

from ascend_webhooks import Event
from ascend_webhooks.receiver import Router


def event(type_: str = "invoice.paid", id_: str = "evt_1") -> Event:
    return Event(id_, type_, {"amount": 100})


def test_sync_handler_gets_the_event_and_dispatch_says_it_matched() -> None:
    router = Router()
    seen: list[Event] = []

    @router.on("invoice.paid")
    def paid(e: Event) -> None:
        seen.append(e)

    assert paid is not None  # the decorator gives the function back
    assert router.dispatch_sync(event()) is True
    assert seen == [event()]


async def test_async_handler_is_awaited_and_sync_handler_runs_off_the_loop() -> None:
    router = Router()
    order: list[str] = []
    loop_thread = threading.get_ident()

    @router.on("invoice.paid")
    async def first(e: Event) -> None:
        await asyncio.sleep(0)
        order.append("async")

    @router.on("invoice.paid")
    def second(e: Event) -> None:
        assert threading.get_ident() != loop_thread  # a blocking handler never stalls the loop
        order.append("sync")

    assert await router.dispatch(event()) is True
    assert order == ["async", "sync"]


def test_dispatch_sync_runs_async_handlers_to_completion() -> None:
    router = Router()
    done: list[str] = []

    @router.on("payout.paid")
    async def paid(e: Event) -> None:
        await asyncio.sleep(0)
        done.append(e.id)

    router.dispatch_sync(event("payout.paid", "evt_9"))
    assert done == ["evt_9"]


async def test_a_partial_of_an_async_function_is_awaited_too() -> None:
    router = Router()
    done: list[str] = []

    async def record(tag: str, e: Event) -> None:
        done.append(tag + e.id)

    router.add("invoice.paid", functools.partial(record, "x"))
    await router.dispatch(event())
    await asyncio.to_thread(router.dispatch_sync, event(id_="evt_2"))
    assert done == ["xevt_1", "xevt_2"]


def test_several_handlers_run_in_registration_order_and_one_may_serve_several_types() -> None:
    router = Router()
    calls: list[tuple[str, str]] = []

    @router.on("invoice.paid", "invoice.voided")
    def audit(e: Event) -> None:
        calls.append(("audit", e.type))

    @router.on("invoice.paid")
    def fulfil(e: Event) -> None:
        calls.append(("fulfil", e.type))

    router.dispatch_sync(event("invoice.paid"))
    router.dispatch_sync(event("invoice.voided"))
    assert calls == [
        ("audit", "invoice.paid"),
        ("fulfil", "invoice.paid"),
        ("audit", "invoice.voided"),
    ]
    assert router.event_types == {"invoice.paid", "invoice.voided"}


def test_the_first_failure_stops_the_dispatch_and_propagates() -> None:
    router = Router()
    ran: list[str] = []

    @router.on("invoice.paid")
    def boom(e: Event) -> None:
        raise LookupError("no such invoice")

    @router.on("invoice.paid")
    def after(e: Event) -> None:
        ran.append("after")

    with pytest.raises(LookupError, match="no such invoice"):
        router.dispatch_sync(event())
    assert ran == []


async def test_async_dispatch_propagates_failures_too() -> None:
    router = Router()

    @router.on("invoice.paid")
    async def boom(e: Event) -> None:
        raise LookupError("async failure")

    with pytest.raises(LookupError, match="async failure"):
        await router.dispatch(event())


async def test_unknown_types_are_ignored_by_default() -> None:
    router = Router()
    assert router.dispatch_sync(event("refund.paid")) is False
    assert await router.dispatch(event("refund.paid")) is False


async def test_a_custom_fallback_gets_unknown_types_only() -> None:
    router = Router()
    unknown: list[str] = []
    known: list[str] = []

    @router.on("invoice.paid")
    def paid(e: Event) -> None:
        known.append(e.type)

    @router.fallback
    async def other(e: Event) -> None:
        unknown.append(e.type)

    assert await asyncio.to_thread(router.dispatch_sync, event("refund.paid")) is False
    assert await router.dispatch(event("invoice.paid")) is True
    assert unknown == ["refund.paid"]
    assert known == ["invoice.paid"]


def test_dispatch_sync_runs_async_handlers_with_the_runner_given() -> None:
    # How the Django adapter runs them with asgiref's async_to_sync instead of asyncio.run.
    router = Router()
    done: list[str] = []
    ran: list[object] = []

    @router.on("invoice.paid")
    async def paid(e: Event) -> None:
        done.append(e.id)

    @router.on("invoice.paid")
    def plain(e: Event) -> None:
        done.append("plain")

    def runner(awaitable: Awaitable[object]) -> object:
        ran.append(awaitable)
        return asyncio.run(wait(awaitable))

    async def wait(awaitable: Awaitable[object]) -> object:
        return await awaitable

    assert router.dispatch_sync(event(), async_runner=runner) is True
    assert done == ["evt_1", "plain"]
    assert len(ran) == 1  # the async handler's alone


async def test_dispatch_sync_inside_a_running_loop_refuses_async_handlers_clearly() -> None:
    router = Router()

    @router.on("invoice.paid")
    async def paid(e: Event) -> None:
        raise AssertionError("must not run")

    with pytest.raises(RuntimeError, match=r"await router\.dispatch"):
        router.dispatch_sync(event())


@pytest.mark.parametrize("bad", ["", None, 3])
def test_event_types_must_be_non_empty_strings(bad: object) -> None:
    router = Router()
    with pytest.raises(ValueError, match="non-empty string"):
        router.on(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string"):
        router.add(bad, print)  # type: ignore[arg-type]


def test_on_needs_a_type_and_handlers_must_be_callable() -> None:
    router = Router()
    with pytest.raises(ValueError, match="at least one event type"):
        router.on()
    with pytest.raises(TypeError, match="callable"):
        router.add("invoice.paid", "not a function")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        router.fallback(42)  # type: ignore[type-var]


# -- the receiver package's public face ----------------------------------------------------


def test_every_public_name_is_importable_and_listed_once() -> None:
    import ascend_webhooks.receiver as receiver

    assert len(set(receiver.__all__)) == len(receiver.__all__)
    for name in receiver.__all__:
        assert getattr(receiver, name) is not None, name
    public = {n for n in vars(receiver) if not n.startswith("_") and n != "annotations"}
    modules = {"router", "idempotency", "contrib"}
    assert public - modules - set(receiver.__all__) == set()


def test_importing_the_receiver_imports_no_web_framework_nor_redis() -> None:
    code = (
        "import sys, ascend_webhooks, ascend_webhooks.receiver, ascend_webhooks.receiver.contrib\n"
        "heavy = {'fastapi', 'starlette', 'flask', 'werkzeug', 'django', 'redis', 'anyio'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_python_blocks_of_the_receiving_guide_compile() -> None:
    guide = Path(__file__).resolve().parents[2] / "docs" / "receiving.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 8
    for block in blocks:
        compile(block, str(guide), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
