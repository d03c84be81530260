"""OCI and Docker data, plain and without I/O: what a manifest, a config and an image reference say.

- `manifest`: media types, annotations, `parse_manifest` / `parse_config` into facts (kind,
  children, subject, created, revision), digests (`is_digest`, `is_content_digest`, `sha256_digest`),
  the referrers fallback tag, the 4 MiB body cap.
- `reference`: image references as clusters and Helm write them (`parse_reference`), registry
  hosts normalised (`normalize_host`, `registry_key`, `same_registry`), `RegistryMatcher`, the
  distribution grammar for repository and tag names.

No Prefect tasks.
"""

from tasks.oci.manifest import is_content_digest, is_digest, parse_config, parse_manifest
from tasks.oci.reference import RegistryMatcher, parse_reference, registry_key

__all__ = ["RegistryMatcher", "is_content_digest", "is_digest", "parse_config", "parse_manifest", "parse_reference",
           "registry_key"]
