"""THE mapping from a registry's answer, or a failure to get one, to regsweep's typed errors.

Every registry client raises what this module returns: `registry_error` for an HTTP answer or
transport failure (the Distribution API, the auth flow, every native REST API), `aws_error` for
ECR's API through botocore. Which answer means which error class, and whether to try again, is
decided here and nowhere else:

    HTTP status (registry_error)                    AWS error code (aws_error)
    401/403                  RegistryAuthError      AccessDenied..., ExpiredToken..., 401/403
    405, OCI UNSUPPORTED     UnsupportedOperation   UnsupportedImageTypeException
    a tag delete refused 400 DIGEST_INVALID (Distribution 2.8 deletes by digest only) → UnsupportedOperation
    404                      ManifestUnknown        RepositoryNotFound..., ImageNotFound...
    3xx to a DELETE or POST  RegistryError: never followed ("the registry redirected a DELETE")
    401/403 where a redirect led (another origin, sent no credentials): RegistryError
    TLS, connect, timeout, dropped  RegistryUnreachable   EndpointConnectionError, timeouts, closed
    no whole answer within the deadline (tasks/registry/transport.py Bounds): RegistryUnreachable
    an answer over its size cap (Bounds): ResponseTooLarge
    anything else            RegistryError          anything else

Retried (`retryable`, with the server's Retry-After) are 429, 502, 503, 504, an answer the API's
rate-limit hook recognises (`rate_limited`: GitHub's 403 with x-ratelimit-remaining: 0), AWS's
throttling codes, dropped connections, timeouts and a missed deadline. Nothing else is, in any API.

Text that comes from elsewhere (a transport exception, a registry's error message, botocore's)
goes into a message only through `redact`, the one redaction step: a header value that h11
refused ("Illegal header value b'<token>\\n'") is never repeated, nor a Basic or Bearer value, a
URL's user info or a token-like query value. A request httpx cannot even send
(LocalProtocolError: a token with a newline) is not retried: it would fail the same way.

ECR's 500 (`ServerException`, `InternalFailure`) is decided like every other API's 500: not
retried, so the source fails and the snapshot is published incomplete (docs/safety.md).
botocore's own retries are off (tasks/registry/backends/ecr.py: `total_max_attempts: 1`), so
no layer below retries it either. A 500 is an answer, not an outage: retrying it five times
hides a registry bug for minutes, and the sweep's DELETE that got one is journalled `failed`
and left for the next run instead. ECR's 502/503/504 are retried as anywhere else.
"""

from __future__ import annotations

import re
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable

import httpx

from tasks.common.redact import redact
from tasks.common.errors import ManifestUnknown, RegistryAuthError, RegistryError, RegistryUnreachable, UnsupportedOperation

RETRY_STATUSES = frozenset({429, 502, 503, 504})


class ResponseTooLarge(RegistryError):
    """An answer larger than regsweep reads of its kind (tasks/registry/transport.py `Bounds`):
    a manifest over 4 MiB, a blob over what the caller asked for, a page or token answer over its
    cap. Never retried; `limit` is the cap in bytes."""

    def __init__(self, registry: str, message: str, *, limit: int | None = None, **kw):
        self.limit, self.detail = limit, message
        super().__init__(registry, message, **kw)


@dataclass(frozen=True)
class TokenService:
    """Hint for `registry_error`: the answer came from a token service, asked for `scope`."""

    realm: str    # the token service's host, for the message
    who: str      # whose request it refused: "user 'ci' (from registry.auth)" or "anonymous access"
    scope: str


