"""The service sub-commands of ``ascend-webhooks``: ``serve``, ``worker`` and ``migrate``.

Configuration comes from the ``ASCEND_WEBHOOKS_*`` environment (see docs/operating.md); a bad
value ends the command with status 2 and a one-line reason on stderr, never a traceback. Every
command waits for a database that does not answer yet (``startup.py``), up to the start-up
timeout; a database that cannot be opened ends it with status 1, also in one line. Logs go to
stderr; stdout carries only what the operator must copy (the first admin token).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Coroutine
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from ..store import Store
from .crypto import MasterKeyError, SecretBox, load_secret_box, upgrade_stored_keys
from .processes import METRICS_PORT_ENV, DeliveryProcesses, watch_parent
from .settings import Settings, SettingsError
from .startup import StartupError, open_store_waiting

if TYPE_CHECKING:  # imported when used: the server's modules are an optional extra
    from .metrics_server import MetricsServer

__all__ = ["register_service"]

log = logging.getLogger("ascend_webhooks.service")

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: How long ``serve``, once told to stop, waits for requests in progress (a client that stalls
#: mid-request would hold it forever); the requests still open after it are cancelled.
_GRACEFUL_SHUTDOWN_SECONDS = 5


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
    serve.add_argument(
        "--delivery-processes",
        type=int,
        default=None,
        metavar="N",
        help="also run N worker processes on the same database, to use more cores "
        "(default: $ASCEND_WEBHOOKS_DELIVERY_PROCESSES, else 0)",
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
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics and /healthz on this port "
        f"(default: ${METRICS_PORT_ENV}; none if unset)",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics listener (default 127.0.0.1)",
    )
    # Given by `serve --delivery-processes` to its children: stop once that process is gone.
    worker.add_argument("--stop-with-parent", type=int, default=None, help=argparse.SUPPRESS)
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


def _fail(message: str, status: int = 2) -> int:
    print(f"ascend-webhooks: error: {message}", file=sys.stderr, flush=True)
    return status


async def _open_store(settings: Settings) -> Store | None:
    """The opened store, once the database answers; None if stopped (SIGTERM) meanwhile.

    Raises StartupError (see startup.py). The signal handlers are removed again before the
    command installs its own.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        store = await open_store_waiting(settings.database_url, settings.startup_timeout, stop=stop)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    if store is None:
        log.info("stopped before the database answered")
    return store


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine; a database that cannot be opened is one line, status 1."""
    with _runner() as runner:
        try:
            return runner.run(main)
        except StartupError as exc:
            return _fail(str(exc), status=1)


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
    # The arguments first: a refused command leaves nothing behind (no master key file).
    if not 0 <= args.port <= 65535:
        return _fail(f"--port {args.port} is not a TCP port")
    if args.delivery_processes is not None and args.delivery_processes < 0:
        return _fail("--delivery-processes must be 0 or more")
    # Then the port, bound before anything starts (uvicorn bound it only after the database
    # was opened and the worker started, and exited 3 with its own line): a port already
    # taken is a configuration mistake, reported in one line, as `worker` does for metrics.
    try:
        listener = _listen(args.host, args.port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return _fail(f"cannot listen on {args.host}:{args.port}: {reason}")
    with listener:
        return _serve_on(listener, args)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def _serve_on(listener: socket.socket, args: argparse.Namespace) -> int:
    try:
        settings, box = _prepare(args)
    except _StartupError as exc:
        return _fail(str(exc))
    if args.delivery_processes is not None:
        settings = dataclasses.replace(settings, delivery_processes=args.delivery_processes)
    if settings.delivery_processes:
        # The delivery processes serve their metrics from this port up (see processes.py).
        try:
            first = _metrics_port(None)
        except _StartupError as exc:
            return _fail(str(exc))
        if first is not None and first + settings.delivery_processes - 1 > 65535:
            return _fail(
                f"{METRICS_PORT_ENV} {first}: {settings.delivery_processes} delivery processes "
                "need that many ports up to 65535"
            )
    _configure_logging()
    return _run(_run_server(settings, box, args, listener))


async def _run_server(
    settings: Settings, box: SecretBox, args: argparse.Namespace, listener: socket.socket
) -> int:
    import uvicorn

    from .app import create_app

    # Opened before the server, so that a database still down is waited for here, in one
    # log line per try, instead of failing the application's start-up with a traceback.
    store = await _open_store(settings)
    if store is None:
        return 0
    processes = None
    if settings.delivery_processes:
        # Started by the lifespan once the schema is migrated and the admin token made.
        processes = DeliveryProcesses(
            settings.delivery_processes,
            settings.database_url,
            stop_timeout=settings.attempt_timeout + 15.0,
        )
    app = create_app(
        settings,
        store=store,
        run_delivery=not args.no_delivery,
        secret_box=box,
        delivery_processes=processes,
    )
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
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
    )
    loop = asyncio.get_running_loop()

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            # At once, not at the lifespan's end, which waits for the requests in progress: the
            # worker stops claiming, and the children are known to be stopping when systemd
            # signals them too. (A signal handler: the call is made by the loop.)
            loop.call_soon_threadsafe(app.stop_delivery)

    server = Server(config)
    # Uvicorn logs each request it cancels at the end of the graceful shutdown with the
    # traceback of its cancellation, after one line that says how many: that line is enough.
    quiet = _CancelledAtShutdown(server)
    logging.getLogger("uvicorn.error").addFilter(quiet)
    # Uvicorn handles SIGINT/SIGTERM (stop accepting, finish requests, run the shutdown, which
    # drains the worker), then re-raises the signal to the handlers it found at start. A
    # graceful stop is a success, so those handlers only note it: the exit status stays 0.
    stopped_by: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, _frame: stopped_by.append(number))
    host, port = listener.getsockname()[:2]
    log.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)
    try:
        await server.serve(sockets=[listener])
    except SystemExit:  # uvicorn's way out of a failed start-up, which it logged above
        return _fail("serve did not start (see the log above)", status=1)
    finally:
        logging.getLogger("uvicorn.error").removeFilter(quiet)
        await store.close()
    if stopped_by:
        log.info("stopped by %s", signal.Signals(stopped_by[0]).name)
    return 0 if server.started else 1


class _CancelledAtShutdown(logging.Filter):
    def __init__(self, server: Any) -> None:
        super().__init__()
        self._server = server

    def filter(self, record: logging.LogRecord) -> bool:
        cancelled = record.exc_info is not None and isinstance(
            record.exc_info[1], asyncio.CancelledError
        )
        return not (cancelled and self._server.should_exit)


def _migrate(args: argparse.Namespace) -> int:
    try:
        settings, box = _prepare(args)
    except _StartupError as exc:
        return _fail(str(exc))
    _configure_logging()

    async def migrate() -> int:
        store = await _open_store(settings)  # opening applies pending migrations
        if store is None:
            return 0
        try:
            await upgrade_stored_keys(store, box)
        finally:
            await store.close()
        log.info("the database schema is up to date")
        return 0

    return _run(migrate())


def _worker(args: argparse.Namespace) -> int:
    # The arguments first: a refused command leaves nothing behind (no master key file).
    if args.concurrency is not None and args.concurrency < 1:
        return _fail("--concurrency must be at least 1")
    try:
        port = _metrics_port(args.metrics_port)
        settings, box = _prepare(args)
    except _StartupError as exc:
        return _fail(str(exc))
    _configure_logging()
    metrics = None
    if port is not None:
        # Bound before the database is opened: a port already taken is a configuration
        # mistake, reported at once in one line, not after the wait for the database.
        from .metrics_server import MetricsServer

        try:
            metrics = MetricsServer(args.metrics_host, port)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            return _fail(f"cannot serve metrics on {args.metrics_host}:{port}: {reason}")
        metrics.start()
        log.info("metrics at http://%s:%d/metrics", args.metrics_host, port)
    try:
        return _run(_run_worker(settings, box, args.concurrency, metrics, args.stop_with_parent))
    finally:
        if metrics is not None:
            metrics.close()


def _metrics_port(option: int | None) -> int | None:
    """``--metrics-port``, else ``$ASCEND_WEBHOOKS_METRICS_PORT``; None when neither is set."""
    if option is not None:
        port, source = option, "--metrics-port"
    else:
        text = os.environ.get(METRICS_PORT_ENV, "").strip()
        if not text:
            return None
        source = METRICS_PORT_ENV
        try:
            port = int(text)
        except ValueError:
            raise _StartupError(f"{source}: {text!r} is not a TCP port") from None
    if not 1 <= port <= 65535:
        raise _StartupError(f"{source} {port} is not a TCP port (1-65535)")
    return port


async def _run_worker(
    settings: Settings,
    box: SecretBox,
    concurrency: int | None,
    metrics: MetricsServer | None = None,
    parent_pid: int | None = None,
) -> int:
    from ..delivery.worker import Worker

    store = await _open_store(settings)
    if store is None:
        return 0
    try:
        await upgrade_stored_keys(store, box)  # this worker refuses keys not yet upgraded
        kwargs: dict[str, Any] = {}
        if concurrency is not None:
            kwargs["concurrency"] = concurrency
        worker = Worker(store, settings, box.decrypt, **kwargs)
        loop = asyncio.get_running_loop()

        def request_stop() -> None:
            log.info("stopping: finishing the attempts in flight")
            if metrics is not None:
                metrics.ready.clear()  # /healthz says 503 while the worker drains
            worker.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, request_stop)
        log.info("delivery worker running on %s", _redacted(settings.database_url))
        if metrics is not None:
            metrics.ready.set()
        watcher = None
        if parent_pid is not None:
            watcher = asyncio.create_task(watch_parent(parent_pid, request_stop))
        try:
            await worker.run()
        finally:
            if watcher is not None:
                watcher.cancel()
    finally:
        await store.close()
    return 0


#: Query parameters that carry a secret: libpq (and asyncpg) take the password, and the
#: passphrase of the client's TLS key, from the URL's query as well as its user info.
_SECRET_PARAMETERS = frozenset(("password", "sslpassword"))
_AUTHORITY_END = re.compile(r"[/?#]")


def _redacted(url: str) -> str:
    """The database URL without its secrets, for logs: the password of its user info and the
    value of every ``password`` and ``sslpassword`` query parameter are ``***``.

    Taken apart by hand, where the drivers' URL parsing ends each part: urllib's would not put
    ``sqlite:///path`` back together (it drops the empty host's ``//``)."""
    scheme, slashes, rest = url.partition("://")
    if not slashes:
        return _redacted_query(url)
    end = _AUTHORITY_END.search(rest)
    authority, rest = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    user, at, host = authority.rpartition("@")
    if ":" in user:
        user = user.partition(":")[0] + ":***"
    return f"{scheme}://{user}{at}{host}{_redacted_query(rest)}"


def _redacted_query(text: str) -> str:
    """``text`` (a URL's path onwards) with the values of its secret query parameters hidden."""
    before, question, after = text.partition("?")
    if not question:
        return text
    query, hash_mark, fragment = after.partition("#")
    pieces = []
    for piece in query.split("&"):
        name, equals, _ = piece.partition("=")
        # Compared as the drivers read it: percent-decoded (``pass%77ord`` is ``password``).
        if equals and unquote_plus(name).strip().lower() in _SECRET_PARAMETERS:
            piece = f"{name}=***"
        pieces.append(piece)
    return f"{before}?{'&'.join(pieces)}{hash_mark}{fragment}"
