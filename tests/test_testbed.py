"""The registry testbed really works: what is pushed through the HTTP API comes back."""

from __future__ import annotations

import json

import httpx
import jwt
import pytest

from tasks.registry.auth import ChallengeAuth, Credentials
from tasks.oci.manifest import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, fallback_tag, sha256_digest
from testbed import (MANIFEST_ACCEPT, LocalRegistry, LocalRegistryError, PushError, get_manifest, push_artifact,
                     push_image, push_index, push_raw_manifest, push_repositories, push_tags, seed_demo, tag_manifest)
from tests.support.registry import READER_PASSWORD, READER_USER, REGISTRY_PASSWORD, REGISTRY_USER
from tests.support.registry import fault_proxy, fresh_registry, token_issuer, unique_repo  # noqa: F401 (fixtures)


def test_pushed_image_reads_back_by_tag_and_digest(registry_client, unique_repo):
    digest = push_image(registry_client, unique_repo, "v1",
                        config={"created": "2024-05-01T12:00:00Z", "config": {"Labels": {"a": "b"}}},
                        annotations={"org.opencontainers.image.revision": "0" * 40})
    by_tag = registry_client.get(f"/v2/{unique_repo}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    by_digest = registry_client.get(f"/v2/{unique_repo}/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT})
    assert by_tag.status_code == by_digest.status_code == 200
    assert by_tag.content == by_digest.content == digest.body
    assert by_tag.headers["docker-content-digest"] == digest == sha256_digest(by_tag.content)
    assert by_tag.headers["content-type"] == OCI_MANIFEST
    manifest = json.loads(by_tag.content)
    assert manifest["annotations"]["org.opencontainers.image.revision"] == "0" * 40
    config = registry_client.get(f"/v2/{unique_repo}/blobs/{manifest['config']['digest']}").json()
    assert config["created"] == "2024-05-01T12:00:00Z"
    assert config["config"]["Labels"] == {"a": "b"}


def test_index_children_and_bulk_tags(registry_client, unique_repo):
    amd = push_image(registry_client, unique_repo, None, config={"architecture": "amd64"})
    arm = push_image(registry_client, unique_repo, None, config={"architecture": "arm64"})
    index = push_index(registry_client, unique_repo, "multi",
                       [(amd, {"architecture": "amd64", "os": "linux"}),
                        (arm, {"architecture": "arm64", "os": "linux"})])
    got = registry_client.get(f"/v2/{unique_repo}/manifests/multi", headers={"Accept": MANIFEST_ACCEPT})
    assert got.headers["content-type"] == OCI_INDEX
    assert [m["digest"] for m in got.json()["manifests"]] == [amd, arm]
    assert got.headers["docker-content-digest"] == index

    tags = push_tags(registry_client, unique_repo, [f"b{i}" for i in range(50)])
    assert len(set(tags.values())) == 50
    listed = registry_client.get(f"/v2/{unique_repo}/tags/list", params={"n": 1000}).json()["tags"]
    assert set(listed) == {"multi", *tags}


def test_basic_auth_refuses_wrong_password_and_accepts_the_right_one(htpasswd_registry):
    url = f"{htpasswd_registry.url}/v2/"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, auth=(REGISTRY_USER, "wrong")).status_code == 401
    assert httpx.get(url, auth=(REGISTRY_USER, REGISTRY_PASSWORD)).status_code == 200
    with htpasswd_registry.client() as client:
        digest = push_image(client, "auth/basic", "v1")
        assert client.head(f"/v2/auth/basic/manifests/{digest}",
                           headers={"Accept": MANIFEST_ACCEPT}).status_code == 200


def test_token_flow_gives_a_token_the_registry_accepts(token_registry, token_issuer):
    challenge = httpx.get(f"{token_registry.url}/v2/_catalog")
    assert challenge.status_code == 401
    assert f'realm="{token_issuer.realm}"' in challenge.headers["www-authenticate"]
    assert 'scope="registry:catalog:*"' in challenge.headers["www-authenticate"]

    wrong = httpx.get(token_issuer.realm, params={"service": token_issuer.service,
                                                  "scope": "registry:catalog:*"},
                      auth=(REGISTRY_USER, "wrong"))
    assert wrong.status_code == 401 and token_issuer.refused == 1 and token_issuer.count == 0

    answer = httpx.get(token_issuer.realm, params={"service": token_issuer.service,
                                                   "scope": "registry:catalog:*", "account": REGISTRY_USER},
                       auth=(REGISTRY_USER, REGISTRY_PASSWORD))
    assert answer.status_code == 200
    body = answer.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300 and body["issued_at"]
    catalog = httpx.get(f"{token_registry.url}/v2/_catalog",
                        headers={"Authorization": f"Bearer {body['token']}"})
    assert catalog.status_code == 200 and "repositories" in catalog.json()
    assert token_issuer.count == 1 and token_issuer.issued[0].scopes == ["registry:catalog:*"]

    # The same token carries no right to a repository: the registry asks for another scope.
    other = httpx.get(f"{token_registry.url}/v2/auth/token/tags/list",
                      headers={"Authorization": f"Bearer {body['token']}"})
    assert other.status_code == 401
    assert 'scope="repository:auth/token:pull"' in other.headers["www-authenticate"]


