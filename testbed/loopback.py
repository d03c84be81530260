"""What every loopback server of the testbed and the tests shares: a free 127.0.0.1 port, the
address clients spell from it, and the in-process HTTP server the fakes are built on.

    free_port       a port nothing listens on now (for servers that need theirs before they start)
    Loopback        `port`, `host` and `url` of anything listening on 127.0.0.1: LocalRegistry,
                    PrefectServer, KubeServer and every LoopbackServer
    LoopbackServer  a threading HTTP server on a free port, started and stopped with its owner;
                    subclasses give a `handler` class (a `Handler`), which reaches them as `self.owner`
    Handler         a request handler with the two helpers every fake needs: `read_body`, `reply`

The fakes themselves live with what they imitate: the Kubernetes API in testbed/kubeapi.py; the
fault proxy, the token issuer and the native registry APIs in tests/support/.
"""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on now; whoever binds it next may still take it first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class Loopback:
    """Anything listening on a 127.0.0.1 port: its address as clients, image references and
    kubeconfigs spell it. `port` is None until the server has one; `scheme` is "https" for TLS."""

    port: int | None = None
    #: raised when the address of a server without a port is asked for
    not_started_error: type[Exception] = RuntimeError

    @property
    def scheme(self) -> str:
        return "http"

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, as it appears in image references."""
        if self.port is None:
            raise self.not_started_error(f"{type(self).__name__} not started")
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (https with TLS), no trailing slash."""
        return f"{self.scheme}://{self.host}"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass  # a client hanging up mid-request is expected in fault tests, not worth a traceback


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, no access log; `owner` is the LoopbackServer it serves."""

    protocol_version = "HTTP/1.1"
    owner: Any = None

    def log_message(self, format, *args):
        pass

    def read_body(self) -> bytes:
        """The request body, by Content-Length or chunked as clients stream uploads."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Answer with exactly these headers and Content-Length (no Server or Date header)."""
        self.send_response_only(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)


class LoopbackServer(Loopback):
    """A threading HTTP server on a free 127.0.0.1 port, started and stopped with its owner.

    Use as a context manager (or `start()`/`stop()`). With `tls` (a server-side SSLContext)
    it serves HTTPS.
    """

    handler: type[Handler]
    _server: ThreadingHTTPServer | None = None
    _tls: ssl.SSLContext | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    def start(self, tls: ssl.SSLContext | None = None):
        """Serve on a free loopback port; over TLS with `tls`."""
        handler = type("BoundHandler", (self.handler,), {"owner": self})
        self._server = _QuietServer((LOOPBACK, 0), handler)
        self._tls = tls
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True,
                                        name=f"{type(self).__name__}:{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; stopping a stopped server does nothing."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
