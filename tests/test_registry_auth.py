"""Registry authentication and TLS against real registries: htpasswd Basic, Docker token auth
(a loopback token issuer the registry trusts), the Docker client's config and credential
helpers (real executables on PATH), and HTTPS with a throw-away CA."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from pathlib import Path

import pytest

from tasks.registry.auth import ChallengeAuth, Credentials, docker_config_credentials, resolve_credentials
from tasks.config.models import parse_config
from tasks.common.errors import RegistryAuthError, RegistryUnreachable
from testbed import push_image, push_tags
from tasks.sources.blobcache import BlobCache
from tasks.registry.distribution import RegistryClient, RetryPolicy
from tasks.sources.registry import scan_registry
from tests.support.registry import READER_PASSWORD, READER_USER, REGISTRY_PASSWORD, REGISTRY_USER
from tests.support.registry import token_issuer  # noqa: F401 (fixtures)

FAST = RetryPolicy(attempts=2, initial=0.01, maximum=0.02)


def cfg(url, tmp_path=None, auth=None, **registry):
    # The loopback registries are plain http: credentials need the explicit opt-in.
    data = {"registry": {"url": url, "allowInsecureCredentials": url.startswith("http://"), **registry}}
    if auth:
        data["registry"]["auth"] = auth
    if tmp_path is not None:
        data["store"] = str(tmp_path / "store")
    return parse_config(data)


def run(config, fn):
    async def go():
        async with RegistryClient(config.registry, retry=FAST) as client:
            return await fn(client), client
    return asyncio.run(go())


def scan(config):
    return asyncio.run(scan_registry(config.registry, config.link, BlobCache(), retry=FAST))


@pytest.fixture
def password_env(monkeypatch):
    monkeypatch.setenv("REGSWEEP_TEST_PASSWORD", REGISTRY_PASSWORD)
    return {"username": REGISTRY_USER, "password_env": "REGSWEEP_TEST_PASSWORD"}


@pytest.fixture
def docker_config(tmp_path, monkeypatch):
    """An empty $DOCKER_CONFIG directory of the test's own (never the user's ~/.docker)."""
    d = tmp_path / "docker"
    d.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


def write_helper(bindir: Path, name: str, users: dict[str, tuple[str, str]], log: Path) -> None:
    """A real docker-credential-<name> executable speaking the helper protocol on stdin/stdout."""
    bindir.mkdir(exist_ok=True)
    script = bindir / f"docker-credential-{name}"
    script.write_text(f"""#!/usr/bin/env python3
import json, sys
server = sys.stdin.read().strip()
open({str(log)!r}, "a").write(sys.argv[1] + " " + server + "\\n")
users = {json.dumps(users)}
if server not in users:
    print("credentials not found in native keychain")
    sys.exit(1)
user, secret = users[server]
print(json.dumps({{"ServerURL": server, "Username": user, "Secret": secret}}))
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# --- Basic (htpasswd) -----------------------------------------------------------------------------

def test_basic_auth_with_the_right_password(htpasswd_registry, tmp_path, password_env):
    with htpasswd_registry.client() as c:
        d = push_image(c, "basic/app", "v1")
    result, client = scan(cfg(htpasswd_registry.url, tmp_path, password_env, repositories=["basic/app"]))
    assert [(t["tag"], t["digest"]) for t in result.tags] == [("v1", d)]
    assert client.auth.scheme == "basic"


