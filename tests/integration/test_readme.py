"""The README's receiver example works as printed: a new user's first contact must not rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from ascend_webhooks import sign

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_starts_with_the_two_commands() -> None:
    lines = [line for line in README.read_text(encoding="utf-8").splitlines() if line.strip()]
    commands = [line.split("#")[0].strip() for line in lines[1:6] if line.startswith("make")]
    assert commands == ["make run", "make test"]


def test_readme_fastapi_receiver(capsys: pytest.CaptureFixture[str]) -> None:
    (block,) = [b for b in _python_blocks() if "FastAPI()" in b]
    namespace: dict[str, object] = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    body = b'{"id":"evt_readme","type":"invoice.paid","data":{"amount":1200}}'
    with TestClient(namespace["app"]) as client:  # type: ignore[arg-type]
        good = client.post("/webhooks", content=body, headers=sign(body, "whsec_..."))
        bad = client.post("/webhooks", content=body, headers=sign(body, "whsec_wrong"))
    assert good.status_code == 200
    assert bad.status_code == 401
    assert "paid: evt_readme {'amount': 1200}" in capsys.readouterr().out
