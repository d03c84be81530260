"""Manifests and image configs by digest, kept in the store between registry scans.

Both are content-addressed, so a body read once never changes: a rescan of an unchanged
registry reads none of them again and costs one HEAD per tag.
"""

from __future__ import annotations

import pyarrow as pa

CACHE_NAME = "registry-blobs"
CACHE_SCHEMA = pa.schema([
    pa.field("digest", pa.string(), nullable=False),
    pa.field("media_type", pa.string(), nullable=False),
    pa.field("body", pa.binary(), nullable=False),
])


class BlobCache:
    """Manifests and configs by digest: loaded once from the store, written once at the end."""

    def __init__(self, table: pa.Table | None = None):
        self.entries: dict[str, tuple[str, bytes]] = {}
        if table is not None:
            try:
                d = table.select(["digest", "media_type", "body"]).to_pydict()
                self.entries = {k: (m, b) for k, m, b in zip(d["digest"], d["media_type"], d["body"])}
            except (KeyError, pa.ArrowInvalid):
                self.entries = {}   # an unreadable cache is only a slower run
        self.loaded = len(self.entries)
        self.used: set[str] = set()
        self.added = 0

    def get(self, digest: str) -> tuple[str, bytes] | None:
        hit = self.entries.get(digest)
        if hit is not None:
            self.used.add(digest)
        return hit

    def put(self, digest: str, media_type: str, body: bytes) -> None:
        if digest not in self.entries:
            self.added += 1
        self.entries[digest] = (media_type, body)
        self.used.add(digest)

    @property
    def changed(self) -> bool:
        return self.added > 0 or len(self.used) != self.loaded

    def table(self) -> pa.Table:
        """Only what this scan used: digests that left the registry drop out of the cache."""
        keys = sorted(self.used)
        return pa.table({"digest": keys, "media_type": [self.entries[k][0] for k in keys],
                         "body": [self.entries[k][1] for k in keys]}, schema=CACHE_SCHEMA)
