"""What a sweep is about to do: the data a human approves and the deletion loop then executes.

Plain data, made by `loading.prepare`; `approval.render` shows it, `execute.delete_targets` acts
on it. It imports nothing above the targets it holds, so the form, the report and the loop can
all import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tasks.registry.capabilities import Capabilities
from tasks.snapshot.footprint import Reclaim
from tasks.sweep.targets import Outcome, Target


@dataclass
class Intent:
    """What a sweep is about to do, shown for approval and then executed."""

    plan_id: str
    snapshot_id: str
    registry: str
    targets: list[Target]              # not yet done, in deletion order
    skipped: list[Outcome]             # planned deletions the sweep itself keeps (see deletion_targets)
    done_before: list[Target]          # done by an earlier run of this plan
    in_flight: set[tuple[str, str]]    # started by an earlier run, never finished
    known: dict[str, set[str]] = field(default_factory=dict)  # digests the snapshot saw, per affected repository
    # digests that the snapshot's workloads and Helm revisions name, per affected repository
    referenced: dict[str, set[str]] = field(default_factory=dict)
    plan_created: str | None = None     # when the plan was made (ISO 8601)
    snapshot_created: str | None = None
    # the plan's reasons and build time for each planned (repository, digest), for the approval form
    reasons: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    built: dict[tuple[str, str], datetime] = field(default_factory=dict)
    cluster_recheck: str = ""           # how the clusters are looked at again before deleting ("" = not)
    capabilities: Capabilities | None = None   # what the registry can delete: recorded with the plan, or probed now
    refusal: str | None = None         # why the registry cannot delete these targets at all, if it cannot
    # what garbage collection frees once `targets` are gone (tasks/snapshot/footprint.py, as the plan
    # counts it); None when the snapshot recorded no blobs
    reclaim: Reclaim | None = None

    @property
    def deletions(self) -> int:
        return len(self.targets)

    @property
    def bytes(self) -> int:
        """The targets' image sizes added up (a shared layer counted in each image)."""
        return sum(t.size for t in self.targets if not t.is_tag)

    @property
    def bytes_reclaimable(self) -> int | None:
        """What garbage collection frees after these targets go; None when unknown."""
        return None if self.reclaim is None else self.reclaim.total
