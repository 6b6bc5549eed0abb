"""The framework's own floor: a FastAPI hello-world that parses a JSON POST and answers JSON.

``publish.py`` drives it with the same wrk script and the same uvicorn settings as
``ascend-webhooks serve`` (uvloop, httptools, no access log), so the publish figure can be read
against what FastAPI itself can do on this machine, measured in the same run.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Event(BaseModel):
    """The same body shape as a publish call, validated the same way a route would."""

    type: str
    data: dict[str, Any]
    id: str | None = None


@app.post("/hello", status_code=202)
async def hello(event: Event) -> dict[str, str | None]:
    """Answer 202 with the id, as publish does, without storing anything."""
    return {"id": event.id, "type": event.type}
