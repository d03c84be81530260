"""What a sweep reports: the checks on an intent before approval, and the report of what happened.

The report renders as markdown (a Prefect artifact) and gives the CLI's last line (`summary`)
and the flow's JSON result; the intent itself is shown by tasks/sweep/approval.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.common.errors import SweepFailed, SweepNotApproved
from tasks.common.units import human_bytes
from tasks.sweep.intent import Intent
from tasks.sweep.targets import DONE, FAILED, SKIPPED, WOULD_DELETE, Outcome


def check_deletable(intent: Intent) -> None:
    """SweepFailed, before any approval is asked, when the registry cannot delete what the plan deletes."""
    if intent.refusal and intent.targets:
        raise SweepFailed(f"{intent.refusal}; found before asking for approval: nothing was deleted")


def check_up_front_approval(intent: Intent, max_deletions: int) -> None:
    """Approval given before the sweep (`--yes`) covers at most `max_deletions` deletions."""
    if intent.deletions > max_deletions:
        raise SweepNotApproved(
            f"plan {intent.plan_id} would delete {intent.deletions} manifests/tags in {intent.registry}, "
            f"more than the {max_deletions} that approval up front (--yes) covers: nothing was deleted. "
            "Approve it in the Prefect UI (run without --yes) or raise --max-deletions.")


@dataclass
class SweepReport:
    """The result of one sweep run."""

    plan_id: str
    registry: str
    dry_run: bool
    outcomes: list[Outcome]
    done_before: int = 0
    # what the re-checks and deletions noticed (tasks/common/notes.py): warnings and retried requests
    notes: dict[str, Any] = field(default_factory=dict)
    # what garbage collection frees of what went (tasks/snapshot/footprint.py); None when the snapshot
    # recorded no blobs
    bytes_reclaimable: int | None = None

    def _count(self, status: str, tags: bool | None = None) -> int:
        return sum(1 for o in self.outcomes if o.status == status and (tags is None or o.is_tag == tags))

    @property
    def _gone(self) -> str:
        """The status of a target that went (or, dry, would go)."""
        return WOULD_DELETE if self.dry_run else DONE

    @property
    def deleted(self) -> int:
        return self._count(self._gone, tags=False)

    @property
    def tags_deleted(self) -> int:
        return self._count(self._gone, tags=True)

    @property
    def skipped(self) -> int:
        return self._count(SKIPPED)

    @property
    def failed(self) -> int:
        return self._count(FAILED)

    @property
    def bytes(self) -> int:
        """The image sizes of what went, added up (a shared layer counted in each image)."""
        return sum(o.size for o in self.outcomes if o.status == self._gone and not o.is_tag)

    def gone(self) -> list[tuple[str, str]]:
        """(repository, digest) of each manifest that went (or, dry, would go)."""
        return [(o.repository, o.digest) for o in self.outcomes if o.status == self._gone and not o.is_tag]

    def summary(self) -> str:
        """The CLI's last line: `deleted 12 manifests (34.5 MB of image sizes, 3.1 MB freed by
        garbage collection), skipped 2, failed 0`."""
        what = f"{self.deleted} manifests" + (f" and {self.tags_deleted} tags" if self.tags_deleted else "")
        what += f" ({bytes_text(self.bytes, self.bytes_reclaimable)})"
        if self.dry_run:
            return f"dry run: would delete {what}, skipped {self.skipped}"
        line = f"deleted {what}, skipped {self.skipped}, failed {self.failed}"
        if self.done_before:
            line += f" ({self.done_before} deleted by an earlier run of plan {self.plan_id})"
        return line

    def to_json(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "registry": self.registry, "dry_run": self.dry_run,
                "deleted": self.deleted, "tags_deleted": self.tags_deleted, "skipped": self.skipped,
                "failed": self.failed, "bytes": self.bytes, "image_bytes": self.bytes,
                "bytes_reclaimable": self.bytes_reclaimable, "done_before": self.done_before,
                "summary": self.summary(), **self.notes, "outcomes": [asdict(o) for o in self.outcomes]}

    def markdown(self, limit: int = 500) -> str:
        from tasks.sweep.restore import window

        lines = [f"# Sweep of plan `{self.plan_id}`" + (" (dry run)" if self.dry_run else ""), "",
                 f"Registry {self.registry}: **{self.summary()}**.", ""]
        if not self.dry_run and self.deleted:
            freed = ("" if self.bytes_reclaimable is None else
                     f" ({human_bytes(self.bytes_reclaimable)}: the blobs only these manifests used, each once)")
            lines += [f"Distribution frees the disk space{freed} only when its garbage collection runs "
                      "(`registry garbage-collect`, with the registry read-only or stopped); the image "
                      "sizes count a layer shared by several images in each.", "",
                      f"Undo: {window(self.plan_id)}.", ""]
        rows = sorted(self.outcomes, key=lambda o: ({FAILED: 0, SKIPPED: 1}.get(o.status, 2), o.repository, o.ref))
        if rows:
            lines += ["| status | repository | tags | digest | kind | size | detail |", "|---|---|---|---|---|---:|---|"]
            for o in rows[:limit]:
                tags = o.ref if o.is_tag else (", ".join(o.tags) or "(untagged)")
                lines.append(f"| {o.status} | {o.repository} | {tags} | `{o.digest}` | {o.kind} | "
                             f"{human_bytes(o.size)} | {o.detail} |")
            if len(rows) > limit:
                lines.append(f"| … | {len(rows) - limit} more | | | | | |")
        return "\n".join(lines)


def bytes_text(image_bytes: int, reclaimable: int | None) -> str:
    """`34.5 MB of image sizes, 3.1 MB freed by garbage collection` (docs/store-format.md)."""
    gc = "unknown" if reclaimable is None else human_bytes(reclaimable)
    return f"{human_bytes(image_bytes)} of image sizes, {gc} freed by garbage collection"


def raise_if_failed(report: SweepReport) -> None:
    """SweepFailed (exit 1) when any deletion failed; the journal says which."""
    failures = [o for o in report.outcomes if o.status == FAILED]
    if failures:
        first = failures[0]
        raise SweepFailed(f"{len(failures)} deletions failed in {report.registry} (first: "
                          f"{first.repository}@{first.digest}: {first.detail}); journal "
                          f"journal/{report.plan_id} in the store records each attempt", report)
