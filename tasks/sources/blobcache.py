"""Manifests and image configs by digest, kept in the store between registry scans.

Both are content-addressed, so a body read once never changes: a rescan of an unchanged
registry reads none of them again and costs one HEAD per tag.

The store is not trusted more than the registry: every body is hashed again when the cache is
loaded, and an entry whose key is not a digest, whose body does not hash to it, or which is
larger than `MAX_BODY_BYTES` is dropped (it is read from the registry again, like any miss).
Nothing larger than that is ever stored.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from tasks.store.caches import REGISTRY_BLOBS

from tasks.common.notes import warn
from tasks.oci.manifest import MAX_BODY_BYTES, is_content_digest, matches_digest

log = logging.getLogger("regsweep.registry")

CACHE_NAME = REGISTRY_BLOBS.name()
CACHE_SCHEMA = pa.schema([
    pa.field("digest", pa.string(), nullable=False),
    pa.field("media_type", pa.string(), nullable=False),
    pa.field("body", pa.binary(), nullable=False),
])


def _storable(digest: object, body: object) -> bool:
    return is_content_digest(digest) and isinstance(body, bytes) and len(body) <= MAX_BODY_BYTES


class BlobCache:
    """Manifests and configs by digest: loaded once from the store, written once at the end."""

    def __init__(self, table: pa.Table | None = None):
        self.entries: dict[str, tuple[str, bytes]] = {}
        self.dropped = 0   # entries of the stored cache that failed their check on load
        if table is not None:
            try:
                d = table.select(["digest", "media_type", "body"]).to_pydict()
                rows = zip(d["digest"], d["media_type"], d["body"])
            except (KeyError, pa.ArrowInvalid):
                rows = iter(())   # an unreadable cache is only a slower run
            for k, m, b in rows:
                # A forged or damaged body would change what an image looks like (kind, subject,
                # children): only what still hashes to its key is believed.
                if (isinstance(m, str) and isinstance(k, str) and isinstance(b, bytes) and len(b) <= MAX_BODY_BYTES
                        and matches_digest(b, k)):   # a match implies a well-formed digest key
                    self.entries[k] = (m, b)
                else:
                    self.dropped += 1
        if self.dropped:
            warn(log, f"blob cache: dropped {self.dropped} entries whose key is not a digest, whose body does "
                      f"not hash to it, or which are too large; they are read from the registry again")
        self.loaded = len(self.entries)
        self.used: set[str] = set()
        self.added = 0

    def get(self, digest: str) -> tuple[str, bytes] | None:
        hit = self.entries.get(digest)
        if hit is not None:
            self.used.add(digest)
        return hit

    def put(self, digest: str, media_type: str, body: bytes) -> None:
        """Keep `body` under `digest` (which the caller verified it hashes to); bodies larger than
        MAX_BODY_BYTES and keys that are not digests are not kept."""
        if not _storable(digest, body):
            return
        if digest not in self.entries:
            self.added += 1
        self.entries[digest] = (media_type, body)
        self.used.add(digest)

    @property
    def changed(self) -> bool:
        return self.added > 0 or self.dropped > 0 or len(self.used) != self.loaded

    def table(self) -> pa.Table:
        """Only what this scan used: digests that left the registry drop out of the cache."""
        keys = sorted(self.used)
        return pa.table({"digest": keys, "media_type": [self.entries[k][0] for k in keys],
                         "body": [self.entries[k][1] for k in keys]}, schema=CACHE_SCHEMA)
