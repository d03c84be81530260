"""Registry fixtures: real Docker Distribution servers on loopback (see testbed/server.py).

    registry, registry_client   one plain-HTTP registry (delete enabled) for the whole session;
                                tests share it, so each uses its own repository (unique_repo)
    unique_repo                 a repository name no other test uses
    fresh_registry              factory: fresh_registry(**LocalRegistry options) -> an empty, started registry
    tls_registry                HTTPS with a throw-away trustme CA; `.ca_pem` is the CA file to trust
    htpasswd_registry           Basic auth; `.credentials` == (REGISTRY_USER, REGISTRY_PASSWORD)
    token_registry              Docker token auth against `token_issuer` (a loopback TokenIssuer);
                                `.credentials` == (REGISTRY_USER, REGISTRY_PASSWORD)
    token_issuer                that issuer, its counters reset and expires_in restored for each test
    fault_proxy                 a FaultProxy (tests/support/faults.py) in front of `registry`;
                                fault_proxy_factory(upstream) for others (a registry, a KubeServer, a URL)

The session-scoped ones (registry, registry_client, registry_ca, tls_registry, htpasswd_registry,
token_stack, token_registry) are global through tests/conftest.py; a test module imports the
others (unique_repo, fresh_registry, token_issuer, fault_proxy, fault_proxy_factory).

READER_USER / READER_PASSWORD is a second account of htpasswd and token registries; on the token
registry it is granted `pull` only, so pushes and deletes are refused as on a read-only robot account.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import os
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from testbed import LocalRegistry, TokenAuth, write_htpasswd
from testbed.loopback import Handler, LoopbackServer
from tests.support.faults import FaultProxy

REGISTRY_USER = "regsweep-ci"
REGISTRY_PASSWORD = "correct horse battery staple"
READER_USER = "reader"
READER_PASSWORD = "reader-only-pw"
TOKEN_SERVICE = "regsweep-local-registry"
TOKEN_ISSUER = "regsweep-test-token-issuer"

_repo_counter = itertools.count()


# --------------------------------------------------------------------------- token issuer


@dataclass
class IssuedToken:
    account: str
    scopes: list[str]
    expires_in: int
    token: str


def _signing_cert(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    """A self-signed P-256 certificate the registry trusts as `rootcertbundle`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "regsweep test token signer")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / "token-signer.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


class TokenIssuer(LoopbackServer):
    """A Docker token server (`GET /token?service=&scope=&account=` with Basic credentials).

    Answers `{token, access_token, expires_in, issued_at}` with an ES256 JWT whose `x5c` header
    carries the signing certificate, which the registry trusts through `rootcertbundle`. Wrong or
    missing credentials get 401; `fail_next` forces statuses on the next requests. `issued` records
    every token. `expires_in` (the advertised lifetime) may be lowered by a test; Distribution still
    accepts a token up to 60 s past its `exp` (its leeway), so to have the registry refuse a cached
    token as expired set `jwt_lifetime` (the JWT's own `exp` offset, default `expires_in`) to -61.
    `permissions` limits an account's actions (default: everything it asks for).
    """

    def __init__(self, directory: Path, users: dict[str, str], *,
                 permissions: dict[str, set[str]] | None = None, expires_in: int = 300,
                 service: str = TOKEN_SERVICE, issuer: str = TOKEN_ISSUER):
        self.users, self.permissions = dict(users), dict(permissions or {})
        self.default_expires_in = self.expires_in = expires_in
        self.jwt_lifetime: int | None = None
        self.service, self.issuer = service, issuer
        self._key, self._cert, self.cert_path = _signing_cert(Path(directory))
        self._x5c = [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()]
        self.issued: list[IssuedToken] = []
        self.refused = 0
        self.fail_next: list[int] = []  # statuses to answer the next requests with, e.g. [503]
        self._lock = threading.Lock()

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    @property
    def count(self) -> int:
        """Tokens issued since the last reset."""
        return len(self.issued)

    def reset(self) -> None:
        with self._lock:
            self.issued.clear()
            self.refused = 0
            self.fail_next.clear()
            self.expires_in = self.default_expires_in
            self.jwt_lifetime = None

    def token_auth(self) -> TokenAuth:
        """The registry's `auth.token` section for this issuer."""
        return TokenAuth(realm=self.realm, service=self.service, issuer=self.issuer,
                         rootcertbundle=str(self.cert_path))

    def authenticate(self, header: str | None) -> str | None:
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user if user in self.users and self.users[user] == password else None

    def grant(self, account: str, scopes: list[str]) -> list[dict]:
        allowed = self.permissions.get(account)
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            granted = [a for a in wanted if allowed is None or a in allowed]
            if kind and name:
                access.append({"type": kind, "name": name, "actions": granted})
        return access

    def issue(self, account: str, scopes: list[str]) -> dict:
        now = int(time.time())
        expires_in = int(self.expires_in)
        lifetime = expires_in if self.jwt_lifetime is None else int(self.jwt_lifetime)
        claims = {"iss": self.issuer, "sub": account, "aud": self.service, "exp": now + lifetime,
                  "nbf": now - 1, "iat": now, "jti": uuid.uuid4().hex,
                  "access": self.grant(account, scopes)}
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": self._x5c})
        with self._lock:
            self.issued.append(IssuedToken(account, scopes, expires_in, token))
        issued_at = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"token": token, "access_token": token, "expires_in": expires_in, "issued_at": issued_at}

    class handler(Handler):
        def do_GET(self):
            issuer: TokenIssuer = self.owner
            url = urlsplit(self.path)
            if url.path != "/token":
                return self.reply(404, b"not found")
            with issuer._lock:
                forced = issuer.fail_next.pop(0) if issuer.fail_next else None
            if forced:
                return self.reply(forced, b'{"details":"injected failure"}',
                                  {"Content-Type": "application/json"})
            query = parse_qs(url.query)
            account = issuer.authenticate(self.headers.get("Authorization"))
            if account is None:
                with issuer._lock:
                    issuer.refused += 1
                return self.reply(401, b'{"details":"incorrect username or password"}',
                                  {"Content-Type": "application/json",
                                   "WWW-Authenticate": 'Basic realm="regsweep test token issuer"'})
            if query.get("service", [issuer.service])[0] != issuer.service:
                return self.reply(400, b'{"details":"unknown service"}', {"Content-Type": "application/json"})
            scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
            body = json.dumps(issuer.issue(account, scopes)).encode()
            self.reply(200, body, {"Content-Type": "application/json"})


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def registry():
    """A plain-HTTP Distribution 2.8 registry with delete enabled, shared by the session."""
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture(scope="session")
def registry_client(registry) -> httpx.Client:
    """An httpx client with `base_url` = the session registry, for the push helpers."""
    with registry.client() as client:
        yield client


