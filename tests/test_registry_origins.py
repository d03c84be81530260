"""Credentials never leave their origin (tasks/registry/transport.py, tasks/registry/auth.py).

Against the real htpasswd and token registries (tests/support/registry.py) and the fake native
APIs, behind a hostile front (tests/support/hostile.py), with 127.0.0.2 as "another host" that
records what it receives. Every attack fails with one line, the other host receives no
credential, and the secret is in no error.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import trustme

from tasks.common.errors import RegistryAuthError, RegistryError, RegistryUnreachable
from tasks.config.models import parse_config
from tasks.registry.backends import open_backend
from tasks.registry.capabilities import probe
from tasks.registry.distribution import RegistryClient, RetryPolicy
from testbed import push_image
from tests.support.fakeapi import TOKEN as API_TOKEN
from tests.support.hostile import Front, Recorder, tls_context
from tests.support.registry import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support.configs import SWEEP, config as test_config
from tests.support.sweeps import TARGET_DELETES, journal_events, old, plan_of, status
from tests.support.registry import token_issuer, unique_repo  # noqa: F401 (fixtures)
from tests.support.sweeps import sweep  # noqa: F401 (fixtures)
from tests.support.dockerhub import dockerhub_api  # noqa: F401 (fixtures)
from tests.support.gitlab import gitlab_api  # noqa: F401 (fixtures)
from tests.support.github import github_api  # noqa: F401 (fixtures)
from tests.support.harbor import harbor_api  # noqa: F401 (fixtures)

ONCE = RetryPolicy(attempts=1)
PW_ENV = "REGSWEEP_ORIGIN_TEST_PASSWORD"


@pytest.fixture
def password(monkeypatch):
    monkeypatch.setenv(PW_ENV, REGISTRY_PASSWORD)
    return {"username": REGISTRY_USER, "password_env": PW_ENV}


def config(url: str, auth: dict | None = None, **registry):
    data = {"url": url, "allowInsecureCredentials": True, **registry}
    if auth:
        data["auth"] = auth
    return parse_config({"registry": data}).registry


def call(cfg, fn):
    async def go():
        async with RegistryClient(cfg, retry=ONCE) as client:
            return await fn(client)
    return asyncio.run(go())


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and REGISTRY_PASSWORD not in text and API_TOKEN not in text
    return text


def image(reg, repo: str) -> tuple[str, str]:
    """Push an image; (manifest digest, config digest)."""
    with reg.client() as c:
        d = push_image(c, repo, "v1", config={"config": {"Labels": {"repo": repo}}})
    return str(d), json.loads(d.body)["config"]["digest"]


@pytest.fixture(scope="module")
def ca():
    return trustme.CA(organization_name="regsweep origin tests")


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
def test_a_challenge_from_where_a_redirect_led_is_not_honoured(kind, request, password, token_issuer):
    reg = request.getfixturevalue(f"{kind}_registry")
    repo = f"origins/cdn-{kind}"
    _, config_digest = image(reg, repo)
    with Recorder(respond=lambda seen: (401, {"message": "log in"}, {
            "WWW-Authenticate": f'Bearer realm="http://{cdn.host}/token",service="cdn"'})) as cdn, \
            Front(reg.url) as front:
        front.answer("GET", rf"/blobs/{config_digest}$", 307, headers={"Location": f"{cdn.url}/b/{config_digest}"})

        async def go(c):
            await c.ping()                     # logged in: the registry gets the credentials
            return await c.get_blob(repo, config_digest)

        with pytest.raises(RegistryError) as e:
            call(config(front.url, password), go)

        assert type(e.value) is RegistryError and not e.value.retryable
        assert one_line(e.value).endswith(f"HTTP 401 from {cdn.host}, where a redirect led: credentials are sent to "
                                          "the registry's own origin only")
        assert [s.path for s in cdn.seen] == [f"/b/{config_digest}"]     # the token realm there: never asked
        assert cdn.credentials_seen() == []
        assert front.credentials_seen()


def test_a_blob_on_another_host_is_read_without_credentials(htpasswd_registry, password):
    repo = "origins/cdn-ok"
    _, config_digest = image(htpasswd_registry, repo)
    with htpasswd_registry.client() as c:
        blob = c.get(f"/v2/{repo}/blobs/{config_digest}").content
    with Recorder(respond=lambda seen: (200, blob, {})) as cdn, Front(htpasswd_registry.url) as front:
        front.answer("GET", rf"/blobs/{config_digest}$", 307, headers={"Location": f"{cdn.url}/b"})

        got = call(config(front.url, password), lambda c: c.get_blob(repo, config_digest))

    assert got == blob and [s.path for s in cdn.seen] == ["/b"] and cdn.credentials_seen() == []


def test_a_delete_answered_with_a_redirect_fails_and_is_not_followed(registry, unique_repo):
    digest, _ = image(registry, unique_repo)
    with Front(registry.url) as front:
        front.answer("DELETE", "/manifests/", 302, headers={"Location": "/v2/"})
        cfg = config(front.url)

        with pytest.raises(RegistryError) as e:
            call(cfg, lambda c: c.delete_manifest(unique_repo, digest))

        assert one_line(e.value) == (f"registry {front.host}/{unique_repo}@{digest}: the registry redirected a DELETE "
                                     f"(HTTP 302 to {front.host}); not followed")

        async def probed():
            async with open_backend(cfg, retry=ONCE) as backend:
                return await probe(backend, unique_repo)

        caps = asyncio.run(probed())

        assert (caps.delete_digest, caps.delete_tag) == ("unknown", "unknown")
        assert "the registry redirected a DELETE (HTTP 302" in caps.notes["delete_digest"]
        assert front.count("GET", "^/v2/$") == 0 and front.count("DELETE") == 3
    with registry.client() as c:
        assert status(c, unique_repo, digest) == 200


def test_a_sweep_whose_deletes_are_redirected_records_none_as_done(sweep, registry, registry_client, unique_repo,
                                                                     tmp_path):
    from tasks.common.errors import SweepFailed
    from tasks.config.models import load_config

    doomed = old(registry_client, unique_repo, "a")
    with Front(registry.url) as front:
        cfg = load_config(test_config(SWEEP, url=front.url, repositories=[unique_repo], write=tmp_path))
        plan = plan_of(cfg)
        front.answer("DELETE", TARGET_DELETES, 303, headers={"Location": "/v2/after-delete"})

        with pytest.raises(SweepFailed) as e:
            sweep(cfg, plan, approve=True)

        assert front.count(None, "after-delete") == 0 and front.count("DELETE", TARGET_DELETES) == 1
    report = e.value.report
    assert (report.deleted, report.failed) == (0, 1)
    assert "the registry redirected a DELETE (HTTP 303" in next(o.detail for o in report.outcomes if o.status == "failed")
    events = [ev["event"] for ev in journal_events(cfg, plan)]
    assert "failed" in events and "done" not in events
    assert status(registry_client, unique_repo, doomed) == 200


# --------------------------------------------------------------------------- token realms


def test_a_realm_other_than_the_one_v2_names_gets_no_credentials(token_registry, token_issuer, password):
    repo = "origins/realm"
    digest, _ = image(token_registry, repo)
    with Recorder() as evil, Front(token_registry.url) as front:
        def elsewhere(ex):
            ex.set_header("WWW-Authenticate", f'Bearer realm="{evil.url}/token",service="x",scope="repository:{repo}:pull"')
        front.rewrite(None, rf"^/v2/{repo}/", elsewhere)

        for first in ("ping", "no ping"):
            async def go(c):
                if first == "ping":
                    await c.ping()
                return await c.head_manifest(repo, "v1")

            before = front.count("GET", "^/v2/$")
            with pytest.raises(RegistryAuthError) as e:
                call(config(front.url, password), go)

            assert one_line(e.value).endswith(f"token realm {evil.url}/token is not the one the registry's /v2/ names "
                                              f"({token_issuer.url}/token); refusing to send credentials")
        # Without a ping first, the flow asked /v2/ itself, once.
        assert front.count("GET", "^/v2/$") - before == 1
        assert evil.seen == []
    assert call(config(token_registry.url, password), lambda c: c.head_manifest(repo, "v1")) == digest


def test_an_http_realm_for_an_https_registry_gets_no_credentials(token_registry, token_issuer, password, ca, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with Front(token_registry.url, tls=tls_context(ca, "127.0.0.1")) as front:
        with pytest.raises(RegistryAuthError) as e:
            call(config(front.url, password, caFile=str(ca_file)), lambda c: c.ping())

    assert one_line(e.value) == (f"registry {front.host}: token realm {token_issuer.url}/token is not https; "
                                 "refusing to send credentials")
    assert token_issuer.count == 0 and token_issuer.refused == 0


def test_insecure_reaches_the_registrys_own_origin_only_not_a_realm_elsewhere(token_registry, token_issuer, password):
    untrusted = trustme.CA(organization_name="nobody trusts this")
    with Front(token_issuer.url, tls=tls_context(untrusted, "localhost")) as realm, \
            Front(token_registry.url, tls=tls_context(untrusted, "127.0.0.1")) as front:
        realm_url = f"https://localhost:{realm.port}/token"
        front.rewrite(None, "^/v2/", lambda ex: ex.set_header(
            "WWW-Authenticate", ex.header("WWW-Authenticate").replace(f"{token_issuer.url}/token", realm_url))
            if ex.header("WWW-Authenticate") else None)

        with pytest.raises(RegistryUnreachable) as e:
            call(config(front.url, password, insecure=True), lambda c: c.ping())

        assert "TLS handshake failed" in one_line(e.value)
        assert front.count("GET", "^/v2/$") == 1        # the registry's own origin: reached, unverified
        assert realm.seen == [] and token_issuer.count == 0


# --------------------------------------------------------------------------- native APIs


def test_a_native_api_redirected_elsewhere_sends_it_no_token(gitlab_api, registry, monkeypatch):
    monkeypatch.setenv("REGSWEEP_ORIGIN_TOKEN", API_TOKEN)
    api = gitlab_api(registry, projects={"grp/app": 7})
    with Recorder(respond=lambda seen: (401, {"message": "401 Unauthorized"}, {})) as evil, Front(api.url) as front:
        front.answer("GET", "^/api/v4/projects/", 302, headers={"Location": f"{evil.url}/api/v4/projects/7"})
        for header in ("PRIVATE-TOKEN", "JOB-TOKEN"):
            env = "CI_JOB_TOKEN" if header == "JOB-TOKEN" else "REGSWEEP_ORIGIN_TOKEN"
            monkeypatch.setenv(env, API_TOKEN)
            cfg = config(registry.url, api="gitlab", gitlab={"url": front.url, "project": "grp/app", "token_env": env})

            async def ping():
                async with open_backend(cfg, retry=ONCE) as backend:
                    await backend.ping()

            with pytest.raises(RegistryError) as e:
                asyncio.run(ping())

            assert one_line(e.value) == (f"registry {registry.host}: HTTP 401 from {evil.host}, where a redirect led: "
                                         "credentials are sent to the registry's own origin only")
        assert len(evil.seen) == 2 and evil.credentials_seen() == [] and not evil.received(API_TOKEN)
        assert front.credentials_seen() == [f"private-token: {API_TOKEN}", f"job-token: {API_TOKEN}"]


def test_a_login_redirected_elsewhere_is_not_followed(dockerhub_api, registry, monkeypatch):
    monkeypatch.setenv("REGSWEEP_ORIGIN_TOKEN", API_TOKEN)
    api = dockerhub_api(registry, users={"bot": API_TOKEN})
    with Recorder() as evil, Front(api.url) as front:
        front.answer("POST", "^/v2/auth/token", 307, headers={"Location": f"{evil.url}/v2/auth/token"})
        cfg = config(registry.url, api="dockerhub", dockerhub={"url": front.url, "namespace": "acme",
                                                               "username": "bot", "token_env": "REGSWEEP_ORIGIN_TOKEN"})

        async def opened():
            async with open_backend(cfg, retry=ONCE):
                pass

        with pytest.raises(RegistryError) as e:
            asyncio.run(opened())

    assert one_line(e.value) == (f"registry {registry.host}: the registry redirected a POST (HTTP 307 to {evil.host}); "
                                 "not followed")
    assert evil.seen == []


def test_insecure_does_not_reach_a_native_api_on_another_origin(tls_registry, monkeypatch):
    monkeypatch.setenv("REGSWEEP_ORIGIN_TOKEN", API_TOKEN)
    # The same server under another name is another origin: its certificate is verified.
    other = tls_registry.url.replace("127.0.0.1", "localhost")
    cfg = config(tls_registry.url, insecure=True, api="gitlab",
                 gitlab={"url": other, "project": "grp/app", "token_env": "REGSWEEP_ORIGIN_TOKEN"})

    async def go():
        async with open_backend(cfg, retry=ONCE) as backend:
            await backend.oci.ping()           # the registry's own origin: insecure as asked
            await backend.ping()               # GitLab's API elsewhere: verified, and refused

    with pytest.raises(RegistryUnreachable, match="TLS handshake failed") as e:
        asyncio.run(go())
    one_line(e.value)
