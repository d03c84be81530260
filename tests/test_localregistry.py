"""The registry testbed really works: what is pushed through the HTTP API comes back."""

from __future__ import annotations

import json

from tasks.localregistry import (MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST, push_image, push_index,
                                 push_tags, sha256_digest)


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
