"""The one HTTP transport under every registry API client: the Distribution client
(tasks/registry/distribution.py) and every native API (tasks/registry/backends/).

- `Gate`: at most `registry.concurrency` calls in flight, each counted, retried by one
  `RetryPolicy` (exponential backoff with full jitter; Retry-After wins) and logged and counted
  in the source's notes (tasks/common/notes.py) before each wait. ECR's boto3 calls go through
  a Gate too, so every API of a registry is bounded, counted and retried alike.
- `Transport`: one keep-alive `httpx.AsyncClient` for one API of one registry; `request` sends
  one request through the Gate and turns every failure into a typed error by
  tasks/registry/errors.py (which statuses retry is decided there, and only there);
  `paged` is the one paginator, with a pluggable next-page function: `link_next` (RFC 8288
  `Link: rel="next"`: Distribution, GitHub, Harbor, GitLab), `x_next_page` (GitLab) and
  `body_next` (Docker Hub's `next` URL in the body).

Credentials never leave their origin (scheme, host and port of `registry.url` or the API's URL):
auth headers and the challenge flow's Basic or Bearer header go only to requests for that
origin. Redirects are followed by the transport itself, for reads only (GET, HEAD): a hop to
another origin (a blob on a CDN) is sent with no credential at all, and a redirected DELETE or
POST is a failure, never followed. `registry.insecure` turns TLS verification off for the
registry's own origin only: a token realm on another host and a native API's host stay verified.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, TypeVar
from urllib.parse import quote

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from tasks.common.errors import ConfigError, RegistryError, RegistryUnreachable
from tasks.common.notes import retried
from tasks.oci import manifest as oci
from tasks.registry.errors import ResponseTooLarge, registry_error

if TYPE_CHECKING:
    from tasks.config.models import RegistryConfig

log = logging.getLogger("regsweep.registry")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter; Retry-After wins when given."""

    attempts: int = 5
    initial: float = 0.25
    maximum: float = 8.0
    retry_after_cap: float = 60.0

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RegistryError) and exc.retry_after is not None:
            return min(exc.retry_after, self.retry_after_cap)
        return random.uniform(0, min(self.maximum, self.initial * 2 ** (state.attempt_number - 1)))

    def _note_retry(self, state: RetryCallState) -> None:
        retried(log, f"{state.outcome.exception()} (attempt {state.attempt_number} of {self.attempts}); "
                     f"retrying in {state.upcoming_sleep:.1f}s")

    async def run(self, attempt: Callable[[], Awaitable[T]], *,
                  on_retry: Callable[[RetryCallState], None] | None = None) -> T:
        """`attempt()` until it returns, or raises anything but a retryable RegistryError, or the
        attempts run out (the last error is raised). Each retry is logged and counted in the source's
        notes (tasks/common/notes.py) before its wait, or handed to `on_retry` instead."""
        def retryable(e: BaseException) -> bool:
            return isinstance(e, RegistryError) and e.retryable

        async for tried in AsyncRetrying(stop=stop_after_attempt(self.attempts), wait=self.wait,
                                         retry=retry_if_exception(retryable), reraise=True,
                                         before_sleep=on_retry or self._note_retry):
            with tried:
                return await attempt()
        raise AssertionError("unreachable")  # pragma: no cover


MiB = 1 << 20


@dataclass(frozen=True)
class Bounds:
    """How much one registry may make regsweep read, and for how long: a registry (or whatever
    answers in its name) that pages forever, sends a huge body or drips it byte by byte must fail
    the source, not stall or exhaust the worker."""

    max_pages: int = 100_000          # pages of one listing
    max_items: int = 10_000_000       # items of one listing
    manifest: int = 4 * MiB           # a manifest (Distribution's own limit)
    blob: int = 4 * MiB               # a blob, unless the caller asks for less (get_blob's max_bytes)
    page: int = 16 * MiB              # a JSON answer: a list page, an API object
    small: int = 1 * MiB              # a token answer, an error body, a 401's challenge, anything else
    deadline: float = 4.0             # one request, its redirects, auth and body: this many times registry.timeout


