"""OCI / Docker manifests, indexes and image configs as plain data (no HTTP).

Everything here is a pure function of bytes and strings so the registry extractor, the sweep
and the tests can share one reading of the formats: which media types mean what, how big an
image is, where its build time and commit are recorded, and how referrers are spelled.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tasks.common.units import parse_build_time

# --- media types ----------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES

#: What we ask registries for. Listing every type matters: Distribution answers 404 for an
#: OCI index when the Accept header does not name it. */* lets unknown types through, so they
#: can be recorded as kind `unknown` instead of looking like a missing tag.
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, "*/*;q=0.1"])

ANN_REVISION = "org.opencontainers.image.revision"
ANN_CREATED = "org.opencontainers.image.created"

# Manifest kinds written to the MANIFESTS table.
IMAGE, INDEX, ARTIFACT, REFERRERS_INDEX, UNKNOWN = "image", "index", "artifact", "referrers-index", "unknown"

# Matched with fullmatch: `$` would also accept a trailing newline, which then reaches a URL.
_DIGEST_RX = re.compile(r"sha256:[0-9a-f]{64}")
#: The digests regsweep reads by (OCI image-spec's registered algorithms), with their hex lengths.
_CONTENT_DIGEST_RX = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_FALLBACK_TAG_RX = re.compile(r"sha256-([0-9a-f]{64})")
#: cosign's tags for a subject's signature, attestations and SBOM.
_COSIGN_TAG_RX = re.compile(r"sha256-([0-9a-f]{64})\.(?:sig|att|sbom)")

#: The most regsweep reads of a config blob, and the most the blob cache keeps of any body: the
#: limit OCI's distribution-spec recommends for manifests. A larger "config" is some other blob
#: (a layer pushed as config to exhaust memory): the image is recorded with a problem and kept.
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_BODY_TEXT = "4 MiB"


def sha256_digest(data: bytes) -> str:
    """The content digest of `data` as registries spell it."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(ref: str) -> bool:
    """Whether `ref` is a sha256 digest (`sha256:` and 64 lowercase hex digits)."""
    return isinstance(ref, str) and _DIGEST_RX.fullmatch(ref) is not None


def is_content_digest(ref: object) -> bool:
    """Whether `ref` is a digest regsweep may read by: `sha256:` with 64 or `sha512:` with 128
    lowercase hex digits. Anything else a manifest names (a tag, a path, another algorithm) is
    never requested: the manifest naming it is recorded with a problem instead (and kept)."""
    return isinstance(ref, str) and _CONTENT_DIGEST_RX.fullmatch(ref) is not None


def matches_digest(data: bytes, digest: str) -> bool:
    """Whether `data` hashes to `digest`; True implies `is_content_digest(digest)` (hexdigest
    is lowercase hex of the algorithm's length)."""
    algorithm, _, hexpart = digest.partition(":")
    if algorithm == "sha256":
        return hashlib.sha256(data).hexdigest() == hexpart
    if algorithm == "sha512":
        return hashlib.sha512(data).hexdigest() == hexpart
    return False


def fallback_tag(subject: str) -> str:
    """The OCI referrers fallback tag for a subject digest: sha256:<hex> -> sha256-<hex>."""
    algo, _, hexpart = subject.partition(":")
    return f"{algo}-{hexpart}"


def fallback_subject(tag: str) -> str | None:
    """The subject digest a referrers fallback tag stands for, or None for an ordinary tag."""
    m = _FALLBACK_TAG_RX.fullmatch(tag)
    return f"sha256:{m.group(1)}" if m else None


def tag_subject(tag: str) -> str | None:
    """The subject digest a tag belongs to: the referrers fallback tag, or a cosign `.sig`/`.att`/`.sbom` tag.

    Such a tag is never an image of its own: the plan keeps or deletes it with its subject, and
    the sweep never removes it alone.
    """
    if not tag.startswith("sha256-"):
        return None
    m = _COSIGN_TAG_RX.fullmatch(tag)
    return f"sha256:{m.group(1)}" if m else fallback_subject(tag)


def platform_string(p: Any) -> str | None:
    """os/arch[/variant] of a descriptor's platform, or None."""
    if not isinstance(p, dict) or not p.get("os") or not p.get("architecture"):
        return None
    parts = [str(p["os"]), str(p["architecture"])]
    if p.get("variant"):
        parts.append(str(p["variant"]))
    return "/".join(parts)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class Manifest:
    """What one manifest body says, whatever its format."""

    media_type: str
    kind: str                                         # image | index | artifact | unknown
    artifact_type: str | None = None
    config: Descriptor | None = None
    layers: list[Descriptor] = field(default_factory=list)
    children: list[Descriptor] = field(default_factory=list)   # index entries
    annotations: dict[str, str] = field(default_factory=dict)
    subject: str | None = None
    error: str | None = None                          # why the body could not be read, if it could not

    @property
    def own_size(self) -> int:
        """Config and layers this manifest references (not its own body, not children)."""
        total = self.config.size if self.config else 0
        return total + sum(d.size for d in self.layers)

    @property
    def has_image_config(self) -> bool:
        return self.config is not None and self.config.media_type in IMAGE_CONFIG_TYPES


