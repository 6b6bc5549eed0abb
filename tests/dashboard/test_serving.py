"""The dashboard as the API process serves it: its files, its headers, where it is mounted.

Through the whole application ``create_app`` builds (``FastPublish`` in front, the framework's
middleware behind), without the delivery worker, as ``serve --no-delivery`` runs it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from importlib.resources import files
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from ascend_webhooks.service.app import create_app
from tests.support.api import ADMIN, ADMIN_TOKEN, api_settings

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
STATIC = files("ascend_webhooks.service.dashboard").joinpath("static")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(sqlite_url: str) -> Iterator[TestClient]:
    app = create_app(api_settings(sqlite_url), run_delivery=False)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield client


def assert_security_headers(headers: Mapping[str, str]) -> None:
    get = headers.get
    assert get("content-security-policy") == CSP
    assert get("x-content-type-options") == "nosniff"
    assert get("referrer-policy") == "no-referrer"
    assert get("x-frame-options") == "DENY"
    assert get("set-cookie") is None


def test_the_index_is_served_with_a_strict_policy(client: TestClient) -> None:
    response = client.get("/dashboard/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert_security_headers(response.headers)
    assert '<script src="app.js" defer></script>' in response.text
    assert '<link rel="stylesheet" href="style.css">' in response.text
    assert response.content == STATIC.joinpath("index.html").read_bytes()


@pytest.mark.parametrize(
    ("path", "name", "media_type"),
    [
        ("/dashboard/index.html", "index.html", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/style.css", "style.css", "text/css; charset=utf-8"),
    ],
)
def test_each_file_has_its_media_type(
    client: TestClient, path: str, name: str, media_type: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.content == STATIC.joinpath(name).read_bytes()
    assert_security_headers(response.headers)
    head = client.head(path)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(response.content))


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/nope.js",
        "/dashboard/static/app.js",
        "/dashboard/__init__.py",
        "/dashboard/%2e%2e/app.py",
        "/dashboard/app.js/",
    ],
)
def test_only_the_dashboards_own_files_are_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/plain")
    assert_security_headers(response.headers)


def test_other_methods_are_refused(client: TestClient) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = client.request(method, "/dashboard/", headers=ADMIN, json={})
        assert response.status_code == 405, method
        assert response.headers["allow"] == "GET, HEAD"
        assert_security_headers(response.headers)


def test_a_websocket_is_closed(client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/dashboard/"):
        pass
    assert closed.value.code == 1008


def test_the_root_and_the_bare_mount_lead_to_the_dashboard(client: TestClient) -> None:
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 302
    assert root.headers["location"] == "/dashboard/"
    bare = client.get("/dashboard", follow_redirects=False)
    assert bare.status_code in (307, 308)
    assert bare.headers["location"].endswith("/dashboard/")
    assert client.get("/").text == client.get("/dashboard/").text


def test_the_front_for_publishes_passes_the_dashboard_through(client: TestClient) -> None:
    """FastPublish answers publishes itself; the same app still serves the dashboard, even to
    requests that carry a token and a JSON body as publishes do."""
    org = client.post("/v1/organizations", json={"name": "Acme"}, headers=ADMIN).json()["id"]
    published = client.post(
        f"/v1/organizations/{org}/events", json={"type": "invoice.paid", "data": {}}, headers=ADMIN
    )
    assert published.status_code == 202, published.text
    page = client.get("/dashboard/", headers=ADMIN)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    refused = client.post(
        f"/dashboard/v1/organizations/{org}/events",
        json={"type": "invoice.paid", "data": {}},
        headers=ADMIN,
    )
    assert refused.status_code == 405
    events = client.get(f"/v1/organizations/{org}/events", headers=ADMIN).json()["data"]
    assert len(events) == 1  # nothing under /dashboard published anything


def test_a_token_in_the_url_is_never_accepted(client: TestClient) -> None:
    for query in (f"access_token={ADMIN_TOKEN}", f"token={ADMIN_TOKEN}"):
        response = client.get(f"/v1/organizations?{query}")
        assert response.status_code == 401
    # The page is the same whatever the URL carries: nothing in it is read by the server.
    assert client.get(f"/dashboard/?token={ADMIN_TOKEN}").text == client.get("/dashboard/").text
    script = STATIC.joinpath("app.js").read_text()
    assert "location.search" not in script
    assert "document.cookie" not in script


def test_the_dashboard_is_not_part_of_the_api_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/dashboard")]


def test_the_page_has_no_inline_code_and_the_script_no_html_sinks() -> None:
    """What the CSP forbids must not be needed (inline code would just not run), and data
    must never be parsed as HTML: the script builds nodes and sets text only."""
    html = STATIC.joinpath("index.html").read_text()
    for tag in re.findall(r"<script\b[^>]*>(.*?)</script>", html, flags=re.S):
        assert tag == "", "inline script"
    assert all(" src=" in tag for tag in re.findall(r"<script\b[^>]*>", html))
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=|javascript:", html, flags=re.I)
    script = STATIC.joinpath("app.js").read_text()
    sinks = r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|srcdoc"
    assert not re.search(sinks, script)
    assert not re.search(r"@import|url\(", STATIC.joinpath("style.css").read_text())
    # The one absolute URL is the endpoint form's placeholder: nothing is fetched from elsewhere.
    assert re.findall(r"https?://[^\s\"]*", script) == ["https://hooks.example.com/ascend"]


def test_the_files_ship_in_the_wheel() -> None:
    """The wheel packs the whole package directory, data files included (hatch); nothing in
    .gitignore (which hatch honours) excludes the dashboard's files."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == [
        "src/ascend_webhooks"
    ]
    static = ROOT / "src/ascend_webhooks/service/dashboard/static"
    assert sorted(p.name for p in static.iterdir()) == ["app.js", "index.html", "style.css"]
    ignored = (ROOT / ".gitignore").read_text().split()
    assert not [rule for rule in ignored if rule.endswith((".js", ".css", ".html", "static/"))]
