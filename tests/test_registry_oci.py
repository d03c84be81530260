"""Manifest, config, Link and WWW-Authenticate parsing as plain data (tasks/oci/manifest.py, tasks/registry/auth.py)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from tasks.oci import manifest as oci
from tasks.registry.auth import Challenge, parse_challenges, resource_scope
from tasks.common.units import parse_build_time

pytestmark = pytest.mark.unit   # pure functions: no server, registry, cluster, git repository or flow


def manifest(**extra):
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
           "config": {"mediaType": oci.OCI_CONFIG, "digest": "sha256:" + "c" * 64, "size": 100},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "1" * 64, "size": 1000},
                      {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "2" * 64, "size": 24}]}
    doc.update(extra)
    return json.dumps(doc).encode()


def test_image_manifest_sizes_and_annotations():
    m = oci.parse_manifest(manifest(annotations={oci.ANN_REVISION: "abc1234", oci.ANN_CREATED: "2024-02-03T04:05:06Z"}),
                           oci.OCI_MANIFEST)
    assert m.kind == "image" and m.own_size == 1124 and m.has_image_config
    created, revision, source = oci.build_facts(m, None)
    assert created == datetime(2024, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    assert (revision, source) == ("abc1234", "annotation")


def test_artifacts_by_artifact_type_config_type_or_subject():
    subject = {"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + "5" * 64, "size": 10}
    by_type = oci.parse_manifest(manifest(artifactType="application/spdx+json"), oci.OCI_MANIFEST)
    by_config = oci.parse_manifest(manifest(config={"mediaType": "application/vnd.cncf.helm.config.v1+json",
                                                     "digest": "sha256:" + "d" * 64, "size": 5}), oci.OCI_MANIFEST)
    by_subject = oci.parse_manifest(manifest(subject=subject), oci.OCI_MANIFEST)
    assert (by_type.kind, by_type.artifact_type) == ("artifact", "application/spdx+json")
    assert (by_config.kind, by_config.artifact_type) == ("artifact", "application/vnd.cncf.helm.config.v1+json")
    assert (by_subject.kind, by_subject.subject) == ("artifact", "sha256:" + "5" * 64)


def test_index_children_and_platforms():
    body = json.dumps({"schemaVersion": 2, "mediaType": oci.DOCKER_LIST, "manifests": [
        {"mediaType": oci.DOCKER_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 5,
         "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"mediaType": oci.DOCKER_MANIFEST, "digest": "sha256:" + "b" * 64, "size": 6}]}).encode()
    m = oci.parse_manifest(body, oci.DOCKER_LIST)
    assert m.kind == "index" and [c.platform for c in m.children] == ["linux/arm/v7", None]


@pytest.mark.parametrize("body,media_type", [
    (b"{not json", oci.OCI_MANIFEST),
    (b"[1, 2]", oci.OCI_INDEX),
    (json.dumps({"schemaVersion": 2, "config": "nope"}).encode(), oci.DOCKER_MANIFEST),
    (json.dumps({"schemaVersion": 2, "manifests": [{"digest": 3}]}).encode(), oci.OCI_INDEX),
])
def test_malformed_manifests_are_unknown_with_a_reason(body, media_type):
    m = oci.parse_manifest(body, media_type)
    assert m.kind == "unknown" and m.error and media_type in m.error


def test_unknown_media_type_is_unknown_without_complaint():
    m = oci.parse_manifest(b"whatever", "application/vnd.example+json")
    assert m.kind == "unknown" and m.error is None


def test_effective_media_type_sniffs_generic_content_types():
    assert oci.effective_media_type("application/vnd.oci.image.index.v1+json; charset=utf-8", b"") == oci.OCI_INDEX
    assert oci.effective_media_type("application/json", manifest()) == oci.OCI_MANIFEST
    assert oci.effective_media_type(None, json.dumps({"schemaVersion": 2, "manifests": []}).encode()) == oci.OCI_INDEX
    assert oci.effective_media_type("application/json", b"junk") == "application/json"


@pytest.mark.parametrize("value,expected", [
    ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
    ("2024-01-02T03:04:05.123456789+02:00", datetime(2024, 1, 2, 1, 4, 5, 123456, tzinfo=timezone.utc)),
    ("1970-01-01T00:00:00Z", None),
    ("2012-12-31T23:59:59Z", None),
    ("yesterday", None),
    (None, None),
    (12345, None),
])
def test_parse_created_never_trusts_times_before_2013(value, expected):
    assert parse_build_time(value) == expected


def test_config_labels_and_created():
    body = json.dumps({"created": "2025-01-01T00:00:00Z",
                       "config": {"Labels": {oci.ANN_REVISION: "deadbeef", "x": "y"}}}).encode()
    cfg = oci.parse_config(body)
    assert cfg.created == datetime(2025, 1, 1, tzinfo=timezone.utc) and cfg.labels[oci.ANN_REVISION] == "deadbeef"
    m = oci.parse_manifest(manifest(), oci.OCI_MANIFEST)
    assert oci.build_facts(m, cfg)[1:] == ("deadbeef", "label")
    assert oci.parse_config(b"nope").error and oci.parse_config(b"{}").labels == {}


def test_a_referrers_fallback_tag_names_its_subject_and_other_tags_do_not():
    d = "sha256:" + "ab" * 32
    assert oci.fallback_tag(d) == "sha256-" + "ab" * 32
    assert oci.fallback_subject(oci.fallback_tag(d)) == d
    assert oci.fallback_subject("sha256-" + "ab" * 32 + ".sig") is None   # cosign's own tag scheme
    assert oci.fallback_subject("latest") is None


def test_the_next_page_is_the_link_headers_rel_next():
    assert oci.parse_link_next('</v2/_catalog?last=b&n=100>; rel="next"') == "/v2/_catalog?last=b&n=100"
    assert oci.parse_link_next('<https://x/a>; rel="prev", <https://x/b?n=2>; rel=next') == "https://x/b?n=2"
    assert oci.parse_link_next(None) is None and oci.parse_link_next('<x>; rel="prev"') is None


def test_www_authenticate_challenges_parse_into_scheme_realm_service_scope_and_error():
    header = ('Bearer realm="https://auth.example.com/token",service="registry.example.com",'
              'scope="repository:team/app:pull,push",error="insufficient_scope"')
    assert parse_challenges([header]) == [Challenge("bearer", "https://auth.example.com/token", "registry.example.com",
                                                    "repository:team/app:pull,push", "insufficient_scope")]
    assert parse_challenges(['Basic realm="Registry Realm"']) == [Challenge("basic", "Registry Realm")]
    assert parse_challenges(['Negotiate, Basic realm="x"'])[-1].scheme == "basic"
    assert parse_challenges(['bearer realm=https://t/token, service=svc']) == [Challenge("bearer", "https://t/token", "svc")]


def test_each_request_asks_for_the_token_scope_it_needs_and_a_delete_for_none():
    assert resource_scope("GET", "/v2/team/app/manifests/v1") == "repository:team/app:pull"
    assert resource_scope("HEAD", "/v2/a/b/c/blobs/sha256:x") == "repository:a/b/c:pull"
    assert resource_scope("GET", "/v2/_catalog") == "registry:catalog:*"
    assert resource_scope("DELETE", "/v2/team/app/manifests/sha256:x") is None   # the registry says which