def _descriptor(d: Any) -> Descriptor | None:
    if not isinstance(d, dict):
        return None
    digest, size = d.get("digest"), d.get("size")
    if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool):
        return None
    ann = d.get("annotations")
    return Descriptor(
        media_type=str(d.get("mediaType") or ""),
        digest=digest,
        size=size,
        platform=platform_string(d.get("platform")),
        artifact_type=d.get("artifactType") if isinstance(d.get("artifactType"), str) else None,
        annotations={str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {},
    )


def _descriptors(items: Any, what: str) -> list[Descriptor]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise ValueError(f"`{what}` is not a list")
    out = []
    for i, item in enumerate(items):
        d = _descriptor(item)
        if d is None:
            raise ValueError(f"`{what}[{i}]` is not a descriptor")
        out.append(d)
    return out


def effective_media_type(content_type: str | None, body: bytes) -> str:
    """The manifest's media type: the response's Content-Type, else the body's `mediaType`."""
    ct = (content_type or "").split(";", 1)[0].strip().lower()
    if ct and ct not in ("application/json", "application/octet-stream", "text/plain"):
        return ct
    try:
        doc = json.loads(body)
    except ValueError:
        return ct or "application/octet-stream"
    mt = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(mt, str) and mt:
        return mt
    if isinstance(doc, dict) and doc.get("schemaVersion") == 2:
        # OCI allows omitting mediaType; the shape tells an index from a manifest.
        return OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    return ct or "application/octet-stream"


def parse_manifest(body: bytes, media_type: str) -> Manifest:
    """Read a manifest or index body; unknown types and malformed bodies give kind `unknown`.

    Never raises: a registry may hold anything, and one odd manifest must not stop a scan
    (evaluation keeps `unknown` manifests).
    """
    if media_type not in MANIFEST_TYPES:
        return Manifest(media_type=media_type, kind=UNKNOWN)
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        ann = doc.get("annotations")
        annotations = {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {}
        subject = _descriptor(doc.get("subject"))
        artifact_type = doc.get("artifactType") if isinstance(doc.get("artifactType"), str) else None
        m = Manifest(media_type=media_type, kind=IMAGE, artifact_type=artifact_type,
                     annotations=annotations, subject=subject.digest if subject else None)
        if media_type in INDEX_TYPES:
            m.kind = INDEX
            m.children = _descriptors(doc.get("manifests"), "manifests")
        else:
            config = _descriptor(doc.get("config"))
            if config is None:
                raise ValueError("`config` is not a descriptor")
            m.config = config
            m.layers = _descriptors(doc.get("layers"), "layers")
            if m.artifact_type is None and config.media_type not in IMAGE_CONFIG_TYPES:
                m.artifact_type = config.media_type or None
        # Anything that declares itself an artifact or points at a subject is not a runnable image:
        # signatures, SBOMs and attestations live and die with their subject.
        if m.kind == IMAGE and (m.artifact_type or m.subject):
            m.kind = ARTIFACT
        elif m.kind == INDEX and m.artifact_type:
            m.kind = ARTIFACT
        return m
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        return Manifest(media_type=media_type, kind=UNKNOWN, error=f"malformed {media_type}: {e}")


@dataclass
class ImageConfig:
    created: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def parse_config(body: bytes) -> ImageConfig:
    """The build time and labels of an image config blob; malformed → empty with an error."""
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        return ImageConfig(error=f"malformed image config: {e}")
    cfg = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    raw = cfg.get("Labels") or cfg.get("labels") or {}
    labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    return ImageConfig(created=parse_build_time(doc.get("created")), labels=labels)


def build_facts(manifest: Manifest, config: ImageConfig | None) -> tuple[datetime | None, str | None, str | None]:
    """(created, revision, revision source) of one manifest from its annotations, then config.

    Annotation first (set by the builder on the manifest), then the config's `created` and
    labels. Untrustworthy times (before 2013) are skipped, so a later source may still answer.
    """
    created = parse_build_time(manifest.annotations.get(ANN_CREATED))
    if created is None and config is not None:
        created = config.created or parse_build_time(config.labels.get(ANN_CREATED))
    revision, source = manifest.annotations.get(ANN_REVISION) or None, "annotation"
    if revision is None and config is not None:
        revision, source = config.labels.get(ANN_REVISION) or None, "label"
    return created, revision, (source if revision else None)


def parse_link_next(link: str | None) -> str | None:
    """The target of rel="next" in an RFC 8288 Link header (as Distribution writes it)."""
    if not link:
        return None
    for part in link.split(","):
        m = re.match(r'\s*<([^>]*)>\s*;(.*)$', part)
        if m and re.search(r'rel\s*=\s*"?next"?', m.group(2)):
            return m.group(1)
    return None
