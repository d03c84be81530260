"""A fault-injecting HTTP proxy on loopback, for any upstream: the registry, the Kubernetes API.

    proxy = FaultProxy(upstream_url).start()            # point the client at proxy.url
    proxy.inject(503, every=3)                          # every 3rd request → 503
    proxy.inject(429, retry_after=1, every=4, path="/manifests/")
    proxy.inject(500, times=None, method="GET", path=r"/tags/list")   # every matching request, until clear()
    proxy.inject(drop=True, every=5)                    # connection closed, no answer
    proxy.inject(truncate=True, every=5)                # full Content-Length announced, half the body sent
    proxy.inject(slow=3.0, every=5)                     # forwarded, answered 3 s later (past a 1 s timeout)
    proxy.inject(delay=0.5, times=None, method="DELETE")   # wait, then forward: slow but within time
    proxy.hold(method="DELETE"); ...; proxy.release()   # matching requests wait at the gate until released
    proxy.count("DELETE", r"/manifests/"), proxy.faulted, proxy.faults()

`path` is a regex searched in the request path with its query string; `method` an exact method.
Rules are tried in the order they were added. A rule with `times=N` faults its next N matching
requests; with `every=N` it faults every Nth matching request — except that a request (same
method and path) this rule has already faulted is let through and the fault passes to the next
one, so a client that retries always gets through: the fault is intermittent, as behind a flaky
load balancer, and a run's outcome does not depend on how concurrent requests interleave.
Requests no rule faults are forwarded as they are.

`ServingProxy` is a FaultProxy that answers some paths itself with fixed manifests.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tasks.oci.manifest import sha256_digest
from testbed.loopback import Handler, LoopbackServer


@dataclass
class FaultRule:
    """One kind of fault for the requests a method and path regex select."""

    status: int | None
    method: str | None
    path: re.Pattern | None
    remaining: int | None              # None = until cleared (with `every`: no limit)
    retry_after: str | None = None
    drop: bool = False
    truncate: bool = False
    slow: float = 0.0                  # forward, then answer this much later
    delay: float = 0.0                 # wait this much, then forward
    body: bytes = b""
    every: int | None = None
    hits: int = 0                      # requests this rule faulted
    seen: int = 0                      # matching requests (for `every`)
    due: bool = False                  # an `every` fault waiting for a request it has not faulted yet
    faulted_keys: set[tuple[str, str]] = field(default_factory=set)

    @property
    def kind(self) -> str:
        if self.drop:
            return "drop"
        if self.truncate:
            return "truncate"
        if self.slow:
            return "slow"
        if self.status is not None:
            return str(self.status)
        return "delay"

    def matches(self, method: str, path: str) -> bool:
        if self.truncate and method != "GET":
            return False  # only a body can be cut short
        return ((self.remaining is None or self.remaining > 0)
                and (self.method is None or self.method == method)
                and (self.path is None or self.path.search(path) is not None))

    def take(self, method: str, path: str) -> bool:
        """Whether this matching request is faulted (and count it)."""
        if self.every is None:
            if self.remaining is not None:
                self.remaining -= 1
            return True
        self.seen += 1
        if self.seen % self.every == 0:
            self.due = True
        if not self.due or (method, path) in self.faulted_keys:
            return False
        self.due = False
        self.faulted_keys.add((method, path))
        if self.remaining is not None:
            self.remaining -= 1
        return True


_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "content-length", "content-encoding"}


class FaultProxy(LoopbackServer):
    """A loopback HTTP proxy that injects faults by rule and counts requests (see the module docstring)."""

    def __init__(self, upstream: str, *, verify: Any = True, timeout: float = 300.0):
        self.upstream = upstream.rstrip("/")
        self.rules: list[FaultRule] = []
        self.requests: list[tuple[str, str]] = []
        self.faulted: list[tuple[str, str, str]] = []   # (method, path, kind)
        self._lock = threading.Lock()
        self._gates: list[tuple[str | None, re.Pattern | None, threading.Event]] = []
        self.held = 0                                   # requests that reached a gate
        self._client = httpx.Client(verify=verify, timeout=timeout)

    def stop(self) -> None:
        self.release()
        super().stop()
        self._client.close()

    def inject(self, status: int | None = None, *, times: int | None = 1, every: int | None = None,
               method: str | None = None, path: str | None = None, retry_after: str | int | None = None,
               drop: bool = False, truncate: bool = False, slow: float = 0.0, delay: float = 0.0,
               body: bytes | str | None = None) -> FaultRule:
        """Add a rule. `times=None` keeps it until `clear()`; with `every`, `times` defaults to no limit."""
        if status is None and not (drop or truncate or slow or delay):
            raise ValueError("inject needs a status, drop=True, truncate=True, slow= or delay=")
        if every is not None:
            if every < 1:
                raise ValueError("every must be at least 1")
            times = None if times == 1 else times
        if body is None and status is not None:
            body = json.dumps({"errors": [{"code": "UNAVAILABLE" if status >= 500 else "TOOMANYREQUESTS",
                                           "message": "injected by FaultProxy"}]})
        rule = FaultRule(status, method.upper() if method else None, re.compile(path) if path else None,
                         times, str(retry_after) if retry_after is not None else None, drop, truncate, slow, delay,
                         body.encode() if isinstance(body, str) else (body or b""), every)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule (counters are kept)."""
        with self._lock:
            self.rules.clear()

    def hold(self, method: str | None = None, path: str | None = None) -> None:
        """Keep matching requests waiting (before forwarding) until `release()`."""
        with self._lock:
            self._gates.append((method.upper() if method else None, re.compile(path) if path else None,
                                threading.Event()))

    def release(self) -> None:
        with self._lock:
            gates, self._gates = self._gates, []
        for _, _, event in gates:
            event.set()

    def wait_held(self, n: int = 1, timeout: float = 120.0) -> None:
        """Block until `n` requests wait at a gate."""
        deadline = time.monotonic() + timeout
        while self.held < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"no request reached the gate within {timeout}s")
            time.sleep(0.05)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """Requests received whose method is `method` and whose path matches the regex `path`."""
        pattern = re.compile(path) if path else None
        with self._lock:
            return sum(1 for m, p in self.requests
                       if (method is None or m == method.upper()) and (pattern is None or pattern.search(p)))

    def faults(self) -> dict[str, int]:
        """Faulted requests per kind ("503", "drop", "truncate", "slow", ...)."""
        out: dict[str, int] = {}
        with self._lock:
            for _, _, kind in self.faulted:
                out[kind] = out.get(kind, 0) + 1
        return out

    def _take_rule(self, method: str, path: str) -> FaultRule | None:
        with self._lock:
            self.requests.append((method, path))
            for rule in self.rules:
                if rule.matches(method, path) and rule.take(method, path):
                    rule.hits += 1
                    if rule.kind != "delay":
                        self.faulted.append((method, path, rule.kind))
                    return rule
        return None

    def _gate(self, method: str, path: str) -> threading.Event | None:
        with self._lock:
            for m, p, event in self._gates:
                if (m is None or m == method) and (p is None or p.search(path)):
                    self.held += 1
                    return event
        return None

    class handler(Handler):
        def _hang_up(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _any(self):
            proxy: FaultProxy = self.owner
            body = self.read_body()
            rule = proxy._take_rule(self.command, self.path)
            gate = proxy._gate(self.command, self.path)
            if gate is not None:
                gate.wait()
            if rule is not None:
                if rule.delay:
                    time.sleep(rule.delay)
                if rule.drop:
                    return self._hang_up()
                if rule.status is not None:
                    headers = {"Content-Type": "application/json"}
                    if rule.retry_after is not None:
                        headers["Retry-After"] = rule.retry_after
                    return self.reply(rule.status, rule.body, headers)
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
            # Distribution builds upload Locations from Host and the scheme it was reached by: keep
            # both pointing at the proxy so follow-up requests come back through it.
            headers.append(("X-Forwarded-Proto", "http"))
            try:
                upstream = proxy._client.request(self.command, proxy.upstream + self.path,
                                                 headers=headers, content=body or None)
            except httpx.TransportError as exc:
                return self.reply(502, f"fault proxy: upstream unreachable: {exc}".encode())
            if rule is not None and rule.slow:
                time.sleep(rule.slow)   # the upstream acted on it; the answer comes too late
            content = upstream.content
            self.send_response_only(upstream.status_code)
            for key, value in upstream.headers.multi_items():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", upstream.headers.get("content-length", "0"))
            else:
                self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if rule is not None and rule.truncate:
                self.wfile.write(content[: len(content) // 2])
                return self._hang_up()
            if content and self.command != "HEAD":
                self.wfile.write(content)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any


class ServingProxy(FaultProxy):
    """A FaultProxy that also serves fixed manifests, as registries that accept any media type do
    (zot, Harbor, GHCR): Distribution 2.8 itself refuses to store them."""

    def __init__(self, upstream: str, served: dict[str, tuple[str, bytes]]):
        super().__init__(upstream)
        self.served = served   # path regex → (content type, body)

    class handler(FaultProxy.handler):
        def _any(self):
            for rx, (ctype, body) in self.owner.served.items():
                if re.search(rx, self.path):
                    self.read_body()
                    with self.owner._lock:
                        self.owner.requests.append((self.command, self.path))
                    return self.reply(200, body, {"Content-Type": ctype, "Docker-Content-Digest": sha256_digest(body)})
            return FaultProxy.handler._any(self)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any
