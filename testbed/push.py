"""Push images, indexes and artifacts into a registry through its own HTTP API.

Every helper takes an `httpx.Client` whose `base_url` is the registry URL (`LocalRegistry.client()`
builds one, authenticating where the registry wants it) and returns what it pushed as a
`PushedManifest`: the digest, a `str`, that remembers its bytes, size and media type. Media types,
digests and the referrers fallback tag are regsweep's own (tasks/oci/manifest.py), so the testbed writes
what the product reads. Bulk pushes of many tags are in testbed/bulk.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

import httpx

from tasks.oci.manifest import (ACCEPT, DOCKER_CONFIG, DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG, OCI_EMPTY, OCI_INDEX,
                       OCI_MANIFEST, fallback_tag, sha256_digest)

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
#: The Accept header of manifest reads: regsweep's own, naming every manifest type.
MANIFEST_ACCEPT = ACCEPT

_FLAVOURS = {
    "oci": (OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, OCI_LAYER),
    "docker": (DOCKER_MANIFEST, DOCKER_LIST, DOCKER_CONFIG, DOCKER_LAYER),
}
DEFAULT_LAYER = b"regsweep testbed layer\n"
_EMPTY_JSON = b"{}"


class PushError(RuntimeError):
    """The registry refused a push; carries the response so tests can inspect it."""

    def __init__(self, message: str, response: httpx.Response | None = None):
        super().__init__(message)
        self.response = response



class PushedManifest(str):
    """A manifest digest (a plain `str`) that also remembers its size, media type and bytes."""

    size: int
    media_type: str
    body: bytes

    def __new__(cls, digest: str, body: bytes, media_type: str) -> "PushedManifest":
        obj = super().__new__(cls, digest)
        obj.size, obj.media_type, obj.body = len(body), media_type, body
        return obj

    def descriptor(self, **extra: Any) -> dict:
        return {"mediaType": self.media_type, "digest": str(self), "size": self.size, **extra}

    def __reduce__(self):
        return (PushedManifest, (str(self), self.body, self.media_type))


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode()


def expect_status(r: httpx.Response, what: str, ok: Iterable[int]) -> httpx.Response:
    """`r` if its status is in `ok`, else PushError saying what was refused and how."""
    if r.status_code not in ok:
        raise PushError(f"{what}: HTTP {r.status_code} {r.text[:500]}", r)
    return r


def push_blob(client: httpx.Client, repo: str, data: bytes, *, known: set | None = None,
              check_exists: bool | None = None) -> str:
    """Upload a blob (POST, then monolithic PUT ?digest=) unless the repository has it; returns its digest.

    `known` is a cache of (repo, digest) already present, shared across a bulk push so that shared
    layers cost one request per repository at most; with a cache, unknown blobs are uploaded without
    a HEAD first (re-uploading an existing blob is harmless and saves a round trip).
    """
    digest = sha256_digest(data)
    if known is not None and (repo, digest) in known:
        return digest
    if check_exists is None:
        check_exists = known is None
    if check_exists and client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
        if known is not None:
            known.add((repo, digest))
        return digest
    started = expect_status(client.post(f"/v2/{repo}/blobs/uploads/"), f"start upload to {repo}", (202,))
    complete_upload(client, started, repo, data)
    if known is not None:
        known.add((repo, digest))
    return digest


def complete_upload(client: httpx.Client, started: httpx.Response, repo: str, data: bytes) -> None:
    """Finish the upload `started` (a 202 to POST /blobs/uploads/) with one monolithic PUT ?digest=."""
    digest = sha256_digest(data)
    # The Location carries upload state in its query; httpx's params= would replace it, not add to it.
    location = httpx.URL(started.headers["location"]).copy_merge_params({"digest": digest})
    expect_status(client.put(location, content=data, headers={"Content-Type": "application/octet-stream"}),
                  f"upload blob {digest} to {repo}", (201,))


def put_manifest(client: httpx.Client, repo: str, ref: str, body: bytes, media_type: str) -> PushedManifest:
    """PUT manifest bytes at `ref` (a tag or their digest); the registry must store them as sent."""
    r = expect_status(client.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type}),
                      f"put manifest {repo}:{ref}", (201,))
    digest = sha256_digest(body)
    served = r.headers.get("docker-content-digest")
    if served and served != digest:
        raise PushError(f"registry stored {repo}:{ref} as {served}, expected {digest}", r)
    return PushedManifest(digest, body, media_type)


def rfc3339(value: datetime | str | None) -> str | None:
    """A datetime as RFC 3339 in UTC (naive means UTC); strings pass through as written."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _image_config(config: Mapping | None, layer_digests: Sequence[str]) -> dict:
    cfg = {"architecture": "amd64", "os": "linux"}
    config = dict(config or {})
    if "created" in config:
        config["created"] = rfc3339(config["created"])
    cfg.update(config)
    cfg.setdefault("config", {})
    # The layers here are opaque bytes, so their digests stand in for the uncompressed diff ids.
    cfg.setdefault("rootfs", {"type": "layers", "diff_ids": list(layer_digests)})
    return cfg