def test_token_registry_push_and_pull_only_account(token_registry, token_issuer):
    with token_registry.client() as client:
        digest = push_image(client, "auth/token", "v1")
        assert client.get("/v2/auth/token/tags/list").json()["tags"] == ["v1"]
    assert token_issuer.count >= 2  # pull,push for the upload, then pull for the listing

    with token_registry.client(auth=ChallengeAuth(token_registry.host, Credentials(READER_USER, READER_PASSWORD))) as reader:
        assert reader.get(f"/v2/auth/token/manifests/{digest}",
                          headers={"Accept": MANIFEST_ACCEPT}).status_code == 200
        assert reader.delete(f"/v2/auth/token/manifests/{digest}").status_code == 401
    granted = [t for t in token_issuer.issued if t.account == READER_USER]
    assert granted and all(a["actions"] in (["pull"], [])
                           for t in granted for a in jwt.decode(t.token, options={"verify_signature": False})["access"])


def test_tls_verifies_with_the_ca_and_fails_without_it(tls_registry):
    assert tls_registry.url.startswith("https://127.0.0.1:")
    with tls_registry.client() as trusted:
        assert trusted.get("/v2/").status_code == 200
        push_image(trusted, "tls/app", "v1")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_registry.url}/v2/")
    assert httpx.get(f"{tls_registry.url}/v2/", verify=False).status_code == 200


def test_fault_proxy_injects_then_recovers(fault_proxy, registry_client, unique_repo):
    push_image(registry_client, unique_repo, "v1")
    tags_url = f"{fault_proxy.url}/v2/{unique_repo}/tags/list"
    fault_proxy.inject(503, times=2, method="GET", path=r"/tags/list")
    fault_proxy.inject(429, times=1, path=r"/tags/list", retry_after=3)
    with httpx.Client() as client:
        assert [client.get(tags_url).status_code for _ in range(2)] == [503, 503]
        throttled = client.get(tags_url)
        assert throttled.status_code == 429 and throttled.headers["retry-after"] == "3"
        assert client.get(tags_url).json()["tags"] == ["v1"]
        fault_proxy.inject(drop=True, path=r"/manifests/")
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"{fault_proxy.url}/v2/{unique_repo}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
        assert client.get(f"{fault_proxy.url}/v2/{unique_repo}/manifests/v1",
                          headers={"Accept": MANIFEST_ACCEPT}).status_code == 200
    assert fault_proxy.count("GET", r"/tags/list") == 4
    assert fault_proxy.count(path=r"/manifests/") == 2
    assert [f[2] for f in fault_proxy.faulted] == ["503", "503", "429", "drop"]


def test_pushes_through_the_fault_proxy_land_in_the_registry(fault_proxy, registry_client, unique_repo):
    with httpx.Client(base_url=fault_proxy.url) as via_proxy:
        digest = push_image(via_proxy, unique_repo, "v1", layers=[b"through the proxy"])
    assert fault_proxy.count("PUT", r"/blobs/uploads/") == 2  # layer and config, uploads followed the proxy
    assert registry_client.get(f"/v2/{unique_repo}/manifests/v1",
                               headers={"Accept": MANIFEST_ACCEPT}).headers["docker-content-digest"] == digest


