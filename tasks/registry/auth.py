"""Registry authentication: credentials lookup and the 401 → challenge → token → retry flow.

`ChallengeAuth` is an `httpx.Auth`: a request goes out with whatever the registry accepted
last time (Basic, or a cached Bearer token for the request's scope); on 401 it reads the
`WWW-Authenticate` challenge, fetches a token from the realm (or switches to Basic), and sends
the request once more. Tokens are cached per (realm, service, scope) until shortly before they
expire and dropped when the registry refuses them, so a scan of 10^5 tags costs a handful of
token requests. Once the registry's realm is known, pull tokens for other repositories are
requested up front rather than after a 401 each (as regclient and containerd do). It runs in an
`httpx.AsyncClient` only: many requests refused at once share one token request per scope.

Credentials come from the configuration (`registry.auth`) or, failing that, from the Docker
client's config (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`: `credHelpers`,
`credsStore`, `auths`). They are read when the registry first asks for them, are never part of
an error message, a log line or a repr, and are only sent to the registry and its token realm:

- Basic and Bearer headers go only to the registry's origin (scheme, host and port of
  `registry.url`); a request anywhere else (a blob on a CDN) goes without them.
- A 401 challenge is honoured only from the registry's origin, never from where a redirect led.
- The token realm must be the one the registry's own `/v2/` challenge names (asked once when a
  challenge comes from another path first), and `https` when the registry is.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncGenerator, Callable, NoReturn
from urllib.parse import urlsplit

import httpx

from tasks.config.models import RegistryAuth as AuthConfig, checked_secret
from tasks.common.errors import ConfigError, RegistryAuthError, RegistryError
from tasks.registry.errors import TokenService, registry_error
from tasks.registry.transport import origin_of
from tasks.oci.reference import DOCKER_HUB_HOSTS

DOCKER_HUB_KEY = "https://index.docker.io/v1/"


@dataclass(frozen=True)
class Credentials:
    """A user name and secret (password, token, or an OAuth2 identity/refresh token)."""

    username: str
    secret: str
    identity_token: bool = False
    origin: str = "config"   # where they came from, for messages: config | docker-config | helper name

    def __post_init__(self) -> None:
        # Wherever they were found (the docker config, a helper): refused if unfit for a header
        # (a control character), and remembered for redaction (tasks/common/redact.py).
        checked_secret(self.secret, self.origin, f"the secret of user {self.username!r}")

    def __repr__(self) -> str:  # never show the secret
        return f"Credentials(username={self.username!r}, origin={self.origin!r})"

    __str__ = __repr__

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.secret}".encode()
        return "Basic " + base64.b64encode(raw).decode()


# --- where credentials come from ------------------------------------------------------------

def docker_config_path() -> Path:
    """$DOCKER_CONFIG/config.json, else ~/.docker/config.json."""
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base) if base else Path.home() / ".docker") / "config.json"


def _key_host(key: str) -> str:
    """The host[:port] of an `auths`/`credHelpers` key (keys may carry a scheme and a path)."""
    k = key.strip()
    if "://" in k:
        k = urlsplit(k).netloc
    return k.split("/", 1)[0].lower()


def _host_matches(key: str, host: str) -> bool:
    kh, h = _key_host(key), host.lower()
    if kh == h:
        return True
    return kh in DOCKER_HUB_HOSTS and h in DOCKER_HUB_HOSTS


def run_credential_helper(name: str, server: str, registry: str) -> Credentials | None:
    """Ask `docker-credential-<name> get` (the docker credential-helper protocol) for `server`."""
    program = f"docker-credential-{name}"
    try:
        proc = subprocess.run([program, "get"], input=server, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise RegistryAuthError(registry, f"credential helper {program} (from the docker config) is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise RegistryAuthError(registry, f"credential helper {program} did not answer within 30 s") from None
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip()
        if "credentials not found" in out.lower():
            return None
        # The helper's own words help the user, but only its first line and never much of it.
        first = out.splitlines()[0][:200] if out else f"exit status {proc.returncode}"
        raise RegistryAuthError(registry, f"credential helper {program} failed: {first}")
    try:
        doc = json.loads(proc.stdout)
        user, secret = doc.get("Username") or "", doc.get("Secret") or ""
    except (ValueError, AttributeError):
        raise RegistryAuthError(registry, f"credential helper {program} answered something that is not JSON") from None
    if not secret:
        return None
    # By the helper protocol, the user name "<token>" marks an identity (refresh) token.
    if user == "<token>":
        return Credentials("<token>", secret, identity_token=True, origin=program)
    return Credentials(user, secret, origin=program)


def docker_config_credentials(host: str, path: Path | None = None) -> Credentials | None:
    """Credentials for `host` from the Docker client config, as `docker login` stored them."""
    path = path or docker_config_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(str(path), f"cannot read the docker config: {e}") from None
    if not isinstance(doc, dict):
        return None
    server = DOCKER_HUB_KEY if host.lower() in DOCKER_HUB_HOSTS else host
    for key, helper in (doc.get("credHelpers") or {}).items():
        if _host_matches(key, host) and helper:
            return run_credential_helper(str(helper), server, host)
    if doc.get("credsStore"):
        found = run_credential_helper(str(doc["credsStore"]), server, host)
        if found is not None:
            return found
    for key, entry in (doc.get("auths") or {}).items():
        if not _host_matches(key, host) or not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            return Credentials(entry.get("username") or "<token>", entry["identitytoken"],
                               identity_token=True, origin=str(path))
        if entry.get("auth"):
            try:
                user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise ConfigError(f"{path}: auths.{key}.auth", "is not base64 of user:password") from None
            return Credentials(user, secret, origin=str(path))
        if entry.get("username") and entry.get("password"):
            return Credentials(entry["username"], entry["password"], origin=str(path))
    return None


def resolve_credentials(host: str, auth: AuthConfig | None) -> Credentials | None:
    """The configured credentials, else the Docker config's, else None (anonymous)."""
    if auth is not None:
        return Credentials(auth.username, auth.password(), origin="registry.auth")
    return docker_config_credentials(host)


