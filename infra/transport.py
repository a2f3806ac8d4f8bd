"""An httpx transport with one keep-alive connection per call slot.

httpcore's connection pool rescans all its connections, and probes each idle one with a
poll(), every time a request starts or ends: with 32 calls in flight that scan cost more
CPU than everything else ar does for a page. Here each slot owns a pool of one connection,
so each scan sees one. A slot is taken when a request is sent and given back when its
response is closed, so no two calls ever share a connection.
"""
from __future__ import annotations

import asyncio

import httpx


class SlotTransport(httpx.AsyncBaseTransport):
    def __init__(self, slots: int):
        tls = httpx.create_ssl_context()  # one for all: loading the CA store takes ~20 ms
        self._all = [httpx.AsyncHTTPTransport(verify=tls, limits=httpx.Limits(max_connections=1))
                     for _ in range(slots)]
        self._free: asyncio.Queue[httpx.AsyncHTTPTransport] = asyncio.Queue()
        for transport in self._all:
            self._free.put_nowait(transport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = await self._free.get()
        try:
            response = await transport.handle_async_request(request)
        except BaseException:
            self._free.put_nowait(transport)
            raise
        response.stream = _GivesBack(response.stream, lambda: self._free.put_nowait(transport))
        return response

    async def aclose(self) -> None:
        for transport in self._all:
            await transport.aclose()


class _GivesBack(httpx.AsyncByteStream):
    """A response body that frees its slot when closed (read to the end, or abandoned)."""

    def __init__(self, stream, give_back):
        self._stream, self._give_back = stream, give_back

    async def __aiter__(self):
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._give_back is not None:
                self._give_back, give_back = None, self._give_back
                give_back()
