"""The JSON response class of the API: orjson, UTC times with a ``Z``.

FastAPI's own ``ORJSONResponse`` is deprecated in favour of response models; the routes here
build plain dicts (see :mod:`.schemas`) and render them directly, which is both faster and
keeps the rendered bytes under our control.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette import responses

__all__ = ["NO_STORE", "JSONResponse"]

#: The headers of an answer that carries a secret shown once (a token, a webhook key): no
#: cache on its way, a browser's included, may keep it (RFC 9111, section 5.2.2.5).
NO_STORE = {"Cache-Control": "no-store"}


class JSONResponse(responses.JSONResponse):
    """``application/json`` rendered by orjson (aware datetimes as ISO 8601 with ``Z``)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_UTC_Z)
