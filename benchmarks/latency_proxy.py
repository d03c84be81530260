"""A TCP proxy on loopback that puts a round trip of network delay in front of a server.

    .venv/bin/python benchmarks/latency_proxy.py --upstream 127.0.0.1:5000 --delay-ms 25 [--jitter-ms 5]

Prints `listening 127.0.0.1:PORT` once it accepts connections, then forwards bytes both ways
until killed. Every chunk is held for half the delay in each direction (± half the jitter,
uniformly), and chunks of one direction never overtake each other, so one HTTP request and its
answer over a keep-alive connection cost one extra round trip of `delay`, as a registry that far
away would. A new connection pays it too (the upstream connect is delayed). It forwards bytes and
never parses HTTP, so it costs little CPU; run it as its own process (the benchmark does) so that
its CPU is not counted as the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys


class _Delayed:
    """One direction of one connection: writes each chunk `delay` after it was read, in order."""

    def __init__(self, writer: asyncio.StreamWriter, half: float, jitter: float):
        self.writer, self.half, self.jitter = writer, half, jitter
        self.due = 0.0
        self.loop = asyncio.get_running_loop()

    def send(self, data: bytes) -> None:
        delay = max(0.0, self.half + random.uniform(-self.jitter / 2, self.jitter / 2))
        # In order: a chunk is never written before the one read ahead of it.
        self.due = max(self.due, self.loop.time() + delay)
        self.loop.call_at(self.due, self._write, data)

    def close_later(self) -> None:
        self.loop.call_at(max(self.due, self.loop.time()) + 0.001, self._close)

    def _write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def _close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


async def _pump(reader: asyncio.StreamReader, out: _Delayed) -> None:
    try:
        while data := await reader.read(65536):
            out.send(data)
    except (ConnectionError, OSError):
        pass
    out.close_later()


async def serve(upstream: tuple[str, int], delay: float, jitter: float, port: int = 0) -> None:
    half, half_jitter = delay / 2, jitter / 2

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)   # the connect's own round trip
        try:
            up_r, up_w = await asyncio.open_connection(*upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pump(client_r, _Delayed(up_w, half, half_jitter)),
                             _pump(up_r, _Delayed(client_w, half, half_jitter)))

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    host, bound = server.sockets[0].getsockname()[:2]
    print(f"listening {host}:{bound}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the server to put the delay in front of")
    ap.add_argument("--delay-ms", type=float, default=25.0, help="added round-trip time per exchange")
    ap.add_argument("--jitter-ms", type=float, default=0.0, help="round-trip jitter, spread uniformly")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    host, _, port = args.upstream.rpartition(":")
    try:
        asyncio.run(serve((host, int(port)), args.delay_ms / 1000, args.jitter_ms / 1000, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
