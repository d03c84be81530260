"""Whether a snapshot is complete enough for a plan from it to delete anything (docs/safety.md).

Fail closed: a source that failed, was skipped, is missing, or whose tables do not hold the
rows the snapshot recorded makes every row of the plan a keep.
"""

from __future__ import annotations

from typing import Any

from tasks.config.models import RegsweepConfig
from tasks.oci.reference import same_registry
from tasks.store.schemas import INFORMATIONAL, SOURCE_TABLES


def snapshot_problems(meta: dict[str, Any], tables: dict[str, Any], config: RegsweepConfig) -> list[str]:
    """Why no plan from this snapshot may delete anything (empty when it is complete)."""
    problems = []
    sources = meta.get("sources") or {}
    enabled = set(config.enabled_sources())
    taken_of = meta.get("registry")
    if not same_registry(taken_of, config.registry.url):
        # e.g. two configurations sharing a store, and `latest` naming the other one's snapshot
        problems.append(f"snapshot incomplete: it is of registry {taken_of}, not {config.registry.url}")
    for name, st in sources.items():
        if st.get("status") == "failed":
            problems.append(f"snapshot incomplete: {name} failed: {st.get('error') or 'unknown error'}")
    for name in sorted(enabled, key=list(SOURCE_TABLES).index):
        st = sources.get(name)
        if st is None:
            problems.append(f"snapshot incomplete: {name} not in snapshot")
        elif st.get("status") == "skipped":
            problems.append(f"snapshot incomplete: {name} was skipped but this policy needs it")
        elif st.get("status") == "ok":
            recorded = st.get("tables") or {}
            for t in SOURCE_TABLES[name]:
                if t in INFORMATIONAL:
                    continue   # no keep rule reads it: deletions do not depend on it
                if tables.get(t) is None:
                    problems.append(f"snapshot incomplete: {name} table {t} missing")
                elif t in recorded and len(tables[t]) != recorded[t]:
                    # a table replaced or cut short after the snapshot was taken: rows may be missing
                    problems.append(f"snapshot incomplete: {name} table {t} has {len(tables[t])} rows, "
                                    f"the snapshot recorded {recorded[t]}")
        elif st.get("status") != "failed":   # failed is reported above
            problems.append(f"snapshot incomplete: {name} has status {st.get('status')!r}, not ok")
    if not meta.get("complete", False) and not problems:
        problems.append("snapshot incomplete: marked incomplete by the snapshot flow")
    return problems
