"""The dashboard: a static single-page app, mounted at ``/dashboard`` by ``create_app``.

The page is three files (``static/index.html``, ``app.js``, ``style.css``) of plain HTML,
JavaScript and CSS, with nothing to build and nothing fetched from elsewhere. It asks for an API
token, keeps it in ``sessionStorage`` and calls the REST API (``/v1/...``) with
``Authorization: Bearer``, exactly as any other client: the server side here serves files and
knows nothing of tokens. No cookie is ever set, so a cross-site request carries no credential
(no CSRF surface), and no token is ever read from a URL.

:class:`Dashboard` serves those three files from memory instead of Starlette's ``StaticFiles``:
the set of files is fixed, so a whitelist leaves no path to resolve on disk (no traversal, no
directory listing, no file added later served by accident), and every answer, 404s included,
carries the security headers below. Event payloads and endpoint descriptions are attacker
controlled; the script renders every value with ``textContent`` and DOM building, and the
Content-Security-Policy (no inline script or style, same-origin connections only, no framing)
is the second line of defence.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.types import Receive, Scope, Send

__all__ = ["SECURITY_HEADERS", "Dashboard"]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS: dict[str, str] = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",  # frame-ancestors, for browsers that predate it
    "cross-origin-opener-policy": "same-origin",
    # Revalidated on each load, so a new release's page never runs against a stale script.
    "cache-control": "no-cache",
}

# The files served, by their path under the mount, with their media types.
_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def _load() -> dict[str, tuple[bytes, str]]:
    static = files(__name__).joinpath("static")
    return {
        path: (static.joinpath(name).read_bytes(), media_type)
        for path, (name, media_type) in _FILES.items()
    }


class Dashboard:
    """An ASGI app answering ``GET``/``HEAD`` for the dashboard's files, relative to its mount."""

    def __init__(self) -> None:
        self._files = _load()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # a WebSocket: the dashboard has none
            await send({"type": "websocket.close", "code": 1008})
            return
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]  # the path below the mount (Starlette keeps it whole)
        found = self._files.get(path or "/")
        if scope["method"] not in ("GET", "HEAD"):
            status, body, media_type = 405, b"method not allowed\n", "text/plain; charset=utf-8"
            extra = [(b"allow", b"GET, HEAD")]
        elif found is None:
            status, body, media_type = 404, b"not found\n", "text/plain; charset=utf-8"
            extra = []
        else:
            status, (body, media_type), extra = 200, found, []
        headers = [
            (b"content-type", media_type.encode()),
            (b"content-length", str(len(body)).encode()),
            *((name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if scope["method"] == "HEAD":
            body = b""
        await send({"type": "http.response.body", "body": body})
