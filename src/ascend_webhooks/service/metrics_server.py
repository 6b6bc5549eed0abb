"""The metrics listener of a ``worker`` process: ``/metrics`` and ``/healthz`` over plain HTTP.

A worker has no API, so without this the counters it keeps (attempts by outcome, attempt
durations; see metrics.py) would never be scraped. It is a small threaded WSGI server from the
standard library around prometheus_client's own exposition app, run on a daemon thread: a
scrape is answered even while the worker's event loop is busy, and it costs the loop nothing.
prometheus_client's ``start_http_server`` answers every path with the metrics; this one also
answers ``/healthz`` and says 404 to anything else.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app

__all__ = ["MetricsServer"]

log = logging.getLogger("ascend_webhooks.service")

StartResponse = Callable[..., Any]
Environ = dict[str, Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the process open
    allow_reuse_address = True


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per scrape: that would be one log line every 15 seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """``/metrics`` (Prometheus text of the process's registry) and ``/healthz``.

    ``/healthz`` is 200 once :attr:`ready` is set (the worker's claim loop runs) and 503 before,
    while the process still waits for its database, and again once it is stopping. Raises
    OSError if it cannot bind.
    """

    def __init__(self, host: str, port: int) -> None:
        self.ready = threading.Event()
        self._metrics = make_wsgi_app(REGISTRY)
        server_class = _IPv6Server if ":" in host else _Server
        self._server = make_server(
            host, port, self._app, server_class=server_class, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-server", daemon=True
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _app(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics(environ, start_response)
            return body
        if path == "/healthz":
            if self.ready.is_set():
                return _text(start_response, "200 OK", b'{"status":"ok"}', "application/json")
            return _text(start_response, "503 Service Unavailable", b"starting\n")
        return _text(start_response, "404 Not Found", b"not found: try /metrics\n")


def _text(
    start_response: StartResponse,
    status: str,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