# --- challenges -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Challenge:
    scheme: str                  # basic | bearer
    realm: str = ""
    service: str = ""
    scope: str = ""
    error: str = ""


_PARAM_RX = re.compile(r'\s*([A-Za-z0-9_\-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Parse WWW-Authenticate header values (several schemes, quoted commas in scopes)."""
    out: list[Challenge] = []
    for value in values:
        rest = value.strip()
        while rest:
            m = re.match(r"([A-Za-z][A-Za-z0-9_\-]*)\s*", rest)
            if not m:
                break
            scheme, rest = m.group(1).lower(), rest[m.end():]
            params: dict[str, str] = {}
            while True:
                pm = _PARAM_RX.match(rest)
                if not pm:
                    break
                v = pm.group(2)
                if v.startswith('"'):
                    v = re.sub(r"\\(.)", r"\1", v[1:-1])
                params[pm.group(1).lower()] = v
                rest = rest[pm.end():]
            if scheme in ("basic", "bearer"):
                out.append(Challenge(scheme, params.get("realm", ""), params.get("service", ""),
                                     params.get("scope", ""), params.get("error", "")))
            rest = rest.lstrip(", ")
    return out


def _pick(challenges: list[Challenge]) -> Challenge | None:
    for c in challenges:
        if c.scheme == "bearer" and c.realm:
            return c
    for c in challenges:
        if c.scheme == "basic":
            return c
    return None


_REPO_PATH_RX = re.compile(r"^/v2/(.+?)/(manifests|blobs|tags|referrers)(/|$)")


def resource_scope(method: str, path: str) -> str | None:
    """The token scope a pull request needs, when it can be known before the registry says so."""
    if path.startswith("/v2/_catalog"):
        return "registry:catalog:*"
    m = _REPO_PATH_RX.match(path)
    if m and method in ("GET", "HEAD"):
        return f"repository:{m.group(1)}:pull"
    return None


@dataclass
class _Token:
    value: str
    expires: float   # monotonic seconds


def _show(url: str) -> str:
    """A realm for a message: scheme, host and path, never a query (it may carry anything)."""
    try:
        u = httpx.URL(url)
        return f"{u.scheme}://{u.netloc.decode()}{u.path}"
    except (httpx.InvalidURL, ValueError):
        return "(not a URL)"


class ChallengeAuth(httpx.Auth):
    """httpx auth for one registry (async clients only): anonymous, Basic, or Bearer tokens cached per scope.

    `origin` is the registry's URL: credentials go to that origin only. Without it, the origin of
    the first request the flow sees is taken (a client whose base URL is the registry)."""

    #: Renew a token this long before the registry would start refusing it.
    EXPIRY_MARGIN = 5.0

    def __init__(self, registry: str, credentials: Callable[[], Credentials | None] | Credentials | None = None,
                 clock: Callable[[], float] = time.monotonic, *, origin: str | None = None):
        self.registry = registry
        self.origin = origin_of(origin) if origin else None
        self._base = origin.rstrip("/") if origin else None
        self._v2_known = False                      # whether the registry's /v2/ challenge was read
        self._v2_realm: str | None = None           # the realm it names (None: it names none)
        self._v2_lock = asyncio.Lock()
        self._provider = credentials if callable(credentials) else (lambda: credentials)
        self._creds_loaded = False
        self._creds: Credentials | None = None
        self._clock = clock
        # Runtime state learned from the registry (not settings).
        self.scheme: str | None = None              # None until challenged: basic | bearer
        self.bearer: Challenge | None = None        # realm and service of the last bearer challenge
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._scope_of: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    # -- credentials ---------------------------------------------------------------------------
    def credentials(self) -> Credentials | None:
        if not self._creds_loaded:
            self._creds = self._provider()
            self._creds_loaded = True
        return self._creds

    # -- steps of the flow ------------------------------------------------------------------------
    def _key(self, request: httpx.Request) -> tuple[str, str]:
        # Scopes are per repository and verb, so one challenge answers for a whole repository.
        m = _REPO_PATH_RX.match(request.url.path)
        return request.method, (m.group(1) if m else request.url.path)

    def _token_key_for(self, request: httpx.Request) -> tuple[str, str, str] | None:
        known = self._scope_of.get(self._key(request))
        if known:
            return known
        if self.scheme == "bearer" and self.bearer is not None:
            scope = resource_scope(request.method, request.url.path)
            if scope:
                return (self.bearer.realm, self.bearer.service, scope)
        return None

    def _apply(self, request: httpx.Request) -> None:
        """Attach what the registry accepted before, so most requests need no 401 round trip."""
        if "Authorization" in request.headers:
            return
        if self.scheme == "basic":
            creds = self.credentials()
            if creds is not None and not creds.identity_token:
                request.headers["Authorization"] = creds.basic_header()
        elif self.scheme == "bearer":
            tk = self._token_key_for(request)
            tok = self._tokens.get(tk) if tk else None
            if tok is not None and tok.expires > self._clock():
                request.headers["Authorization"] = f"Bearer {tok.value}"

    def _token_request(self, ch: Challenge) -> httpx.Request:
        creds = self.credentials()
        scopes = [s for s in ch.scope.split(" ") if s]
        if creds is not None and creds.identity_token:
            data = {"grant_type": "refresh_token", "refresh_token": creds.secret, "client_id": "regsweep",
                    "service": ch.service}
            if scopes:
                data["scope"] = " ".join(scopes)
            return httpx.Request("POST", ch.realm, data=data)
        params = [("service", ch.service)] if ch.service else []
        params += [("scope", s) for s in scopes]
        headers = {"Authorization": creds.basic_header()} if creds is not None else {}
        return httpx.Request("GET", ch.realm, params=params, headers=headers)

    def _store_token(self, key: tuple[str, str, str], response: httpx.Response) -> str:
        realm = urlsplit(key[0]).netloc or key[0]
        if response.status_code != 200:
            creds = self.credentials()
            who = f"user {creds.username!r} (from {creds.origin})" if creds else "anonymous access"
            raise registry_error(self.registry, response=response, token_service=TokenService(realm, who, key[2]))
        try:
            doc = response.json()
            value = doc.get("token") or doc.get("access_token")
            expires_in = float(doc.get("expires_in") or 60)   # the spec's default lifetime
        except (ValueError, AttributeError, TypeError):
            value = None
        if not value:
            raise RegistryError(self.registry, f"token service {realm} answered without a token")
        margin = min(self.EXPIRY_MARGIN, expires_in / 10)
        self._tokens[key] = _Token(value, self._clock() + expires_in - margin)
        return value

    def _challenge(self, request: httpx.Request, response: httpx.Response) -> Challenge | None:
        ch = _pick(parse_challenges(response.headers.get_list("www-authenticate")))
        if ch is None:
            return None
        if ch.scheme == "bearer":
            self.scheme, self.bearer = "bearer", ch
            self._scope_of[self._key(request)] = (ch.realm, ch.service, ch.scope)
        else:
            self.scheme = "basic"
        return ch

    def _basic_retry(self, request: httpx.Request) -> bool:
        creds = self.credentials()
        if creds is None or creds.identity_token:
            return False
        header = creds.basic_header()
        if request.headers.get("Authorization") == header:
            return False  # the registry refused these very credentials
        request.headers["Authorization"] = header
        return True

    def _cached_for_retry(self, key: tuple[str, str, str], sent: str | None) -> str | None:
        """A valid cached token other than the one just refused (another request refreshed it)."""
        tok = self._tokens.get(key)
        if tok is None or tok.expires <= self._clock():
            return None
        if sent == f"Bearer {tok.value}":
            del self._tokens[key]  # refused before its time (revoked, registry restarted): refresh
            return None
        return tok.value

    def _own(self, url: httpx.URL) -> bool:
        """Whether `url` is on the registry's origin (the first request's, when none was given)."""
        if self.origin is None:
            self.origin, self._base = origin_of(url), f"{url.scheme}://{url.netloc.decode()}"
        return origin_of(url) == self.origin

    def _check_realm(self, ch: Challenge) -> None:
        """RegistryAuthError unless credentials may go to `ch.realm` (module docstring)."""
        try:
            realm = httpx.URL(ch.realm)
            ok = realm.scheme in ("http", "https") and bool(realm.host)
        except (httpx.InvalidURL, ValueError):
            ok = False
        if not ok:
            raise RegistryAuthError(self.registry, "the token realm is not an http(s) URL; refusing to send credentials")
        assert self.origin is not None
        if self.origin[0] == "https" and realm.scheme != "https":
            raise RegistryAuthError(self.registry, f"token realm {_show(ch.realm)} is not https; refusing to send "
                                    "credentials")
        if self._v2_realm is not None and ch.realm != self._v2_realm:
            raise RegistryAuthError(self.registry, f"token realm {_show(ch.realm)} is not the one the registry's /v2/ "
                                    f"names ({_show(self._v2_realm)}); refusing to send credentials")
        if self._v2_realm is None and origin_of(realm) != self.origin:
            raise RegistryAuthError(self.registry, f"token realm {_show(ch.realm)} is on another host and the "
                                    "registry's /v2/ names no realm; refusing to send credentials")

    def _learn_v2(self, response: httpx.Response) -> None:
        found = _pick(parse_challenges(response.headers.get_list("www-authenticate")))
        self._v2_realm = found.realm if (response.status_code == 401 and found is not None
                                         and found.scheme == "bearer") else None
        self._v2_known = True

    # -- httpx entry points ------------------------------------------------------------------------
    def sync_auth_flow(self, request: httpx.Request) -> NoReturn:
        raise TypeError("ChallengeAuth works in an httpx.AsyncClient only: requests refused at once share "
                        "one token request under an asyncio lock")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        own = self._own(request.url)
        if own:
            self._apply(request)
        response = yield request
        # A challenge counts from the registry's own origin only: never from where a redirect led.
        if response.status_code != 401 or not own or not self._own(response.request.url):
            return
        # Release the 401's connection first: with every pooled connection held by a refused
        # request, the token request would wait for a free one forever.
        await response.aread()
        ch = _pick(parse_challenges(response.headers.get_list("www-authenticate")))
        if ch is None:
            return
        if ch.scheme == "bearer":
            if response.request.url.path == "/v2/":
                self._learn_v2(response)
            elif not self._v2_known:
                # The realm must be the one the registry's /v2/ names: ask it once.
                async with self._v2_lock:
                    if not self._v2_known:
                        v2 = yield httpx.Request("GET", f"{self._base}/v2/")
                        await v2.aread()
                        if self._own(v2.request.url):
                            self._learn_v2(v2)
            self._check_realm(ch)
        self._challenge(request, response)
        if ch.scheme == "basic":
            if self._basic_retry(request):
                yield request
            return
        key = (ch.realm, ch.service, ch.scope)
        sent = request.headers.get("Authorization")
        # One token request per scope however many requests were refused at once.
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            value = self._cached_for_retry(key, sent)
            if value is None:
                token_response = yield self._token_request(ch)
                await token_response.aread()
                value = self._store_token(key, token_response)
        request.headers["Authorization"] = f"Bearer {value}"
        yield request
