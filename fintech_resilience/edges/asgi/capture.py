"""Holding back the response of a request that runs under an idempotency claim, until the claim
is settled: the ASGI idempotency middleware and per-route idempotency (FastAPI's ``Idempotent``)
both send their responses through it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ...idempotency.context import Claim
from ...idempotency.record import StoredResponse
from ...idempotency.store import IdempotencyStore
from ..asgi_types import Message, Send
from ..http import safe_asgi_headers

__all__ = ["ResponseCapture", "SettleOptions"]


class SettleOptions(Protocol):
    """What settling a claim needs from the edge that made it."""

    store: IdempotencyStore
    max_response_bytes: int
    store_status: Callable[[int], bool]
    replay_header_names: frozenset[bytes]


class ResponseCapture:
    """``send`` for the app of a claimed request: the response is held back until it is complete,
    then the claim is completed (a stored status) or released (any other), then the response
    goes out - so a duplicate never sees a key released after its answer. It goes out at the
    app's last body message, not when the app returns: background tasks that run after the
    response do not delay it. A body past ``max_response_bytes`` settles the claim as "not
    replayable" and streams on.
    """

    __slots__ = ("chunks", "claim", "delivered", "options", "size", "start", "streaming",
                 "upstream")

    def __init__(self, options: SettleOptions, claim: Claim, upstream: Send) -> None:
        self.options = options
        self.claim = claim
        self.upstream = upstream
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.streaming = False  # the body passed max_response_bytes: forwarded as it comes
        self.delivered = False  # settled and sent: nothing is left to do

    async def send(self, message: Message) -> None:
        """The app's ``send``."""
        kind = message["type"]
        if kind == "http.response.start":
            self.start = message
            return
        if (kind != "http.response.body" or self.streaming or self.delivered
                or self.start is None):
            await self.upstream(message)
            return
        chunk = message.get("body", b"")
        self.chunks.append(chunk)
        self.size += len(chunk)
        if not message.get("more_body", False):
            await self._deliver(self.start)
            return
        if self.size > self.options.max_response_bytes:
            # too large to store: settle the key now, then stream the rest
            self.streaming = True
            await self._settle(self.start, b"", replayable=False)
            await self.upstream(self.start)
            await self.upstream({"type": "http.response.body", "body": b"".join(self.chunks),
                                 "more_body": True})
            self.chunks.clear()

    async def _deliver(self, start: Message) -> None:
        """The whole response is here: settle the claim, then send it."""
        self.delivered = True
        data = b"".join(self.chunks)
        self.chunks.clear()
        await self._settle(start, data, replayable=self.size <= self.options.max_response_bytes)
        await self.upstream(start)
        await self.upstream({"type": "http.response.body", "body": data, "more_body": False})

    async def finish(self) -> None:
        """The app returned: release the key if it sent no complete response."""
        if not (self.streaming or self.delivered):
            await self.options.store.arelease(self.claim)

    async def fail(self) -> None:
        """The app raised: release the key (a retry runs again), unless it was settled."""
        if not (self.streaming or self.delivered):
            await self.options.store.arelease(self.claim)

    async def _settle(self, start: Message, body: bytes, *, replayable: bool) -> None:
        status = int(start["status"])
        store = self.options.store
        if not self.options.store_status(status):
            await store.arelease(self.claim)
            return
        headers = safe_asgi_headers(start.get("headers", ()), self.options.replay_header_names)
        await store.acomplete(self.claim, StoredResponse(
            "http", status, headers, body if replayable else b"", replayable))