def test_basic_auth_with_a_wrong_password_names_the_registry_not_the_secret(htpasswd_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("REGSWEEP_TEST_PASSWORD", "hunter2-wrong")
    config = cfg(htpasswd_registry.url, tmp_path, {"username": REGISTRY_USER, "password_env": "REGSWEEP_TEST_PASSWORD"})
    with pytest.raises(RegistryAuthError) as e:
        scan(config)
    msg = str(e.value)
    assert e.value.status == 401 and e.value.exit_code == 2
    assert msg.startswith(f"registry {htpasswd_registry.host}") and "\n" not in msg
    assert "hunter2" not in msg and "credentials" in msg

    with pytest.raises(RegistryAuthError):  # no credentials at all: refused the same way
        scan(cfg(htpasswd_registry.url, tmp_path))


# --- Docker token auth -------------------------------------------------------------------------------

def test_token_auth_caches_one_token_per_scope(token_registry, token_issuer, tmp_path, password_env):
    with token_registry.client() as c:
        for repo in ("tok/a", "tok/b", "tok/c"):
            push_tags(c, repo, [f"v{i}" for i in range(15)], labels=lambda t: {"t": t})
    token_issuer.reset()
    result, client = scan(cfg(token_registry.url, tmp_path, password_env, repositories=["tok/*"]))
    assert len([t for t in result.tags if t["repository"].startswith("tok/")]) == 45
    # /v2/ (no scope), the catalog, and one pull token per repository: not one per request.
    scopes = sorted(" ".join(t.scopes) for t in token_issuer.issued)
    assert scopes == ["", "registry:catalog:*", "repository:tok/a:pull", "repository:tok/b:pull",
                      "repository:tok/c:pull"]
    assert {t.account for t in token_issuer.issued} == {REGISTRY_USER}
    assert client.requests > 60   # ping, catalog, lists, 45 manifests, 15 distinct configs, probe


def test_concurrent_refusals_share_one_token_request(token_registry, token_issuer, password_env):
    with token_registry.client() as c:
        push_tags(c, "tok/burst", [f"v{i}" for i in range(40)], distinct=False)
    token_issuer.reset()

    async def burst(cl):
        return await asyncio.gather(*(cl.head_manifest("tok/burst", f"v{i}") for i in range(40)))

    digests, _ = run(cfg(token_registry.url, auth=password_env, concurrency=20), burst)
    assert len(set(digests)) == 1 and None not in digests
    assert token_issuer.count == 1


def test_expired_token_is_refreshed(token_registry, token_issuer, password_env):
    with token_registry.client() as c:
        push_image(c, "tok/exp", "v1")
    token_issuer.reset()
    token_issuer.expires_in = 1   # advertised lifetime: the client must not reuse it after a second

    async def go(cl):
        first = await cl.head_manifest("tok/exp", "v1")
        again = await cl.head_manifest("tok/exp", "v1")
        n = token_issuer.count
        await asyncio.sleep(1.2)
        third = await cl.head_manifest("tok/exp", "v1")
        return first, again, n, third

    (first, again, n, third), _ = run(cfg(token_registry.url, auth=password_env), go)
    assert first == again == third
    assert n == 1 and token_issuer.count == 2


def test_token_refused_before_its_time_is_refreshed_once(token_registry, token_issuer, password_env):
    with token_registry.client() as c:
        d = push_image(c, "tok/revoked", "v1")
    token_issuer.reset()
    token_issuer.jwt_lifetime = -61   # the registry will refuse what the issuer says lasts 300 s

    async def go(cl):
        with pytest.raises(RegistryAuthError):
            await cl.head_manifest("tok/revoked", "v1")
        token_issuer.jwt_lifetime = None   # the issuer mends; the cached token is still the bad one
        n = token_issuer.count
        return n, await cl.head_manifest("tok/revoked", "v1")

    (n, digest), _ = run(cfg(token_registry.url, auth=password_env), go)
    assert digest == d
    assert token_issuer.count == n + 1   # the refused cached token was dropped and replaced once


def test_token_service_refuses_wrong_password(token_registry, token_issuer, tmp_path, monkeypatch):
    monkeypatch.setenv("REGSWEEP_TEST_PASSWORD", "not-the-password")
    config = cfg(token_registry.url, tmp_path, {"username": REGISTRY_USER, "password_env": "REGSWEEP_TEST_PASSWORD"})
    with pytest.raises(RegistryAuthError) as e:
        scan(config)
    msg = str(e.value)
    assert token_registry.host in msg and REGISTRY_USER in msg and "not-the-password" not in msg
    assert token_issuer.refused >= 1 and token_issuer.count == 0


def test_pull_only_account_can_scan_but_not_delete(token_registry, token_issuer, monkeypatch):
    with token_registry.client() as c:
        d = push_image(c, "tok/ro", "v1")
    monkeypatch.setenv("REGSWEEP_READER_PW", READER_PASSWORD)
    config = cfg(token_registry.url, auth={"username": READER_USER, "password_env": "REGSWEEP_READER_PW"})

    async def go(cl):
        got = await cl.head_manifest("tok/ro", "v1")
        with pytest.raises(RegistryAuthError) as e:
            await cl.delete_manifest("tok/ro", d)
        return got, e.value

    (got, err), _ = run(config, go)
    assert got == d and err.status == 401 and "tok/ro@" in str(err)
    with token_registry.client() as c:   # refused means nothing was deleted
        assert c.head(f"/v2/tok/ro/manifests/{d}", headers={"Accept": d.media_type}).status_code == 200


def test_token_service_outage_is_retried(token_registry, token_issuer, password_env):
    with token_registry.client() as c:
        d = push_image(c, "tok/outage", "v1")
    token_issuer.reset()
    token_issuer.fail_next = [503]
    got, _ = run(cfg(token_registry.url, auth=password_env), lambda cl: cl.head_manifest("tok/outage", "v1"))
    assert got == d


# --- the Docker client's config ------------------------------------------------------------------

def test_docker_config_auths_entry(token_registry, token_issuer, docker_config):
    with token_registry.client() as c:
        d = push_image(c, "tok/dockercfg", "v1")
    auth = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
    (docker_config / "config.json").write_text(json.dumps(
        {"auths": {f"https://{token_registry.host}/v1/": {"auth": auth}, "other.example": {"auth": "eDp5"}}}))
    got, client = run(cfg(token_registry.url), lambda cl: cl.head_manifest("tok/dockercfg", "v1"))
    assert got == d
    creds = client.auth.credentials()
    assert creds.username == REGISTRY_USER and REGISTRY_PASSWORD not in repr(creds)


def test_credential_helpers_and_creds_store(token_registry, token_issuer, docker_config, tmp_path, monkeypatch):
    with token_registry.client() as c:
        d = push_image(c, "tok/helper", "v1")
    bindir, log = tmp_path / "bin", tmp_path / "helper.log"
    write_helper(bindir, "regsweep-a", {token_registry.host: (REGISTRY_USER, REGISTRY_PASSWORD)}, log)
    write_helper(bindir, "regsweep-store", {token_registry.host: (READER_USER, READER_PASSWORD)}, log)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    # credHelpers for this host wins over credsStore and auths.
    (docker_config / "config.json").write_text(json.dumps({
        "credsStore": "regsweep-store", "credHelpers": {token_registry.host: "regsweep-a"},
        "auths": {token_registry.host: {"auth": base64.b64encode(b"nobody:nothing").decode()}}}))
    got, client = run(cfg(token_registry.url), lambda cl: cl.head_manifest("tok/helper", "v1"))
    assert got == d and client.auth.credentials().username == REGISTRY_USER
    assert client.auth.credentials().origin == "docker-credential-regsweep-a"

    # Without a credHelper entry, the credsStore answers.
    (docker_config / "config.json").write_text(json.dumps({"credsStore": "regsweep-store"}))
    assert docker_config_credentials(token_registry.host).username == READER_USER
    # A store that does not know the host means anonymous, not an error.
    assert docker_config_credentials("elsewhere.example:5000") is None
    assert f"get {token_registry.host}" in log.read_text()


def test_missing_credential_helper_is_an_auth_error(docker_config):
    (docker_config / "config.json").write_text(json.dumps({"credHelpers": {"reg.example": "nonexistent-xyz"}}))
    with pytest.raises(RegistryAuthError) as e:
        resolve_credentials("reg.example", None)
    assert "docker-credential-nonexistent-xyz" in str(e.value) and "PATH" in str(e.value)


@pytest.mark.unit
def test_configured_credentials_win_over_the_docker_config(docker_config, monkeypatch):
    (docker_config / "config.json").write_text(json.dumps(
        {"auths": {"reg.example": {"auth": base64.b64encode(b"docker:pw").decode()}}}))
    monkeypatch.setenv("REGSWEEP_TEST_PASSWORD", "s3cret")
    config = cfg("https://reg.example", auth={"username": "ci", "password_env": "REGSWEEP_TEST_PASSWORD"})
    assert resolve_credentials("reg.example", config.registry.auth) == Credentials("ci", "s3cret", origin="registry.auth")
    assert resolve_credentials("reg.example", None).username == "docker"
    assert resolve_credentials("unknown.example", None) is None
    assert "s3cret" not in repr(resolve_credentials("reg.example", config.registry.auth))


def test_a_password_file_logs_in_without_its_trailing_newline(htpasswd_registry, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(REGISTRY_PASSWORD + "\n")
    config = cfg(htpasswd_registry.url, auth={"username": REGISTRY_USER, "password_file": str(secret)})
    _, client = run(config, lambda cl: cl.ping())
    assert client.auth.scheme == "basic"


# --- TLS ---------------------------------------------------------------------------------------------

def test_tls_with_the_throwaway_ca(tls_registry, tmp_path):
    with tls_registry.client() as c:
        d = push_image(c, "tls/app", "v1")
    _, _ = run(cfg(tls_registry.url, caFile=str(tls_registry.ca_pem)), lambda cl: cl.ping())
    result, _ = scan(cfg(tls_registry.url, tmp_path, caFile=str(tls_registry.ca_pem), repositories=["tls/app"]))
    assert [t["digest"] for t in result.tags] == [d]


def test_tls_fails_without_the_ca_unless_insecure(tls_registry):
    with pytest.raises(RegistryUnreachable) as e:
        run(cfg(tls_registry.url), lambda cl: cl.ping())
    msg = str(e.value)
    assert tls_registry.host in msg and "TLS" in msg and "registry.caFile" in msg and "\n" not in msg
    _, client = run(cfg(tls_registry.url, insecure=True), lambda cl: cl.ping())
    assert client.requests == 1   # a verification failure is not retried


def test_unreadable_ca_file_is_a_config_error(tmp_path):
    from tasks.common.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        run(cfg("https://127.0.0.1:1", caFile=str(tmp_path / "missing.pem")), lambda cl: cl.ping())
    assert e.value.key == "registry.caFile"


def test_challenge_auth_reuses_what_the_registry_accepted(token_registry, token_issuer, htpasswd_registry):
    """The auth object is a plain httpx.Auth for async clients: other code may use it without RegistryClient."""
    import httpx

    with token_registry.client() as c:
        d = push_image(c, "tok/reuse", "v1")
    token_issuer.reset()
    auth = ChallengeAuth(token_registry.host, Credentials(REGISTRY_USER, REGISTRY_PASSWORD))
    basic = ChallengeAuth(htpasswd_registry.host, Credentials(REGISTRY_USER, REGISTRY_PASSWORD))

    async def go():
        async with httpx.AsyncClient(base_url=token_registry.url, auth=auth) as c:
            for _ in range(3):
                r = await c.head("/v2/tok/reuse/manifests/v1", headers={"Accept": d.media_type})
                assert r.status_code == 200 and r.headers["docker-content-digest"] == d
        async with httpx.AsyncClient(base_url=htpasswd_registry.url, auth=basic) as c:
            assert (await c.get("/v2/")).status_code == 200
            return await c.get("/v2/_catalog")          # sent with Basic up front: no second 401

    r = asyncio.run(go())
    assert token_issuer.count == 1 and auth.scheme == "bearer"
    assert r.status_code == 200 and len(r.history) == 0


def test_challenge_auth_refuses_a_synchronous_client(token_registry):
    """One auth flow, the async one: a synchronous httpx.Client gets a clear error, not a second flow."""
    import httpx

    auth = ChallengeAuth(token_registry.host, Credentials(REGISTRY_USER, REGISTRY_PASSWORD))
    with httpx.Client(base_url=token_registry.url, auth=auth) as c:
        with pytest.raises(TypeError, match="httpx.AsyncClient only"):
            c.get("/v2/")


# --- Prefect Secret blocks ------------------------------------------------------------------------

def test_password_from_a_prefect_secret_block_reaches_no_parameter(prefect_harness, htpasswd_registry, tmp_path):
    """A deployment names the block; the password lives on the Prefect server, read when needed."""
    from prefect.blocks.system import Secret

    from flows.snapshot import snapshot_flow
    from tasks.store.store import Store

    Secret(value=REGISTRY_PASSWORD).save("regsweep-test-registry", overwrite=True)
    with htpasswd_registry.client() as c:
        d = push_image(c, "block/app", "v1")
    config = cfg(htpasswd_registry.url, tmp_path, {"username": REGISTRY_USER, "password_block": "regsweep-test-registry"},
                 repositories=["block/app"])
    assert REGISTRY_PASSWORD not in config.model_dump_json()   # what Prefect stores as the flow's parameters
    sid = snapshot_flow(config=config, sources=["registry"])
    tags = Store(config.store).snapshots.table(sid, "tags").to_pylist()
    assert [(t["tag"], t["digest"]) for t in tags] == [("v1", d)]
    assert REGISTRY_PASSWORD not in json.dumps(Store(config.store).snapshots.meta(sid))


def test_a_missing_secret_block_names_the_key(prefect_harness, htpasswd_registry, tmp_path):
    from tasks.common.errors import ConfigError

    config = cfg(htpasswd_registry.url, tmp_path, {"username": REGISTRY_USER, "password_block": "no-such-block"})
    with pytest.raises(ConfigError, match=r"^registry.auth.password_block: no Secret block 'no-such-block'"):
        resolve_credentials(htpasswd_registry.host, config.registry.auth)