def size_text(n: int) -> str:
    """`4 MiB`, `64 KiB`, `1000 bytes`: a limit as written in Bounds."""
    for unit, size in (("MiB", MiB), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


class PageGuard:
    """Loop detection and the page and item caps of one listing (any paginator: HTTP or ECR's tokens)."""

    def __init__(self, name: str, bounds: Bounds, what: str, where: dict[str, str | None]):
        self.name, self.bounds, self.what, self.where = name, bounds, what, where
        self.seen: set[str] = set()
        self.pages = self.items = 0

    def _fail(self, text: str) -> RegistryError:
        return RegistryError(self.name, f"listing {self.what}: {text}", **self.where)

    def page(self, items: int) -> None:
        """Count a page of `items` items."""
        self.pages += 1
        self.items += items
        if self.items > self.bounds.max_items:
            raise self._fail(f"more than {self.bounds.max_items} items; stopped")

    def next(self, key: str) -> None:
        """Allow a next page named by `key` (its URL, or a token): never one seen before, never past the cap."""
        if key in self.seen:   # a registry that links a page to itself (or round a cycle) must not loop us
            raise self._fail("pagination loops (a page names one already read as the next)")
        if self.pages >= self.bounds.max_pages:
            raise self._fail(f"more than {self.bounds.max_pages} pages; stopped")
        self.seen.add(key)


def ssl_context(config: "RegistryConfig") -> ssl.SSLContext:
    """The TLS verification for every host `config`'s clients talk to: the system's CAs plus
    `registry.caFile`. (`registry.insecure` is applied by the Transport, to the registry's own
    origin only.)"""
    ctx = httpx.create_ssl_context()
    if config.caFile:
        path = Path(config.caFile).expanduser()
        try:
            ctx.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError("registry.caFile", f"cannot load {config.caFile}: {getattr(e, 'strerror', None) or e}") from None
    return ctx


#: Redirects followed per request (httpx's own default is 20).
MAX_REDIRECTS = 10


def origin_of(url: str | httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) of `url`, the default port spelt out: what "the same origin" compares."""
    u = url if isinstance(url, httpx.URL) else httpx.URL(url)
    return u.scheme, u.host.lower(), u.port or {"http": 80, "https": 443}.get(u.scheme)


def refuse_clear_text(config: "RegistryConfig", url: str, origin: str) -> None:
    """ConfigError unless credentials (from `origin`) may go to `url`: https, or the explicit opt-in.

    Configured credentials are checked when the configuration is loaded; this catches the ones
    found at run time (the docker config, ECR's authorization token)."""
    if url.lower().startswith("http://") and not config.allowInsecureCredentials:
        raise ConfigError("registry.allowInsecureCredentials",
                          f"{httpx.URL(url).netloc.decode()} is plain http:// and the credentials from {origin} would "
                          "travel in clear text: use https, or set registry.allowInsecureCredentials: true")


def _unsafe(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 100 else text[:100] + "…")


def repository_path(registry: str, name: str) -> str:
    """`name` as URL path segments, each percent-escaped: a name httpx would normalise (`..`, `.`,
    an empty segment) or a control character is refused (RegistryError), so no request reaches a
    path other than the one meant (`x/../app` is not `app`); `?`, `#` and `%` are escaped."""
    segments = name.split("/")
    if not name or _unsafe(name) or any(s in ("", ".", "..") for s in segments):
        raise RegistryError(registry, f"repository name {_shown(name)} cannot be requested as it is (an empty, '.' or "
                            "'..' path segment, or a control character); not requested")
    return "/".join(quote(s, safe="") for s in segments)


def reference_segment(registry: str, repository: str, ref: str) -> str:
    """A tag or digest as one percent-escaped URL path segment; RegistryError for one that cannot be."""
    if ref in ("", ".", "..") or "/" in ref or _unsafe(ref):
        raise RegistryError(registry, f"reference {_shown(ref)} is not one URL path segment; not requested",
                            repository=repository)
    return quote(ref, safe=":")   # a digest's ':' is a valid path character, kept for readable paths


class Gate:
    """At most `concurrency` calls in flight, each counted and retried by `retry`."""

    def __init__(self, retry: RetryPolicy, concurrency: int):
        self.retry = retry
        self._sem = asyncio.Semaphore(concurrency)
        self.requests = 0   # calls sent, retries included
        self.retries = 0    # calls sent again after a retryable failure (each also logged)

    async def call(self, attempt: Callable[[], Awaitable[T]], label: str) -> T:
        """`attempt()` under the bound, retried; `label` (a method, an operation) goes into the retry note."""
        async def once() -> T:
            async with self._sem:
                self.requests += 1
                return await attempt()

        def on_retry(state: RetryCallState) -> None:
            self.retries += 1
            retried(log, f"{state.outcome.exception()} ({label}, attempt {state.attempt_number} of "
                         f"{self.retry.attempts}); retrying in {state.upcoming_sleep:.1f}s")

        return await self.retry.run(once, on_retry=on_retry)


# --- next-page functions ------------------------------------------------------------------------

#: How the next page is found: from the answer (and the URL it answered), None on the last page.
NextPage = Callable[[httpx.Response], "str | httpx.URL | None"]


def link_next(r: httpx.Response) -> httpx.URL | None:
    """RFC 8288 `Link: <...>; rel="next"` (Distribution, GitHub, Harbor, GitLab)."""
    link = oci.parse_link_next(r.headers.get("link"))
    return r.request.url.join(link) if link else None


def x_next_page(r: httpx.Response) -> httpx.URL | None:
    """GitLab's `X-Next-Page: 3` (empty on the last page), with the Link header as a fallback."""
    page = (r.headers.get("x-next-page") or "").strip()
    if page:
        return r.request.url.copy_set_param("page", page)
    return None if "x-next-page" in r.headers else link_next(r)


def body_next(r: httpx.Response) -> str | None:
    """Docker Hub's `{"next": "<url>" | null, "results": [...]}`."""
    try:
        nxt = r.json().get("next")
    except (ValueError, AttributeError):
        return None
    return nxt if isinstance(nxt, str) and nxt else None


# --- the transport ------------------------------------------------------------------------------

#: The request extension that carries (the most bytes its answer may have on the wire, what it is).
LIMIT = "regsweep_limit"


def too_large(name: str, what: str, limit: int) -> ResponseTooLarge:
    return ResponseTooLarge(name, f"the {what} is larger than {size_text(limit)}; not read", limit=limit)


class _Capped(httpx.AsyncByteStream):
    """A response body that raises ResponseTooLarge past `limit` bytes, whoever reads it (httpx
    itself reads the 401s and token answers of the auth flow)."""

    def __init__(self, stream: httpx.AsyncByteStream, limit: int, what: str, name: str):
        self._stream, self._limit, self._what, self._name, self._read = stream, limit, what, name, 0

    async def __aiter__(self):
        async for chunk in self._stream:
            self._read += len(chunk)
            if self._read > self._limit:
                raise too_large(self._name, self._what, self._limit)
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Routes(httpx.AsyncBaseTransport):
    """Connection pools by origin: an unverified one for the one origin `registry.insecure` names,
    the verified one for every other host (a token realm elsewhere, a native API, a CDN). Every
    answer's body is capped on the wire: by the request's LIMIT, else `Bounds.small`."""

    def __init__(self, name: str, verify: ssl.SSLContext | bool, limits: httpx.Limits, insecure_origin: str | None,
                 bounds: "Bounds"):
        self._name, self._bounds = name, bounds
        self._verified = httpx.AsyncHTTPTransport(verify=verify, limits=limits)
        self._origin = origin_of(insecure_origin) if insecure_origin else None
        self._insecure = httpx.AsyncHTTPTransport(verify=False, limits=limits) if insecure_origin else None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._insecure if self._insecure is not None and origin_of(request.url) == self._origin else self._verified
        r = await pool.handle_async_request(request)
        # Requests of the auth flow (a token, a challenge read again) carry no LIMIT: the small cap.
        limit, what = request.extensions.get(LIMIT) or (self._bounds.small, "answer of the token service or challenge")
        assert isinstance(r.stream, httpx.AsyncByteStream)
        return httpx.Response(r.status_code, headers=r.headers, stream=_Capped(r.stream, limit, what, self._name),
                              extensions=r.extensions)

    async def aclose(self) -> None:
        await self._verified.aclose()
        if self._insecure is not None:
            await self._insecure.aclose()


class Transport:
    """One API of one registry over HTTP; use as `async with Transport(...) as t:`.

    `auth` is an httpx.Auth (the Distribution API's challenge flow); `auth_headers` (a callable,
    so secrets are read when first needed and never stored on settings) gives a native API's
    auth headers instead; `credentials_hint` names where they come from, for a 401/403 message;
    `rate_limited` lets the error map call a refusal a rate limit (GitHub's 403 with
    x-ratelimit-remaining: 0). Both go to `base_url`'s origin only. `insecure_origin` is the one
    origin whose TLS certificate is not verified (`registry.insecure`: the registry's).
    """

    def __init__(self, name: str, base_url: str, *, retry: RetryPolicy, concurrency: int, timeout: float,
                 verify: ssl.SSLContext | bool = True, insecure_origin: str | None = None,
                 auth: httpx.Auth | None = None, auth_headers: Callable[[], dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None, credentials_hint: str = "registry.auth, or the docker config",
                 rate_limited: Callable[[httpx.Response], bool] | None = None, bounds: Bounds | None = None):
        self.name, self.base_url = name, base_url.rstrip("/")
        self.origin = origin_of(self.base_url)
        self.bounds = bounds or Bounds()
        self.gate = Gate(retry, concurrency)
        self.credentials_hint = credentials_hint
        self._auth_source = auth_headers
        self._auth_headers: dict[str, str] | None = None
        self._rate_limited = rate_limited
        self._verify, self._insecure_origin = verify, insecure_origin
        # As many connections as requests in flight: a token request needs no spare one (the
        # refused request's connection is released first), and every idle connection costs
        # httpcore a readability check on each request.
        self._limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        # Redirects are followed here (`_exchange`), so that credentials stay with their origin.
        self._timeout = timeout
        self._options: dict[str, Any] = dict(auth=auth, timeout=timeout, follow_redirects=False,
                                             headers={"User-Agent": "regsweep", **(headers or {})})
        self._http: httpx.AsyncClient | None = None

    @property
    def retry(self) -> RetryPolicy:
        return self.gate.retry

    @property
    def requests(self) -> int:
        return self.gate.requests

    @property
    def retries(self) -> int:
        return self.gate.retries

    async def open(self) -> None:
        self._http = httpx.AsyncClient(base_url=self.base_url, **self._options,
                                       transport=_Routes(self.name, self._verify, self._limits, self._insecure_origin,
                                                         self.bounds))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> "Transport":
        await self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def set_auth(self, headers: dict[str, str]) -> None:
        """Replace the auth headers (a login that yields a token)."""
        self._auth_headers = dict(headers)

    def _auth(self) -> dict[str, str]:
        if self._auth_headers is None:
            self._auth_headers = self._auth_source() if self._auth_source else {}
        return self._auth_headers

    async def request(self, method: str, url: str | httpx.URL, *, params: dict | None = None, json: Any = None,
                      content: bytes | None = None, headers: dict[str, str] | None = None, ok: Iterable[int] = (200,),
                      passthrough: Iterable[int] = (), repository: str | None = None,
                      reference: str | None = None, tag_delete: bool = False, auth: bool = True,
                      limit: int | None = None, what: str = "answer") -> httpx.Response:
        """Send with retries; return answers with a status in `ok` or `passthrough`, raise otherwise.

        The answer is read whole, at most `limit` bytes of it (default `Bounds.page`; `what` it is,
        for the message: ResponseTooLarge past it), and within the deadline (`Bounds.deadline`
        times `registry.timeout`), redirects and authentication included: a server that drips
        its answer is abandoned, however often it sends a byte. Error answers are read only in
        part, for their message. `content` is a body sent as is (a manifest PUT)."""
        if self._http is None:
            raise RuntimeError(f"{type(self).__name__} used outside `async with`")
        ok, passthrough = frozenset(ok), frozenset(passthrough)
        where = {"repository": repository, "reference": reference}
        limit = self.bounds.page if limit is None else limit
        deadline = self.bounds.deadline * self._timeout

        async def attempt() -> httpx.Response:
            try:
                async with asyncio.timeout(deadline):
                    r = await self._exchange(method, url, params=params, json=json, content=content, headers=headers,
                                             auth=auth, limit=limit, what=what, ok=ok | passthrough)
            except TimeoutError:
                raise RegistryUnreachable(self.name, f"no complete answer within {deadline:g} s "
                                          f"({self.bounds.deadline:g} × registry.timeout)", retryable=True,
                                          **where) from None
            except ResponseTooLarge as e:
                raise ResponseTooLarge(self.name, e.detail, limit=e.limit, **where) from None
            except (httpx.HTTPError, RegistryError, ssl.SSLError, OSError) as e:
                raise registry_error(self.name, exc=e, **where) from None
            if r.status_code in ok or r.status_code in passthrough:
                return r
            raise registry_error(self.name, response=r, tag_delete=tag_delete, credentials_hint=self.credentials_hint,
                                 rate_limited=self._rate_limited, foreign=origin_of(r.url) != self.origin, **where)

        return await self.gate.call(attempt, method)

    async def _exchange(self, method: str, url: str | httpx.URL, *, params: dict | None, json: Any,
                        content: bytes | None, headers: dict[str, str] | None, auth: bool, limit: int, what: str,
                        ok: frozenset[int]) -> httpx.Response:
        """One request and the redirects of a read, each hop with credentials only for our origin;
        the last answer read (`_read`)."""
        assert self._http is not None
        http, target = self._http, url
        for hop in range(MAX_REDIRECTS + 1):
            request = http.build_request(method, target, params=params if hop == 0 else None,
                                         json=json if hop == 0 else None,
                                         content=content if hop == 0 else None, headers=headers,
                                         extensions={LIMIT: (max(limit, self.bounds.small), what)})
            own = origin_of(request.url) == self.origin
            if own and auth:
                for key, value in self._auth().items():
                    if key not in (headers or {}):   # the caller's own headers win (an Accept)
                        request.headers[key] = value
            # Another origin gets no credential: not the challenge flow's, not the auth headers.
            r = await http.send(request, stream=True, **({} if own else {"auth": None}))
            follow = r.is_redirect and method in ("GET", "HEAD")
            if follow:
                target = request.url.join(r.headers["location"])
                follow = target.scheme in ("http", "https")   # else not followed: the error map says where it led
            if not follow:
                return await self._read(r, limit if r.status_code in ok else self.bounds.small, what,
                                        whole=r.status_code in ok)
            await r.aclose()
        raise RegistryError(self.name, f"more than {MAX_REDIRECTS} redirects for one {method}")

    async def _read(self, r: httpx.Response, limit: int, what: str, *, whole: bool) -> httpx.Response:
        """`r` read into memory: ResponseTooLarge past `limit` bytes (decoded) when it must be read
        `whole`, else (an error answer, read for its message) its first `limit` bytes."""
        body = bytearray()
        try:
            declared = r.headers.get("content-length", "")
            if whole and r.request.method != "HEAD" and declared.isdigit() and int(declared) > limit:
                raise too_large(self.name, what, limit)   # not worth starting
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    if whole:
                        raise too_large(self.name, what, limit)
                    del body[limit:]
                    break
        except ResponseTooLarge:
            if whole:
                raise
        finally:
            await r.aclose()
        # The body is decoded already: the copy must not claim an encoding or the wire's length.
        headers = httpx.Headers([(k, v) for k, v in r.headers.multi_items()
                                 if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")])
        return httpx.Response(r.status_code, headers=headers, content=bytes(body), request=r.request,
                              extensions=r.extensions)

    async def paged(self, url: str | httpx.URL, *, items: Callable[[Any], list | None], each: type | tuple = object,
                    what: str = "items", params: dict | None = None, next_page: NextPage = link_next,
                    repository: str | None = None, reference: str | None = None, first: httpx.Response | None = None,
                    recover: Callable[[RegistryError], "str | None"] | None = None) -> list:
        """Every item of a paginated list; a page that fails fails the listing (fail closed).

        `items` takes a page's JSON to its list of items (None: an empty page), each an instance of
        `each`, `what` they are (for messages); `first` is the first page when the caller already
        has it; `recover` may name a URL to start over from when the first page is refused (a
        registry that refuses the page size asked for), None to fail. A next page is followed only
        on the origin that served the page, never twice, and never past `Bounds`.
        """
        where = {"repository": repository, "reference": reference}
        guard = PageGuard(self.name, self.bounds, what, where)
        out: list = []
        target: str | httpx.URL | None = url
        page_params = params
        while target is not None:
            if first is not None:
                r, first = first, None
            else:
                try:
                    r = await self.request("GET", target, params=page_params, what=f"page of {what}", **where)
                except RegistryError as e:
                    restart = recover(e) if (recover is not None and not guard.pages and target == url) else None
                    if restart is None:
                        raise
                    recover, target = None, restart
                    continue
            page_params = None
            try:
                page = items(r.json())
            except (ValueError, AttributeError, TypeError, KeyError):
                page = False
            page = [] if page is None else page
            if not isinstance(page, list) or not all(isinstance(i, each) for i in page):
                raise RegistryError(self.name, f"{r.request.url.path}: the answer is not a JSON page of {what}", **where)
            guard.page(len(page))
            out.extend(page)
            nxt = next_page(r)
            target = None
            if nxt is not None:
                target = r.request.url.join(nxt)
                served = origin_of(r.request.url)
                if origin_of(target) != served:
                    # Credentials would not follow it (transport docstring); neither does the listing.
                    raise RegistryError(self.name, f"listing {what}: pagination leaves {served[0]}://"
                                        f"{r.request.url.netloc.decode()} for {target.scheme}://"
                                        f"{target.netloc.decode()}; refused", **where)
                guard.next(str(target))
        return out

__all__ = ["Bounds", "Gate", "NextPage", "PageGuard", "RetryPolicy", "Transport", "body_next", "link_next",
           "reference_segment", "refuse_clear_text", "repository_path", "ssl_context", "x_next_page"]
