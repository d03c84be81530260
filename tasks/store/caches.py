"""Every cache regsweep keeps in its store, named in one place.

A cache is derived data under `<store>/cache/<name>.parquet`: deleting any of them only makes the
next run slower, never different. Each entry says who writes it (always a named flow step or the
source that reads the data anyway, never a side effect of rendering) and who reads it. A version
in the name is raised when the cached table's meaning changes, so old entries are simply not read.

| cache | name | written by | read by |
|---|---|---|---|
| manifests and configs by digest | `registry-blobs` | the registry source's scan | the next scan |
| first sighting of each digest | `first-seen` | the plan (history rules) | the plan |
| per-snapshot summary | `history-v1-summary-<id>` | the snapshot flow's `cache-history-inputs` step | growth report |
| tags added/removed/moved | `history-v1-diff-<prev>-<id>` | the snapshot flow's `cache-history-inputs` step | growth report |
| blobs as a compact index | `footprint-v1-<id>` | the snapshot flow's `cache-history-inputs` step | what-if, plan totals |
| the current policy's decision | `whatif-v1-<id>-<policy key>` | the plan flow's `cache-whatif-entry` step | what-if |

Readers build a missing entry themselves (and write it), so a store written before a cache existed
still answers, only slower (docs/history-and-whatif.md gives the cold and steady figures).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pyarrow as pa

from tasks.common.errors import StoreError
from tasks.store.files import Files


@dataclass(frozen=True)
class Cache:
    """One kind of cache entry: its name prefix and version, who writes it, who reads it."""

    prefix: str
    version: str | None
    writer: str
    readers: str

    def name(self, *key: str) -> str:
        """The entry's name in `cache/`: prefix, version, then the key's parts."""
        return "-".join(p for p in (self.prefix, self.version, *key) if p)


REGISTRY_BLOBS = Cache("registry-blobs", None, "sources.registry scan", "sources.registry scan")
FIRST_SEEN = Cache("first-seen", None, "plan.history_rules.update_first_seen", "plan (firstSeenAsBuildTime)")
HISTORY_SUMMARY = Cache("history", "v1", "snapshot.summary (snapshot flow step)", "history.growth")
HISTORY_DIFF = Cache("history", "v1", "snapshot.summary (snapshot flow step)", "history.growth")
FOOTPRINT_INDEX = Cache("footprint", "v1", "snapshot.summary (snapshot flow step)", "history.whatif, plan totals")
CURRENT_DECISION = Cache("whatif", "v1", "plan.decision_cache (plan flow step)", "history.whatif")

ALL = (REGISTRY_BLOBS, FIRST_SEEN, HISTORY_SUMMARY, HISTORY_DIFF, FOOTPRINT_INDEX, CURRENT_DECISION)


def summary_name(snapshot_id: str) -> str:
    return HISTORY_SUMMARY.name("summary", snapshot_id)


def diff_name(previous_id: str, snapshot_id: str) -> str:
    return HISTORY_DIFF.name("diff", previous_id, snapshot_id)


def footprint_name(snapshot_id: str) -> str:
    return FOOTPRINT_INDEX.name(snapshot_id)


def decision_name(snapshot_id: str, policy_key: str) -> str:
    return CURRENT_DECISION.name(snapshot_id, policy_key)


class Caches:
    """The cache entries of one store (`store.caches`), by name (see the table above)."""

    def __init__(self, files: Files):
        self.files = files

    def read(self, name: str) -> pa.Table | None:
        """A cache entry, or None when it is absent or unreadable."""
        try:
            return self.files.read_table(self.files.path("cache", f"{name}.parquet"))
        except StoreError:
            return None  # a cache that cannot be read is only a slower run

    def write(self, name: str, table: pa.Table) -> None:
        """Write an entry aside and move it into place: a reader never sees half of one."""
        tmp = self.files.path("cache", f".{name}.{uuid.uuid4().hex}.parquet")
        final = self.files.path("cache", f"{name}.parquet")
        self.files.write_table(tmp, table)
        try:
            self.files.fs.mv(tmp, final)
        except OSError as e:
            raise self.files.fail("write", final, e) from None