def test_docker_media_types_artifacts_and_referrers_fallback(registry_client, unique_repo):
    image = push_image(registry_client, unique_repo, "d1", media_type="docker")
    assert image.media_type == DOCKER_MANIFEST
    lst = push_index(registry_client, unique_repo, "dlist", [(image, {"architecture": "amd64", "os": "linux"})],
                     media_type="docker")
    assert get_manifest(registry_client, unique_repo, "dlist") == (lst.body, DOCKER_LIST)

    target = push_image(registry_client, unique_repo, "v1")
    sig = push_artifact(registry_client, unique_repo, subject="v1",
                        artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json")
    sbom = push_artifact(registry_client, unique_repo, subject=target, artifact_type="application/spdx+json",
                         annotations={"org.opencontainers.image.created": "2024-05-01T00:00:00Z"})
    assert json.loads(sig.body)["subject"] == target.descriptor()
    fallback = fallback_tag(target)
    assert fallback == "sha256-" + target.removeprefix("sha256:")
    body, media_type = get_manifest(registry_client, unique_repo, fallback)
    index = json.loads(body)
    assert media_type == OCI_INDEX
    assert [(m["digest"], m["artifactType"]) for m in index["manifests"]] == [
        (sig, "application/vnd.dev.cosign.artifact.sig.v1+json"), (sbom, "application/spdx+json")]
    assert index["manifests"][1]["annotations"] == {"org.opencontainers.image.created": "2024-05-01T00:00:00Z"}
    # Distribution 2.8 has no referrers API: that is why the fallback tag exists.
    assert registry_client.get(f"/v2/{unique_repo}/referrers/{target}").status_code == 404

    retagged = tag_manifest(registry_client, unique_repo, "v1", "v1-copy")
    assert retagged == target
    with pytest.raises(PushError, match="MANIFEST_INVALID"):
        push_raw_manifest(registry_client, unique_repo, "broken", b"{not json", OCI_MANIFEST)


def test_garbage_collect_frees_deleted_blobs_and_restarts_on_the_same_port(fresh_registry):
    reg = fresh_registry()
    url = reg.url
    with reg.client() as client:
        keep = push_image(client, "gc/app", "keep", layers=[b"kept layer"])
        gone = push_image(client, "gc/app", "gone", layers=[b"x" * 200_000])
        assert client.delete(f"/v2/gc/app/manifests/{gone}").status_code == 202
        before = reg.disk_usage()
        output = reg.garbage_collect()
        assert reg.url == url and reg.running
        assert f"blob eligible for deletion: {gone}" in output
        assert reg.disk_usage() < before - 150_000
        assert client.get("/v2/gc/app/tags/list").json()["tags"] == ["keep"]
        assert client.head(f"/v2/gc/app/manifests/{keep}", headers={"Accept": MANIFEST_ACCEPT}).status_code == 200


def test_many_repositories_and_catalog_pagination(fresh_registry):
    reg = fresh_registry()
    with reg.client() as client:
        pushed = push_repositories(client, {f"many/r{i:03d}": ["v1", "v2"] for i in range(120)})
        assert len(pushed) == 120 and all(len(set(t.values())) == 2 for t in pushed.values())
        first = client.get("/v2/_catalog")
        assert len(first.json()["repositories"]) == 100 and 'rel="next"' in first.headers["link"]
        assert len(client.get("/v2/_catalog", params={"n": 1000}).json()["repositories"]) == 120


def test_missing_binary_and_bad_config_fail_with_readable_messages(tmp_path):
    with pytest.raises(LocalRegistryError, match="apt-get install docker-registry"):
        LocalRegistry(tmp_path / "a", binary="no-such-docker-registry-binary").start()
    broken = LocalRegistry(tmp_path / "b", extra={"storage": {"inmemory": {}}})
    with pytest.raises(LocalRegistryError, match="(?s)exited with code.*storage"):
        broken.start()
    assert not broken.running


def test_seed_demo_fills_a_registry_from_a_git_history(fresh_registry, tmp_path):
    from datetime import datetime, timezone

    from testbed.demo import build_history

    history = build_history(tmp_path / "git", datetime.now(timezone.utc))
    assert {"main", "release/1.2", "feature/login", "feature/search-v1"} == set(history.branches)
    reg = fresh_registry()
    summary = seed_demo(reg.url, history)
    with reg.client() as client:
        catalog = client.get("/v2/_catalog").json()["repositories"]
        assert set(summary["repositories"]) <= set(catalog)
        for repo, tags in summary["repositories"].items():
            listed = set(client.get(f"/v2/{repo}/tags/list").json()["tags"])
            assert set(tags) <= listed
        head = history.sha("main", 0)
        web = summary["repositories"]["demo/web"]
        index = json.loads(get_manifest(client, "demo/web", f"sha-{head[:12]}")[0])
        assert index["annotations"]["org.opencontainers.image.revision"] == head
        assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
        assert web["latest"] == web[f"sha-{head[:12]}"]
        api = summary["repositories"]["demo/api"]
        assert api["v1.2.0"] == api[f"sha-{history.tags['v1.2.0'][:12]}"]
        for subject in summary["signatures"]["demo/api"]:   # signed: found through the referrers fallback tag
            referrers = json.loads(get_manifest(client, "demo/api", fallback_tag(subject))[0])
            assert referrers["manifests"][0]["artifactType"] == "application/vnd.dev.cosign.artifact.sig.v1+json"


def test_token_issuer_can_mint_expired_tokens_and_fail_on_demand(token_registry, token_issuer):
    params = {"service": token_issuer.service, "scope": "registry:catalog:*"}
    token_issuer.fail_next.append(503)
    assert httpx.get(token_issuer.realm, params=params, auth=token_registry.credentials).status_code == 503
    token_issuer.expires_in = 2
    token_issuer.jwt_lifetime = -61  # beyond Distribution's 60 s leeway
    answer = httpx.get(token_issuer.realm, params=params, auth=token_registry.credentials).json()
    assert answer["expires_in"] == 2
    refused = httpx.get(f"{token_registry.url}/v2/_catalog", headers={"Authorization": f"Bearer {answer['token']}"})
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert token_issuer.count == 1
