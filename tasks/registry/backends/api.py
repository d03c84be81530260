"""One native registry REST API (GitLab, Harbor, GitHub, Docker Hub) as a small async JSON client.

`ApiClient` is the one transport (tasks/registry/transport.py) the Distribution client uses too,
speaking JSON: one keep-alive client, at most `registry.concurrency` requests in flight, retries
on what tasks/registry/errors.py calls retryable (the API's own rate-limit answer included, through
its `rate_limited` hook), and one paginator for the three shapes these APIs page in: a
`Link: rel="next"` header (GitHub, Harbor, GitLab), GitLab's `X-Next-Page`, and a `next` URL in
the body (Docker Hub).
"""

from __future__ import annotations

from typing import Any, Callable

import httpx

from tasks.registry.backends.base import Backend
from tasks.config.models import RegistryConfig
from tasks.common.errors import RegistryError
from tasks.registry.transport import Bounds, NextPage, RetryPolicy, Transport, body_next, link_next, ssl_context, x_next_page


class ApiClient(Transport):
    """Async JSON client for one native API; use as `async with ApiClient(...) as api:`.

    `headers` (a callable, so secrets are read when first needed and never stored on settings)
    gives the auth headers; `credentials_hint` names where they come from, for a 401/403 message;
    `rate_limited` may call a refusal a rate limit (GitHub answers 403 with x-ratelimit-remaining: 0).
    """

    def __init__(self, name: str, base_url: str, *, retry: RetryPolicy, concurrency: int, timeout: float,
                 verify: Any = True, insecure_origin: str | None = None,
                 headers: Callable[[], dict[str, str]] | None = None, credentials_hint: str = "",
                 rate_limited: Callable[[httpx.Response], bool] | None = None, bounds: Bounds | None = None):
        super().__init__(name, base_url, retry=retry, concurrency=concurrency, timeout=timeout, verify=verify,
                         insecure_origin=insecure_origin, auth_headers=headers, bounds=bounds, headers={"Accept": "application/json"},
                         credentials_hint=credentials_hint, rate_limited=rate_limited)

    async def json(self, method: str, url: str | httpx.URL, **kw: Any) -> Any:
        r = await self.request(method, url, **kw)
        return self.decode(r, url, kw.get("repository"))

    def decode(self, r: httpx.Response, url: Any, repository: str | None = None) -> Any:
        try:
            return r.json()
        except ValueError:
            raise RegistryError(self.name, f"{r.request.url.path}: the answer is not JSON", repository=repository) from None

    async def paged(self, url: str | httpx.URL, *, items: Callable[[Any], list | None] = lambda doc: doc,  # type: ignore[override]
                    params: dict | None = None, next_page: NextPage = link_next, repository: str | None = None,
                    each: type | tuple = dict, **kw: Any) -> list:
        """Every item of a paginated list: JSON objects, the page itself unless `items` says where they are."""
        return await super().paged(url, items=items, each=each, params=params, next_page=next_page,
                                   repository=repository, **kw)


class ApiBackend(Backend):
    """A backend that lists and deletes through a native REST API (`self.http`), with its settings
    (`registry.<api>`) as `self.settings`."""

    http: ApiClient

    def __init__(self, config: RegistryConfig, retry: RetryPolicy | None = None, bounds: Bounds | None = None):
        super().__init__(config, retry, bounds)
        self.settings: Any = getattr(config, self.api)
        assert self.settings is not None

    def api_client(self, base_url: str, *, headers: Callable[[], dict[str, str]] | None = None, hint: str = "",
                   rate_limited: Callable[[httpx.Response], bool] | None = None) -> ApiClient:
        """The API's client, with the registry's concurrency, timeout and TLS settings (`registry.insecure`
        reaches the API only where it answers on the registry's own origin, as Harbor's does by default)."""
        c = self.config
        return ApiClient(c.host, base_url, retry=self.retry, concurrency=c.concurrency, timeout=c.timeout,
                         verify=ssl_context(c), insecure_origin=c.url if c.insecure else None, headers=headers,
                         credentials_hint=hint, rate_limited=rate_limited, bounds=self.bounds)

    def token(self) -> str | None:
        """The API token (`registry.<api>.token_env` / `token_file`), read when first needed."""
        return self.settings.token(f"registry.{self.api}")

    @property
    def token_hint(self) -> str:
        s = self.settings
        return f"registry.{self.api}.token_env ({s.token_env})" if s.token_env else f"registry.{self.api}.token_file"

    async def open(self) -> None:
        await self.http.open()

    async def close(self) -> None:
        await self.http.close()


__all__ = ["ApiBackend", "ApiClient", "body_next", "link_next", "x_next_page"]
