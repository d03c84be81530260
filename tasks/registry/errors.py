"""THE mapping from a registry's HTTP answer, or a failure to get one, to regsweep's typed errors.

Every registry client and the auth flow raise what `registry_error` returns, so which status
means which error class (and whether to try again) is decided here and nowhere else:

    401/403                          RegistryAuthError   (a token service's refusal names the user)
    405, or OCI code UNSUPPORTED     UnsupportedOperation
    a tag delete refused 400 DIGEST_INVALID (Distribution 2.8 deletes by digest only) → UnsupportedOperation
    404                              ManifestUnknown
    TLS, connect, timeout, dropped   RegistryUnreachable
    anything else                    RegistryError

429, 502, 503, 504 and dropped connections are `retryable`, with the registry's Retry-After.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from tasks.common.errors import ManifestUnknown, RegistryAuthError, RegistryError, RegistryUnreachable, UnsupportedOperation

RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class TokenService:
    """Hint for `registry_error`: the answer came from a token service, asked for `scope`."""

    realm: str    # the token service's host, for the message
    who: str      # whose request it refused: "user 'ci' (from registry.auth)" or "anonymous access"
    scope: str


def oci_errors(response: httpx.Response) -> tuple[tuple[str, ...], str]:
    """The OCI error codes and first message of an error response, if it has a JSON body.

    Native registry APIs answer `{"message": ...}` (GitLab, GitHub, Docker Hub) or `{"detail": ...}`
    (Docker Hub) instead: their message is taken, with no code.
    """
    try:
        doc = response.json()
        errs = doc.get("errors") or []
        codes = tuple(str(e.get("code", "")) for e in errs if isinstance(e, dict))
        msg = next((str(e.get("message")) for e in errs if isinstance(e, dict) and e.get("message")), "")
        if not errs:
            msg = str(doc.get("message") or doc.get("detail") or doc.get("error") or "")[:300]
        return codes, msg
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        return (), ""


def registry_error(registry: str, *, response: httpx.Response | None = None, exc: BaseException | None = None,
                   repository: str | None = None, reference: str | None = None, tag_delete: bool = False,
                   token_service: TokenService | None = None,
                   credentials_hint: str = "registry.auth, or the docker config") -> RegistryError:
    """The typed error for an error `response` (or a transport failure `exc`) from `registry`.

    `tag_delete` says the response answers a DELETE by tag, `token_service` that it is a token
    service's answer, `credentials_hint` where a refused request's credentials came from. A
    RegistryError passed as `exc` (the auth flow raises them) is returned as is.
    """
    where = {"repository": repository, "reference": reference}
    if exc is not None:
        return _failure(registry, exc, where)
    assert response is not None
    status = response.status_code
    codes, message = oci_errors(response)
    detail = f"HTTP {status}" + (f" {codes[0]}" if codes else "") + (f": {message}" if message else "")
    cls: type[RegistryError] = RegistryError
    if token_service is not None:
        if status in (401, 403):
            cls, detail = RegistryAuthError, (f"token service {token_service.realm} refused {token_service.who} "
                                              f"for scope {token_service.scope or '(none)'}: HTTP {status}")
        else:
            detail = f"token service {token_service.realm} answered HTTP {status}"
    elif status in (401, 403):
        cls, detail = RegistryAuthError, f"{detail} (check the credentials: {credentials_hint})"
    elif tag_delete and (status == 405 or {"DIGEST_INVALID", "UNSUPPORTED"} & set(codes)):
        cls = UnsupportedOperation
        detail = f"the registry cannot delete a tag alone (HTTP {status}{' ' + codes[0] if codes else ''})"
    elif status == 405 or "UNSUPPORTED" in codes:
        cls, detail = UnsupportedOperation, f"{detail} (the registry does not allow this operation)"
    elif status == 404:
        cls = ManifestUnknown
    retryable = status in RETRY_STATUSES
    after = parse_retry_after(response.headers.get("retry-after")) if retryable else None
    return cls(registry, detail, status=status, codes=codes, retryable=retryable, retry_after=after, **where)


def _failure(registry: str, exc: BaseException, where: dict) -> RegistryError:
    if isinstance(exc, RegistryError):
        return exc
    tls = _tls_failure(exc)
    if tls is not None:
        reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or str(tls)
        return RegistryUnreachable(registry, f"TLS handshake failed ({reason}); trust the registry's CA with "
                                   "registry.caFile, or set registry.insecure: true", **where)
    if isinstance(exc, httpx.ConnectError):
        text = f"cannot connect: {exc}" if str(exc) else "cannot connect"
    elif isinstance(exc, httpx.TimeoutException):
        text = f"timed out ({type(exc).__name__})"
    elif isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        text = f"connection dropped ({exc or type(exc).__name__})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return RegistryUnreachable(registry, text, retryable=isinstance(exc, httpx.TransportError), **where)


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