_SECRETS = [
    # h11's "Illegal header value b'...'" and any other bytes repr: what was (to be) sent.
    (re.compile(r"""\bb(['"]).*?(?<!\\)\1|\bb(['"]).*$""", re.S), "[redacted bytes]"),
    # A Basic or Bearer value: long, and with a digit or punctuation no English word has.
    (re.compile(r"(?i)\b(basic|bearer|jwt)\s+(?=[A-Za-z0-9._~+/=:-]*[0-9._+/=])[A-Za-z0-9._~+/=:-]{8,}"),
     r"\1 [redacted]"),
    (re.compile(r"(?i)(private-token|job-token|authorization|x-api-key)(['\"]?\s*[:=]\s*['\"]?)[^\s,;'\"}]+"),
     r"\1\2[redacted]"),
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]+@"), r"\1[redacted]@"),
    (re.compile(r"(?i)\b([a-z_-]*(?:token|secret|password|signature|key|auth)[a-z_-]*=)[^&\s'\"]+"), r"\1[redacted]"),
]


def scrub(text: object, limit: int = 300) -> str:
    """Foreign `text` (from an exception, a registry, botocore) fit for a message: one line, at most
    `limit` characters, every remembered secret masked (tasks/common/redact.py, the one redaction
    step) and, beyond that, whatever has the shape of a credential replaced (module docstring)."""
    out = redact(str(text))
    for rx, repl in _SECRETS:
        out = rx.sub(repl, out)
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 1] + "…"


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
            msg = str(doc.get("message") or doc.get("detail") or doc.get("error") or "")
        return tuple(scrub(c, 100) for c in codes), scrub(msg)
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        return (), ""


