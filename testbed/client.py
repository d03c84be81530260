"""A synchronous httpx.Client whose requests an httpx.AsyncClient sends, on an event loop of its own.

The push helpers are synchronous, which keeps tests short, while regsweep's ChallengeAuth runs
in async clients only (the product has one auth flow, and the testbed authenticates with that
very flow). `sync_client` joins the two: its transport hands each request to an AsyncClient that
carries the auth, on an event loop running in a thread of its own, and waits for the answer.
Calls from several threads at once (the bulk pushes) all run concurrently on that one loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx


class _AsyncTransport(httpx.BaseTransport):
    """Sends through an httpx.AsyncClient on a private event loop; answers with the raw bytes."""

    def __init__(self, **client_options: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="testbed-http", daemon=True)
        self._thread.start()
        self._client = httpx.AsyncClient(**client_options)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self._client.send(request, stream=True)
        try:
            # Raw bytes with the registry's own headers: the outer client decodes them once.
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        return httpx.Response(response.status_code, headers=response.headers, content=raw, request=request)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return asyncio.run_coroutine_threadsafe(self._send(request), self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def sync_client(base_url: str, *, auth: httpx.Auth, verify: Any = True, timeout: float = 30.0) -> httpx.Client:
    """A plain httpx.Client for `base_url` whose requests go out through an AsyncClient with `auth`."""
    transport = _AsyncTransport(auth=auth, verify=verify, timeout=timeout)
    return httpx.Client(base_url=base_url, transport=transport, timeout=timeout)
