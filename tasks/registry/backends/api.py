"""One native registry REST API (GitLab, Harbor, GitHub, Docker Hub) as a small async JSON client.

The same discipline as the Distribution client (tasks/registry/distribution.py): one keep-alive
`httpx.AsyncClient`, at most `registry.concurrency` requests in flight, retries through the
shared `RetryPolicy` (429/502/503/504 and dropped connections, Retry-After honoured), and every
failure turned into a typed error by tasks/registry/errors.py, naming where the credentials come from.
Pagination comes in the three shapes these APIs use: a `Link: rel="next"` header (GitHub, Harbor,
GitLab), GitLab's `X-Next-Page`, and a `next` URL in the body (Docker Hub).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Callable, Iterable

import httpx

from tasks.oci import manifest as oci
from tasks.registry.backends.base import Backend
from tasks.config.models import RegistryConfig
from tasks.registry.distribution import RetryPolicy, ssl_context
from tasks.common.errors import RegistryError
from tasks.registry.errors import parse_retry_after, registry_error

#: How the next page is found: from the answer (and the URL it answered), None on the last page.
NextPage = Callable[[httpx.Response], "str | httpx.URL | None"]


def link_next(r: httpx.Response) -> httpx.URL | None:
    """RFC 8288 `Link: <...>; rel="next"` (GitHub, Harbor, GitLab)."""
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


class ApiClient:
    """Async JSON client for one native API; use as `async with ApiClient(...) as api:`.

    `headers` (a callable, so secrets are read when first needed and never stored on settings)
    gives the auth headers; `credentials_hint` names where they come from, for a 401/403 message;
    `rate_limited` may call a refusal a rate limit (GitHub answers 403 with x-ratelimit-remaining: 0).
    """

    def __init__(self, name: str, base_url: str, *, retry: RetryPolicy, concurrency: int, timeout: float,
                 verify: ssl.SSLContext | bool = True, headers: Callable[[], dict[str, str]] | None = None,
                 credentials_hint: str = "", rate_limited: Callable[[httpx.Response], bool] | None = None):
        self.name, self.base_url, self.retry = name, base_url.rstrip("/"), retry
        self.credentials_hint = credentials_hint
        self._headers = headers
        self._auth: dict[str, str] | None = None
        self._rate_limited = rate_limited
        self._sem = asyncio.Semaphore(concurrency)
        self._options = dict(timeout=timeout, verify=verify, follow_redirects=True,
                             limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
                             headers={"User-Agent": "regsweep", "Accept": "application/json"})
        self._http: httpx.AsyncClient | None = None
        self.requests = 0

    async def __aenter__(self) -> "ApiClient":
        self._http = httpx.AsyncClient(base_url=self.base_url, **self._options)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def set_auth(self, headers: dict[str, str]) -> None:
        """Replace the auth headers (a login that yields a token)."""
        self._auth = dict(headers)

    def _auth_headers(self) -> dict[str, str]:
        if self._auth is None:
            self._auth = self._headers() if self._headers else {}
        return self._auth

    async def request(self, method: str, url: str | httpx.URL, *, params: dict | None = None, json: Any = None,
                      ok: Iterable[int] = (200,), passthrough: Iterable[int] = (), repository: str | None = None,
                      reference: str | None = None, auth: bool = True) -> httpx.Response:
        """Send with retries; return answers with a status in `ok` or `passthrough`, raise otherwise."""
        if self._http is None:
            raise RuntimeError("ApiClient used outside `async with`")
        ok, passthrough = frozenset(ok), frozenset(passthrough)
        http = self._http
        where = {"repository": repository, "reference": reference}

        async def attempt() -> httpx.Response:
            headers = self._auth_headers() if auth else {}
            async with self._sem:
                self.requests += 1
                try:
                    r = await http.request(method, url, params=params, json=json, headers=headers)
                except (httpx.HTTPError, RegistryError, ssl.SSLError, OSError) as e:
                    raise registry_error(self.name, exc=e, **where) from None
            if r.status_code in ok or r.status_code in passthrough:
                return r
            err = registry_error(self.name, response=r, credentials_hint=self.credentials_hint, **where)
            if self._rate_limited is not None and self._rate_limited(r):
                err.retryable = True
                err.retry_after = parse_retry_after(r.headers.get("retry-after"))
            raise err

        return await self.retry.run(attempt)

    async def json(self, method: str, url: str | httpx.URL, **kw: Any) -> Any:
        r = await self.request(method, url, **kw)
        return self.decode(r, url, kw.get("repository"))

    def decode(self, r: httpx.Response, url: Any, repository: str | None = None) -> Any:
        try:
            return r.json()
        except ValueError:
            raise RegistryError(self.name, f"{url}: the answer is not JSON", repository=repository) from None

    async def paged(self, url: str, *, params: dict | None = None, next_page: NextPage = link_next,
                    items: Callable[[Any], list] = lambda doc: doc, repository: str | None = None) -> list:
        """Every item of a paginated list; a page that fails fails the listing (fail closed)."""
        out: list = []
        seen: set[str] = set()
        target: str | httpx.URL | None = url
        first = True
        while target is not None:
            r = await self.request("GET", target, params=params if first else None, repository=repository)
            first = False
            page = items(self.decode(r, target, repository))
            if not isinstance(page, list):
                raise RegistryError(self.name, f"{target}: the answer is not a list page", repository=repository)
            out.extend(page)
            target = next_page(r)
            if target is not None:
                if str(target) in seen:   # a page linking to itself must not loop us
                    raise RegistryError(self.name, f"pagination loops at {target}", repository=repository)
                seen.add(str(target))
        return out


class ApiBackend(Backend):
    """A backend that lists and deletes through a native REST API (`self.http`), with its settings
    (`registry.<api>`) as `self.settings`."""

    http: ApiClient

    def __init__(self, config: RegistryConfig, retry: RetryPolicy | None = None):
        super().__init__(config, retry)
        self.settings: Any = getattr(config, self.api)
        assert self.settings is not None

    def api_client(self, base_url: str, *, headers: Callable[[], dict[str, str]] | None = None, hint: str = "",
                   rate_limited: Callable[[httpx.Response], bool] | None = None) -> ApiClient:
        """The API's client, with the registry's concurrency, timeout and TLS settings."""
        c = self.config
        return ApiClient(c.host, base_url, retry=self.retry, concurrency=c.concurrency, timeout=c.timeout,
                         verify=ssl_context(c), headers=headers, credentials_hint=hint, rate_limited=rate_limited)

    def token(self) -> str | None:
        """The API token (`registry.<api>.token_env` / `token_file`), read when first needed."""
        return self.settings.token(f"registry.{self.api}")

    @property
    def token_hint(self) -> str:
        s = self.settings
        return f"registry.{self.api}.token_env ({s.token_env})" if s.token_env else f"registry.{self.api}.token_file"

    async def open(self) -> None:
        await self.http.__aenter__()

    async def close(self) -> None:
        await self.http.__aexit__(None, None, None)


__all__ = ["ApiBackend", "ApiClient", "body_next", "link_next", "x_next_page"]