@pytest.fixture
def unique_repo(request):
    """A repository name no other test in the session uses: `t/<test name>-<n>`."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]
    return f"t/{stem}-{os.getpid()}-{next(_repo_counter)}"


@pytest.fixture
def fresh_registry():
    """Factory for an empty registry of its own: `fresh_registry(delete_enabled=False, ...)`."""
    started: list[LocalRegistry] = []

    def make(**options) -> LocalRegistry:
        reg = LocalRegistry(**options).start()
        started.append(reg)
        return reg

    yield make
    for reg in started:
        reg.stop()


@pytest.fixture(scope="session")
def registry_ca(tmp_path_factory):
    """A throw-away CA (trustme) and a 127.0.0.1/localhost server certificate it signed.

    Returns (ca, ca_pem, cert_pem, key_pem) — the paths are files in a session temp dir.
    """
    import trustme

    directory = tmp_path_factory.mktemp("registry-tls")
    ca = trustme.CA(organization_name="regsweep test CA")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert_pem.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_pem))
    return ca, ca_pem, cert_pem, key_pem


@pytest.fixture(scope="session")
def tls_registry(registry_ca):
    """An HTTPS registry whose certificate is signed by a throw-away CA; `.ca_pem` is that CA file."""
    _, ca_pem, cert_pem, key_pem = registry_ca
    with LocalRegistry(tls=(cert_pem, key_pem), ca_pem=ca_pem) as reg:
        yield reg


@pytest.fixture(scope="session")
def htpasswd_registry(tmp_path_factory):
    """A registry behind Basic auth (bcrypt htpasswd); `.credentials` is the known user/password."""
    directory = tmp_path_factory.mktemp("registry-htpasswd")
    path = write_htpasswd(directory / "htpasswd", {REGISTRY_USER: REGISTRY_PASSWORD,
                                                   READER_USER: READER_PASSWORD})
    with LocalRegistry(htpasswd=path, credentials=(REGISTRY_USER, REGISTRY_PASSWORD)) as reg:
        yield reg


@pytest.fixture(scope="session")
def token_stack(tmp_path_factory):
    """The token registry and its issuer, started together once: (LocalRegistry, TokenIssuer)."""
    directory = tmp_path_factory.mktemp("registry-token")
    with TokenIssuer(directory, {REGISTRY_USER: REGISTRY_PASSWORD, READER_USER: READER_PASSWORD},
                     permissions={READER_USER: {"pull"}}) as issuer:
        with LocalRegistry(token=issuer.token_auth(),
                           credentials=(REGISTRY_USER, REGISTRY_PASSWORD)) as reg:
            yield reg, issuer


@pytest.fixture(scope="session")
def token_registry(token_stack):
    """A registry behind Docker token auth served by `token_issuer`; `.credentials` is the known user."""
    return token_stack[0]


@pytest.fixture
def token_issuer(token_stack):
    """The token registry's issuer, with counters reset and the default `expires_in` (300 s)."""
    issuer = token_stack[1]
    issuer.reset()
    yield issuer
    issuer.reset()


@pytest.fixture
def fault_proxy_factory():
    """Factory: `fault_proxy_factory(upstream_url_or_registry, verify=...)` -> a started FaultProxy."""
    started: list[FaultProxy] = []

    def make(upstream, *, verify: Any = None) -> FaultProxy:
        if isinstance(upstream, LocalRegistry):
            if verify is None:
                verify = ssl.create_default_context(cafile=upstream.ca_pem) if upstream.ca_pem else True
            upstream = upstream.url
        elif not isinstance(upstream, str):
            upstream = upstream.url   # a KubeServer, or any server with a `url`
        proxy = FaultProxy(upstream, verify=True if verify is None else verify).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def fault_proxy(registry) -> FaultProxy:
    """A FaultProxy in front of the session `registry`; point clients at `fault_proxy.url`."""
    with FaultProxy(registry.url) as proxy:
        yield proxy
