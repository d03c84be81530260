"""Image references as found in manifests, normalised and matched to the registry being cleaned."""

from __future__ import annotations

import pytest

from tasks.oci.reference import (ImageRef, RegistryMatcher, digest_of_image_id, match_images, normalize_host,
                             parse_reference)

pytestmark = pytest.mark.unit   # pure functions: no server, registry, cluster, git repository or flow

D = "sha256:" + "ab" * 32
D2 = "sha256:" + "cd" * 32


@pytest.mark.parametrize("ref, expected", [
    ("nginx", ImageRef("docker.io", "library/nginx", "latest", None)),
    ("nginx:1.25", ImageRef("docker.io", "library/nginx", "1.25", None)),
    ("docker.io/library/nginx:latest", ImageRef("docker.io", "library/nginx", "latest", None)),
    ("docker.io/nginx", ImageRef("docker.io", "library/nginx", "latest", None)),
    ("index.docker.io/library/nginx", ImageRef("docker.io", "library/nginx", "latest", None)),
    ("registry-1.docker.io/nginx:1", ImageRef("docker.io", "library/nginx", "1", None)),
    ("bitnami/redis:7", ImageRef("docker.io", "bitnami/redis", "7", None)),
    ("host:5000/a/b:tag", ImageRef("host:5000", "a/b", "tag", None)),
    ("registry.example.com/team/app/api:v1.2.3", ImageRef("registry.example.com", "team/app/api", "v1.2.3", None)),
    (f"repo@{D}", ImageRef("docker.io", "library/repo", None, D)),
    (f"repo:tag@{D}", ImageRef("docker.io", "library/repo", "tag", D)),
    (f"host:5000/a@{D}", ImageRef("host:5000", "a", None, D)),
    ("localhost/x", ImageRef("localhost", "x", "latest", None)),
    ("localhost:5000/x:y", ImageRef("localhost:5000", "x", "y", None)),
    ("REGISTRY.Example.com/team/app:v1", ImageRef("registry.example.com", "team/app", "v1", None)),
    ("registry.example.com:443/team/app:v1", ImageRef("registry.example.com", "team/app", "v1", None)),
    ("[::1]:5000/x:1", ImageRef("[::1]:5000", "x", "1", None)),
    ("r.io/a:Tag_With.Upper-1", ImageRef("r.io", "a", "Tag_With.Upper-1", None)),
])
def test_parse_reference_normalises_like_docker(ref, expected):
    assert parse_reference(ref) == expected


@pytest.mark.parametrize("ref", [
    "", "Nginx", "registry.example.com/Team/app", "a//b", "nginx:", "nginx@sha256:abc",
    f"nginx@sha256:{'ab' * 31}", "nginx:tag with space", " nginx", "x" * 300, "a" * 64,
    "registry.example.com/app:" + "t" * 129, "-leading/x", "host:port/x",
])
def test_parse_reference_rejects_invalid(ref):
    with pytest.raises(ValueError, match="invalid image reference"):
        parse_reference(ref)


def test_str_round_trips_a_canonical_reference():
    assert str(parse_reference(f"nginx:1@{D}")) == f"docker.io/library/nginx:1@{D}"
    assert parse_reference(str(parse_reference("host:5000/a/b"))) == parse_reference("host:5000/a/b")


@pytest.mark.parametrize("host, scheme, expected", [
    ("Registry.Example.com:443", "https", "registry.example.com"),
    ("registry.example.com:443", None, "registry.example.com"),
    ("registry.example.com:80", "http", "registry.example.com"),
    ("registry.example.com:80", "https", "registry.example.com:80"),
    ("registry.example.com:443", "http", "registry.example.com:443"),
    ("127.0.0.1:5000", "http", "127.0.0.1:5000"),
    ("https://Registry.Example.com:443", None, "registry.example.com"),
    ("index.docker.io", None, "docker.io"),
    ("registry-1.docker.io:443", "https", "docker.io"),
])
def test_host_spellings_normalise_to_one_name_dropping_the_default_port_and_case(host, scheme, expected):
    assert normalize_host(host, scheme) == expected


def test_matcher_accepts_url_host_aliases_and_default_port_spellings():
    m = RegistryMatcher("https://registry.example.com", ["cr.example.com:443", "https://mirror.example.com"])
    for ref in ("registry.example.com/team/app:v1", "registry.example.com:443/team/app:v1",
                "REGISTRY.EXAMPLE.COM/team/app:v1", "cr.example.com/team/app:v1", "mirror.example.com/team/app:v1"):
        assert m.match(ref) == ImageRef("registry.example.com" if "registry" in ref.lower() else
                                        ref.split("/")[0].lower(), "team/app", "v1", None), ref
    assert m.match("other.example.com/team/app:v1") is None
    assert m.match("team/app:v1") is None          # Docker Hub, not this registry
    assert m.match("registry.example.com:5000/team/app") is None   # another port is another registry
    assert m.match("registry.example.com/Team/app") is None        # invalid: never matches


def test_matcher_for_a_plain_http_registry_with_explicit_port():
    m = RegistryMatcher("http://127.0.0.1:5000", [])
    assert m.match(f"127.0.0.1:5000/a/b@{D}") == ImageRef("127.0.0.1:5000", "a/b", None, D)
    assert m.match("127.0.0.1/a/b") is None
    m80 = RegistryMatcher("http://reg.local:80", [])
    assert m80.match("reg.local/a") is not None and m80.match("reg.local:80/a") is not None


def test_matcher_for_docker_hub_itself():
    m = RegistryMatcher("https://registry-1.docker.io", [])
    assert m.match("nginx") == ImageRef("docker.io", "library/nginx", "latest", None)
    assert m.match("index.docker.io/bitnami/redis:7").repository == "bitnami/redis"
    assert m.match("quay.io/x/y") is None


def test_match_images_one_row_per_distinct_reference_in_this_registry():
    m = RegistryMatcher("https://registry.example.com", ["registry.example.com:443"])
    images = ["registry.example.com/a:1", "registry.example.com:443/a:1", "nginx", "registry.example.com/a:1",
              f"registry.example.com/b@{D}", f"registry.example.com/c:2@{D2}", "registry.example.com/Bad", None]
    df = match_images(images, m)
    assert list(df.columns) == ["image", "repository", "tag", "digest"]
    rows = {tuple(r) for r in df.itertuples(index=False)}
    assert rows == {
        ("registry.example.com/a:1", "a", "1", None),
        ("registry.example.com:443/a:1", "a", "1", None),
        (f"registry.example.com/b@{D}", "b", None, D),
        (f"registry.example.com/c:2@{D2}", "c", "2", D2),
    }
    assert len(df) == 4
    empty = match_images(["nginx"], m)
    assert list(empty.columns) == ["image", "repository", "tag", "digest"] and empty.empty


def test_match_images_parses_each_distinct_string_once():
    m = RegistryMatcher("https://r.example.com", [])
    match_images(["r.example.com/a:1"] * 1000 + ["r.example.com/b"] * 1000, m)
    assert set(m._cache) == {"r.example.com/a:1", "r.example.com/b"}


@pytest.mark.parametrize("image_id, expected", [
    (f"docker-pullable://registry.example.com/a/b@{D}", D),
    (f"registry.example.com/a/b@{D}", D),
    (f"docker.io/library/nginx@{D}", D),
    (D, D),
    (f"docker://{D}", D),
    ("", None),
    (None, None),
    ("docker://nginx:latest", None),
    ("sha256:abc", None),
])
def test_a_status_image_id_yields_its_digest_and_anything_else_none(image_id, expected):
    assert digest_of_image_id(image_id) == expected
