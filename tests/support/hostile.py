"""Hostile servers on loopback, for the tests of what regsweep sends where (tests/test_registry_hostile.py).

    Recorder("127.0.0.2")        "another host": records every request (method, path, headers) and
                                 answers with `respond(request) -> (status, body, headers)` (default 200 {})
    Front(upstream)              a proxy in front of a real registry or fake API whose rules answer
                                 a request themselves or rewrite the upstream's answer:
                                     front.answer("GET", r"/referrers/", 200, body, {"Link": ...})
                                     front.rewrite("GET", r"/_catalog", lambda ex: ex.headers.append(...))
                                     front.drip("GET", r"/tags/list", every=0.3)   # headers, then a byte at a time
                                     front.answer(..., chunked=True)   # no Content-Length; rule.sent counts
                                                                       # the bytes the client took before hanging up
    tls_context(ca, hosts)       a server-side TLS context with a certificate `ca` (trustme) issued for `hosts`

Both bind any loopback address (127.0.0.0/8 is all loopback: 127.0.0.2 is another origin than
127.0.0.1) and serve plain HTTP or, given a TLS context, HTTPS. Every request is recorded with its
headers, so a test can assert that a credential never reached a host.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any, Callable

import httpx

from tests.support.faults import Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass   # a client that hangs up (or refuses our certificate) is what these tests provoke


@dataclass
class Seen:
    """One request a hostile server received."""

    method: str
    path: str
    headers: dict[str, str]


class Hostile:
    """A threading HTTP(S) server on `address` that records what it receives."""

    handler: type[Handler]

    def __init__(self, address: str = "127.0.0.1", tls: ssl.SSLContext | None = None):
        self.address, self.tls = address, tls
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def start(self):
        self._server = _Server((self.address, 0), type("Bound", (self.handler,), {"owner": self}))
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}:{self.port}"

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    def record(self, handler: Handler) -> Seen:
        seen = Seen(handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()})
        with self._lock:
            self.seen.append(seen)
        return seen

    def received(self, text: str) -> bool:
        """Whether `text` appeared in any request line or header this server received."""
        with self._lock:
            return any(text in s.path or any(text in v for v in s.headers.values()) for s in self.seen)

    def credentials_seen(self) -> list[str]:
        """The credential headers (Authorization, PRIVATE-TOKEN, JOB-TOKEN) of every request received."""
        names = ("authorization", "private-token", "job-token")
        with self._lock:
            return [f"{n}: {s.headers[n]}" for s in self.seen for n in names if n in s.headers]


class Recorder(Hostile):
    """Another host: records every request and answers with `respond`."""

    def __init__(self, address: str = "127.0.0.2", tls: ssl.SSLContext | None = None,
                 respond: Callable[[Seen], tuple[int, Any, dict[str, str]]] | None = None):
        super().__init__(address, tls)
        self.respond = respond or (lambda seen: (200, {}, {}))

    class handler(Handler):
        def _any(self):
            owner: Recorder = self.owner
            self.read_body()
            status, body, headers = owner.respond(owner.record(self))
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.reply(status, data, {"Content-Type": "application/json", **headers})

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any


@dataclass
class Exchange:
    """An answer on its way back through a Front: rules may change any of it."""

    method: str
    path: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def set_header(self, name: str, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()] + [(name, value)]

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @json.setter
    def json(self, doc: Any) -> None:
        self.body = json.dumps(doc).encode()


@dataclass
class Rule:
    method: str | None
    path: re.Pattern
    times: int | None                                   # None: every matching request
    answer: tuple[int, bytes, dict[str, str]] | None = None
    rewrite: Callable[[Exchange], None] | None = None
    drip: float = 0.0
    chunked: bool = False
    hits: int = 0
    sent: int = 0                                       # body bytes written (chunked answers)

    def matches(self, method: str, path: str) -> bool:
        return ((self.times is None or self.hits < self.times) and (self.method in (None, method))
                and self.path.search(path) is not None)


_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "upgrade"}


class Front(Hostile):
    """A proxy in front of `upstream` whose rules answer or rewrite (see the module docstring)."""

    def __init__(self, upstream: str, address: str = "127.0.0.1", tls: ssl.SSLContext | None = None):
        super().__init__(address, tls)
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = []
        self._client = httpx.Client(timeout=60)

    def stop(self) -> None:
        super().stop()
        self._client.close()

    def _add(self, method: str | None, path: str, times: int | None, **kw: Any) -> Rule:
        rule = Rule(method.upper() if method else None, re.compile(path), times, **kw)
        with self._lock:
            self.rules.append(rule)
        return rule

    def answer(self, method: str | None, path: str, status: int, body: Any = b"", headers: dict[str, str] | None = None,
               *, times: int | None = None, chunked: bool = False) -> Rule:
        """Answer matching requests without asking the upstream (`chunked`: without a Content-Length)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self._add(method, path, times, chunked=chunked,
                         answer=(status, data, {"Content-Type": "application/json", **(headers or {})}))

    def rewrite(self, method: str | None, path: str, fn: Callable[[Exchange], None], *, times: int | None = None) -> Rule:
        """Forward matching requests, then let `fn` change the upstream's answer."""
        return self._add(method, path, times, rewrite=fn)

    def drip(self, method: str | None, path: str, every: float, *, times: int | None = None) -> Rule:
        """Forward matching requests, then send the answer's body one byte every `every` seconds."""
        return self._add(method, path, times, drip=every)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        rx = re.compile(path) if path else None
        with self._lock:
            return sum(1 for s in self.seen if method in (None, s.method) and (rx is None or rx.search(s.path)))

    def _rule(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    return rule
        return None

    class handler(Handler):
        def _any(self):
            front: Front = self.owner
            body = self.read_body()
            front.record(self)
            rule = front._rule(self.command, self.path)
            if rule is not None and rule.answer is not None:
                status, data, headers = rule.answer
                if rule.chunked:
                    return self._chunked(rule, status, data, headers)
                return self.reply(status, data, headers)
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "host"]
            try:
                r = front._client.request(self.command, front.upstream + self.path, headers=headers,
                                          content=body or None)
            except httpx.TransportError as exc:
                return self.reply(502, f"front: upstream unreachable: {exc}".encode())
            ex = Exchange(self.command, self.path, r.status_code,
                          [(k, v) for k, v in r.headers.multi_items() if k.lower() not in _HOP], r.content)
            if rule is not None and rule.rewrite is not None:
                rule.rewrite(ex)
            self.send_response_only(ex.status)
            for k, v in ex.headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(ex.body)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if rule is not None and rule.drip:
                for i in range(len(ex.body)):
                    try:
                        self.wfile.write(ex.body[i:i + 1])
                        self.wfile.flush()
                    except OSError:
                        return   # the client gave up: what a drip test wants
                    time.sleep(rule.drip)
                return
            self.wfile.write(ex.body)

        def _chunked(self, rule: Rule, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response_only(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            step = 64 * 1024
            try:
                for i in range(0, len(data), step):
                    chunk = data[i:i + step]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    rule.sent += len(chunk)
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True   # the client hung up: what a size test wants

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any


def tls_context(ca: Any, *hosts: str) -> ssl.SSLContext:
    """A server TLS context with a certificate the trustme `ca` issued for `hosts`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(ctx)
    return ctx


__all__ = ["Exchange", "Front", "Recorder", "Rule", "Seen", "tls_context"]