def registry_error(registry: str, *, response: httpx.Response | None = None, exc: BaseException | None = None,
                   repository: str | None = None, reference: str | None = None, tag_delete: bool = False,
                   token_service: TokenService | None = None,
                   credentials_hint: str = "registry.auth, or the docker config",
                   rate_limited: Callable[[httpx.Response], bool] | None = None,
                   foreign: bool = False) -> RegistryError:
    """The typed error for an error `response` (or a transport failure `exc`) from `registry`.

    `tag_delete` says the response answers a DELETE by tag, `token_service` that it is a token
    service's answer, `credentials_hint` where a refused request's credentials came from, and
    `rate_limited` is the API's own hook for a rate limit its status does not say (retried, with
    Retry-After). `foreign` says the answer came from another origin, where a redirect led (and
    where no credentials were sent). A RegistryError passed as `exc` (the auth flow raises them)
    is returned as is.
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
    elif 300 <= status < 400:
        # Only reads are followed (tasks/registry/transport.py): a redirected DELETE is not done.
        method = response.request.method
        to = _host_of(response.headers.get("location"), response.request.url)
        detail = f"the registry redirected a {method} (HTTP {status}{' to ' + to if to else ''}); not followed"
    elif foreign and status in (401, 403):
        cls = RegistryError
        detail = (f"HTTP {status} from {response.request.url.netloc.decode()}, where a redirect led: credentials "
                  "are sent to the registry's own origin only")
    elif status in (401, 403):
        cls, detail = RegistryAuthError, f"{detail} (check the credentials: {credentials_hint})"
    elif tag_delete and (status == 405 or {"DIGEST_INVALID", "UNSUPPORTED"} & set(codes)):
        cls = UnsupportedOperation
        detail = f"the registry cannot delete a tag alone (HTTP {status}{' ' + codes[0] if codes else ''})"
    elif status == 405 or "UNSUPPORTED" in codes:
        cls, detail = UnsupportedOperation, f"{detail} (the registry does not allow this operation)"
    elif status == 404:
        cls = ManifestUnknown
    retryable = status in RETRY_STATUSES or (rate_limited is not None and rate_limited(response))
    after = parse_retry_after(response.headers.get("retry-after")) if retryable else None
    return cls(registry, detail, status=status, codes=codes, retryable=retryable, retry_after=after, **where)


def _host_of(location: str | None, base: httpx.URL) -> str:
    """The host[:port] a Location header names (never its path or query: they may carry tokens)."""
    if not location:
        return ""
    try:
        return base.join(location).netloc.decode()
    except (httpx.InvalidURL, ValueError):
        return "an invalid URL"


def _failure(registry: str, exc: BaseException, where: dict) -> RegistryError:
    if isinstance(exc, RegistryError):
        return exc
    tls = _tls_failure(exc)
    if tls is not None:
        reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or str(tls)
        return RegistryUnreachable(registry, f"TLS handshake failed ({scrub(reason)}); trust the registry's CA with "
                                   "registry.caFile, or set registry.insecure: true", **where)
    if isinstance(exc, httpx.LocalProtocolError):
        # h11's text repeats the header value it refused: the token itself. Never shown, never retried.
        return RegistryError(registry, "the request could not be sent: a header value is not valid HTTP (a token or "
                             "password with a newline or another control character? check the secret's source)",
                             **where)
    if isinstance(exc, httpx.ConnectError):
        text = f"cannot connect: {scrub(exc)}" if str(exc) else "cannot connect"
    elif isinstance(exc, httpx.TimeoutException):
        text = f"timed out ({type(exc).__name__})"
    elif isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        text = f"connection dropped ({scrub(exc) or type(exc).__name__})"
    else:
        text = f"{type(exc).__name__}: {scrub(exc)}"
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


# --- ECR's API (botocore) -------------------------------------------------------------------------

AWS_AUTH_CODES = frozenset({"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
                            "ExpiredTokenException", "InvalidClientTokenId", "MissingAuthenticationTokenException"})
AWS_NOT_FOUND_CODES = frozenset({"RepositoryNotFoundException", "ImageNotFoundException"})
AWS_THROTTLE_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"})
AWS_CREDENTIALS_HINT = ("the AWS default chain: AWS_PROFILE or registry.ecr.profile, "
                        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a role")


def aws_error(registry: str, op: str, exc: Exception, *, repository: str | None = None,
              reference: str | None = None) -> RegistryError:
    """The typed error for a failed ECR API call `op` (botocore's exception `exc`)."""
    import botocore.exceptions as bex

    where = {"repository": repository, "reference": reference}
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, bex.ClientError):
        err, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
        code, message = aws_code_message(str(err.get("Code", "")), str(err.get("Message", "")))
        status = int(meta.get("HTTPStatusCode") or 0) or None
        text = f"ECR {op}: {code}" + (f": {message}" if message else "")
        if code in AWS_AUTH_CODES or status in (401, 403):
            return RegistryAuthError(registry, f"{text} (check the credentials: {AWS_CREDENTIALS_HINT})",
                                     status=status, codes=(code,), **where)
        if code in AWS_NOT_FOUND_CODES:
            return ManifestUnknown(registry, text, status=status, codes=(code,), **where)
        if code == "UnsupportedImageTypeException":
            return UnsupportedOperation(registry, text, status=status, codes=(code,), **where)
        retryable = code in AWS_THROTTLE_CODES or status in RETRY_STATUSES
        after = (meta.get("HTTPHeaders") or {}).get("retry-after")
        return RegistryError(registry, text, status=status, codes=(code,), retryable=retryable,
                             retry_after=parse_retry_after(after) if retryable else None, **where)
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        return RegistryAuthError(registry, f"ECR {op}: no AWS credentials found ({AWS_CREDENTIALS_HINT})", **where)
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError,
                        bex.ConnectionClosedError)):
        return RegistryUnreachable(registry, f"ECR {op}: {scrub(exc)}", retryable=True, **where)
    return RegistryError(registry, f"ECR {op}: {type(exc).__name__}: {scrub(exc)}", **where)


def aws_code_message(code: str, message: str) -> tuple[str, str]:
    """The error code and a one-line message, also from an XML error body botocore could not parse."""
    if message.lstrip().startswith("<"):
        found = {k: re.search(rf"<{k}>(.*?)</{k}>", message, re.S) for k in ("Code", "Message")}
        code = found["Code"].group(1).strip() if found["Code"] else code
        message = found["Message"].group(1) if found["Message"] else ""
    return scrub(code, 100), scrub(message)
