"""Thin adapters for web frameworks; each module imports its framework, so import only yours.

- :mod:`.fastapi`: FastAPI and any Starlette application (``fastapi`` extra)
- :mod:`.flask`: Flask (``flask`` extra)
- :mod:`.django`: Django (``django`` extra)
"""

__all__: list[str] = []
