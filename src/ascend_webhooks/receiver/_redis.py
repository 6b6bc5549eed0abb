"""Idempotency across machines: one Redis key per event id (``redis`` extra, redis-py).

A claim is ``SET key "p:<token>" NX PX <processing_ttl>``, a token for that claim alone:
Redis makes it atomic and expires an abandoned claim by itself. ``complete`` overwrites the
key with ``"d"`` for ``done_ttl``; ``release`` deletes it only if it still holds the token of
the claim being released (a compare-and-delete Lua script, since a plain DEL could erase the
claim another delivery took over after our lease ran out; see ``ClaimTokens``).
redis-py is imported only when a store is built from a URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._claims import DEFAULT_DONE_TTL, DEFAULT_PROCESSING_TTL, Claim, ClaimTokens, check_ttls

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["AsyncRedisIdempotencyStore", "RedisIdempotencyStore"]

DEFAULT_PREFIX = "ascend-webhooks:event:"
_DONE = "d"
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class _RedisSettings:
    def __init__(self, prefix: str, processing_ttl: float, done_ttl: float) -> None:
        check_ttls(processing_ttl, done_ttl)
        if not isinstance(prefix, str):
            raise TypeError("prefix must be a str")
        self.prefix = prefix
        # Milliseconds (PX), so that sub-second leases work too.
        self.processing_ms = max(1, round(processing_ttl * 1000))
        self.done_ms = max(1, round(done_ttl * 1000))

    def key(self, event_id: str) -> str:
        return self.prefix + event_id

    @staticmethod
    def taken(value: Any) -> Claim | None:
        """What an existing value means; None if the key vanished (expired) meanwhile."""
        if value is None:
            return None
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return Claim.DONE if text == _DONE else Claim.IN_PROGRESS


class RedisIdempotencyStore:
    """Event ids in Redis, for a blocking ``redis.Redis`` client (Flask, Django)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        processing_ttl: float = DEFAULT_PROCESSING_TTL,
        done_ttl: float = DEFAULT_DONE_TTL,
    ) -> None:
        self._client = client
        self._settings = _RedisSettings(prefix, processing_ttl, done_ttl)
        self._release = client.register_script(_RELEASE)
        self._tokens = ClaimTokens()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisIdempotencyStore:
        """A store on a new client for ``url`` (``redis://host:6379/0``)."""
        import redis as redis_py  # the optional extra: imported only when asked for

        return cls(redis_py.Redis.from_url(url), **options)

    def claim(self, event_id: str) -> Claim:
        """Atomically take ``event_id`` if nobody holds it and it was not handled."""
        s = self._settings
        key = s.key(event_id)
        token = self._tokens.new(event_id)
        try:
            while True:
                if self._client.set(key, "p:" + token, nx=True, px=s.processing_ms):
                    return Claim.ACQUIRED
                taken = s.taken(self._client.get(key))
                if taken is not None:
                    self._tokens.forget(event_id, token)
                    return taken
        except BaseException:
            self._tokens.forget(event_id, token)
            raise

    def complete(self, event_id: str) -> None:
        """Mark ``event_id`` handled: later claims return :attr:`Claim.DONE`."""
        s = self._settings
        self._tokens.end(event_id)
        self._client.set(s.key(event_id), _DONE, px=s.done_ms)

    def release(self, event_id: str) -> None:
        """Drop this store's oldest "processing" claim on ``event_id`` (if it still holds it)
        so a retry can take it."""
        token = self._tokens.end(event_id)
        if token is not None:
            self._release(keys=[self._settings.key(event_id)], args=["p:" + token])

    def close(self) -> None:
        """Close the Redis client."""
        self._client.close()


class AsyncRedisIdempotencyStore:
    """Event ids in Redis, for a ``redis.asyncio.Redis`` client (Starlette, FastAPI)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        processing_ttl: float = DEFAULT_PROCESSING_TTL,
        done_ttl: float = DEFAULT_DONE_TTL,
    ) -> None:
        self._client = client
        self._settings = _RedisSettings(prefix, processing_ttl, done_ttl)
        self._release = client.register_script(_RELEASE)
        self._tokens = ClaimTokens()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncRedisIdempotencyStore:
        """A store on a new asyncio client for ``url`` (``redis://host:6379/0``)."""
        import redis.asyncio as redis_asyncio  # the optional extra

        return cls(redis_asyncio.Redis.from_url(url), **options)

    async def claim(self, event_id: str) -> Claim:
        """Atomically take ``event_id`` if nobody holds it and it was not handled."""
        s = self._settings
        key = s.key(event_id)
        token = self._tokens.new(event_id)
        try:
            while True:
                if await self._client.set(key, "p:" + token, nx=True, px=s.processing_ms):
                    return Claim.ACQUIRED
                taken = s.taken(await self._client.get(key))
                if taken is not None:
                    self._tokens.forget(event_id, token)
                    return taken
        except BaseException:
            self._tokens.forget(event_id, token)
            raise

    async def complete(self, event_id: str) -> None:
        """Mark ``event_id`` handled: later claims return :attr:`Claim.DONE`."""
        s = self._settings
        self._tokens.end(event_id)
        await self._client.set(s.key(event_id), _DONE, px=s.done_ms)

    async def release(self, event_id: str) -> None:
        """Drop this store's oldest "processing" claim on ``event_id`` (if it still holds it)
        so a retry can take it."""
        token = self._tokens.end(event_id)
        if token is not None:
            await self._release(keys=[self._settings.key(event_id)], args=["p:" + token])

    async def aclose(self) -> None:
        """Close the Redis client."""
        await self._client.aclose()