def build_image(layers: Sequence[bytes], config: Mapping | None, annotations: Mapping[str, str] | None,
                media_type: str, subject: dict | None = None,
                artifact_type: str | None = None) -> tuple[list[bytes], bytes, str]:
    """(blobs to upload, manifest bytes, manifest media type) of one image; no I/O."""
    manifest_type, _, config_type, layer_type = _FLAVOURS[media_type]
    layer_digests = [sha256_digest(b) for b in layers]
    config_bytes = _canonical(_image_config(config, layer_digests))
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": manifest_type}
    if artifact_type:
        manifest["artifactType"] = artifact_type
    manifest["config"] = {"mediaType": config_type, "digest": sha256_digest(config_bytes),
                          "size": len(config_bytes)}
    manifest["layers"] = [{"mediaType": layer_type, "digest": d, "size": len(b)}
                          for d, b in zip(layer_digests, layers)]
    if subject:
        manifest["subject"] = subject
    if annotations:
        manifest["annotations"] = dict(annotations)
    return [*layers, config_bytes], _canonical(manifest), manifest_type


def push_image(client: httpx.Client, repo: str, tag: str | None, *, layers: Sequence[bytes] = (DEFAULT_LAYER,),
               config: Mapping | None = None, annotations: Mapping[str, str] | None = None,
               media_type: str = "oci", subject: str | None = None, artifact_type: str | None = None,
               known: set | None = None) -> PushedManifest:
    """Push an image manifest (blobs first) and tag it; returns its digest.

    `config` is the image config: `created` (datetime or RFC 3339) and labels as
    `{"config": {"Labels": {...}}}`; architecture/os/rootfs get defaults. `media_type` picks OCI or
    Docker schema 2 media types. With no `tag` the manifest is pushed by digest (untagged).
    `subject` (a digest or tag in `repo`) makes it a referrer of that manifest.
    """
    subject_desc = _subject_descriptor(client, repo, subject) if subject else None
    blobs, body, manifest_type = build_image(layers, config, annotations, media_type, subject_desc,
                                              artifact_type)
    for blob in blobs:
        push_blob(client, repo, blob, known=known)
    return put_manifest(client, repo, tag or sha256_digest(body), body, manifest_type)


def push_index(client: httpx.Client, repo: str, tag: str | None, children: Sequence[tuple], *,
               annotations: Mapping[str, str] | None = None, media_type: str = "oci") -> PushedManifest:
    """Push a multi-platform index (OCI image index or Docker manifest list); returns its digest.

    `children` are `(digest, size, platform)` or `(digest, platform)` tuples, platform being e.g.
    `{"architecture": "arm64", "os": "linux"}`; the children must already be in `repo`.
    Size and media type come from a `PushedManifest`, else from a HEAD on the child.
    """
    _, index_type, _, _ = _FLAVOURS[media_type]
    manifests = []
    for child in children:
        digest, size, platform = child if len(child) == 3 else (child[0], None, child[1])
        child_type = getattr(digest, "media_type", None)
        if size is None:
            size = getattr(digest, "size", None)
        if size is None or child_type is None:
            head_size, head_type, _ = _manifest_head(client, repo, digest)
            size, child_type = size or head_size, child_type or head_type
        entry = {"mediaType": child_type, "digest": str(digest), "size": size}
        if platform:
            entry["platform"] = dict(platform)
        manifests.append(entry)
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": index_type, "manifests": manifests}
    if annotations:
        index["annotations"] = dict(annotations)
    body = _canonical(index)
    return put_manifest(client, repo, tag or sha256_digest(body), body, index_type)


