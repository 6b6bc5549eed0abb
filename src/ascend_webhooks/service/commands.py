"""The service sub-commands of ``ascend-webhooks``: ``serve``, ``worker`` and ``migrate``.

Configuration comes from the ``ASCEND_WEBHOOKS_*`` environment (see docs/operating.md); a bad
value ends the command with status 2 and a one-line reason on stderr, never a traceback. Logs
go to stderr; stdout carries only what the operator must copy (the first admin token).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from typing import Any

from .crypto import MasterKeyError, SecretBox, load_secret_box
from .settings import Settings, SettingsError

__all__ = ["register_service"]

log = logging.getLogger("ascend_webhooks.service")

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StartupError(Exception):
    """A configuration problem that ends the command with a one-line message."""


def register_service(sub: Any) -> None:
    """Add ``serve``, ``worker`` and ``migrate`` to the CLI's sub-parsers."""
    serve = sub.add_parser("serve", help="run the HTTP API and the delivery workers")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument(
        "--no-delivery", action="store_true", help="serve the API only; run workers elsewhere"
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    _database_option(serve)
    serve.set_defaults(handler=_serve)

    worker = sub.add_parser("worker", help="run delivery workers only")
    _database_option(worker)
    worker.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="attempts in flight at once in this process",
    )
    worker.set_defaults(handler=_worker)

    migrate = sub.add_parser("migrate", help="create or upgrade the database schema, then exit")
    _database_option(migrate)
    migrate.set_defaults(handler=_migrate)


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help="sqlite:///PATH or postgresql://… (default: $ASCEND_WEBHOOKS_DATABASE_URL)",
    )


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT, stream=sys.stderr)


def _fail(message: str) -> int:
    print(f"ascend-webhooks: error: {message}", file=sys.stderr, flush=True)
    return 2


def _prepare(args: argparse.Namespace) -> tuple[Settings, SecretBox]:
    """Settings and secret box for a command; _StartupError with the reason otherwise."""
    from ..store import open_store

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise _StartupError(str(exc)) from None
    if args.database_url:
        settings = dataclasses.replace(settings, database_url=args.database_url)
    try:
        open_store(settings.database_url)  # validates the URL; opens nothing
    except ValueError as exc:
        raise _StartupError(str(exc)) from None
    try:
        box = load_secret_box(settings)
    except MasterKeyError as exc:
        raise _StartupError(str(exc)) from None
    return settings, box


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is part of the server extra
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    try:
        settings, box = _prepare(args)
    except _StartupError as exc:
        return _fail(str(exc))
    if not 0 <= args.port <= 65535:
        return _fail(f"--port {args.port} is not a TCP port")
    _configure_logging()
    app = create_app(settings, run_delivery=not args.no_delivery, secret_box=box)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=args.access_log,
        server_header=False,
    )
    server = uvicorn.Server(config)
    # Uvicorn handles SIGINT/SIGTERM (stop accepting, finish requests, run the shutdown, which
    # drains the worker), then re-raises the signal to the handlers it found at start. A
    # graceful stop is a success, so those handlers only note it: the exit status stays 0.
    stopped_by: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, _frame: stopped_by.append(number))
    server.run()
    if stopped_by:
        log.info("stopped by %s", signal.Signals(stopped_by[0]).name)
    return 0 if server.started else 1


def _migrate(args: argparse.Namespace) -> int:
    from ..store import open_store

    try:
        settings, _ = _prepare(args)
    except _StartupError as exc:
        return _fail(str(exc))
    _configure_logging()

    async def migrate() -> None:
        store = open_store(settings.database_url)
        await store.open()  # applies pending migrations
        await store.close()

    with _runner() as runner:
        runner.run(migrate())
    log.info("the database schema is up to date")
    return 0


def _worker(args: argparse.Namespace) -> int:
    try:
        settings, box = _prepare(args)
    except _StartupError as exc:
        return _fail(str(exc))
    if args.concurrency is not None and args.concurrency < 1:
        return _fail("--concurrency must be at least 1")
    _configure_logging()
    with _runner() as runner:
        runner.run(_run_worker(settings, box, args.concurrency))
    return 0


async def _run_worker(settings: Settings, box: SecretBox, concurrency: int | None) -> None:
    from ..delivery.worker import Worker
    from ..store import open_store

    store = open_store(settings.database_url)
    await store.open()
    try:
        kwargs: dict[str, Any] = {}
        if concurrency is not None:
            kwargs["concurrency"] = concurrency
        worker = Worker(store, settings, box.decrypt, **kwargs)
        loop = asyncio.get_running_loop()

        def request_stop() -> None:
            log.info("stopping: finishing the attempts in flight")
            worker.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, request_stop)
        log.info("delivery worker running on %s", _redacted(settings.database_url))
        await worker.run()
    finally:
        await store.close()


def _redacted(url: str) -> str:
    """The database URL without its password, for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