def _manifest_head(client: httpx.Client, repo: str, ref: str) -> tuple[int, str, str]:
    """(size, media type, digest) of the manifest at `ref`."""
    r = expect_status(client.head(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}),
               f"head manifest {repo}@{ref}", (200,))
    return (int(r.headers["content-length"]), r.headers["content-type"].split(";")[0],
            r.headers["docker-content-digest"])


def _subject_descriptor(client: httpx.Client, repo: str, subject: str) -> dict:
    if isinstance(subject, PushedManifest):
        return subject.descriptor()
    size, media_type, digest = _manifest_head(client, repo, subject)
    return {"mediaType": media_type, "digest": digest, "size": size}


def get_manifest(client: httpx.Client, repo: str, ref: str) -> tuple[bytes, str] | None:
    """The manifest bytes and media type at `ref`, or None when the registry does not know it."""
    r = client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})
    if r.status_code == 404:
        return None
    expect_status(r, f"get manifest {repo}:{ref}", (200,))
    return r.content, r.headers["content-type"].split(";")[0]


def push_referrers_fallback(client: httpx.Client, repo: str, subject: str, referrers: Sequence[Mapping],
                            *, replace: bool = False) -> PushedManifest:
    """Maintain the `sha256-<hex>` tag: an OCI index of `subject`'s referrers, as OCI 1.1 clients
    do on registries without the referrers API. Adds to the existing index unless `replace`.

    `referrers` are descriptors (`PushedManifest.descriptor(artifactType=...)`); `subject` a digest.
    """
    tag = fallback_tag(subject)
    manifests: list[dict] = []
    if not replace:
        existing = get_manifest(client, repo, tag)
        if existing is not None:
            manifests = json.loads(existing[0]).get("manifests", [])
    have = {m["digest"] for m in manifests}
    manifests += [dict(d) for d in referrers if d["digest"] not in have]
    body = _canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    return put_manifest(client, repo, tag, body, OCI_INDEX)


def push_artifact(client: httpx.Client, repo: str, *, subject: str, artifact_type: str,
                  payload: bytes = b'{"critical":{"type":"regsweep testbed signature"}}',
                  payload_media_type: str | None = None, tag: str | None = None,
                  annotations: Mapping[str, str] | None = None, referrers_tag: bool = True,
                  known: set | None = None) -> PushedManifest:
    """Push a signature/SBOM-style OCI 1.1 artifact whose `subject` is `subject`; returns its digest.

    The artifact is an image manifest with `artifactType`, the empty config `{}` and one payload
    layer; `subject` is a digest or tag in `repo`. With `referrers_tag` (the default) the subject's
    `sha256-<hex>` fallback index is updated too, since Distribution 2.8 has no referrers API.
    """
    subject_desc = _subject_descriptor(client, repo, subject)
    empty = push_blob(client, repo, _EMPTY_JSON, known=known)
    layer = push_blob(client, repo, payload, known=known)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": len(_EMPTY_JSON)},
        "layers": [{"mediaType": payload_media_type or artifact_type, "digest": layer, "size": len(payload)}],
        "subject": subject_desc,
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    body = _canonical(manifest)
    pushed = put_manifest(client, repo, tag or sha256_digest(body), body, OCI_MANIFEST)
    if referrers_tag:
        desc = pushed.descriptor(artifactType=artifact_type)
        if annotations:
            desc["annotations"] = dict(annotations)
        push_referrers_fallback(client, repo, subject_desc["digest"], [desc])
    return pushed


def push_raw_manifest(client: httpx.Client, repo: str, ref: str, body: bytes, media_type: str) -> PushedManifest:
    """PUT these exact bytes as a manifest (odd, foreign or malformed ones); raises PushError if refused.

    Distribution 2.8 refuses bytes that are not JSON and unknown manifest media types (400
    MANIFEST_INVALID) but stores OCI manifests with foreign config types (Helm charts, artifacts).
    """
    return put_manifest(client, repo, ref, body, media_type)


def tag_manifest(client: httpx.Client, repo: str, digest_or_tag: str, new_tag: str) -> PushedManifest:
    """Point `new_tag` at the manifest `digest_or_tag` resolves to (re-PUT of the same bytes)."""
    if isinstance(digest_or_tag, PushedManifest):
        body, media_type = digest_or_tag.body, digest_or_tag.media_type
    else:
        found = get_manifest(client, repo, digest_or_tag)
        if found is None:
            raise PushError(f"tag {repo}:{new_tag}: manifest {digest_or_tag} not found")
        body, media_type = found
    return put_manifest(client, repo, new_tag, body, media_type)
