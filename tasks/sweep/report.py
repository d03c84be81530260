"""What a sweep shows: the intent a human approves, and the report of what happened.

Both render as markdown (Prefect artifacts, the approval form); the report also gives the
CLI's last line (`summary`) and the flow's JSON result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.errors import SweepFailed, SweepNotApproved
from tasks.sweep.targets import DONE, FAILED, SKIPPED, WOULD_DELETE, Outcome, Target
from tasks.units import human_bytes


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

    @property
    def deletions(self) -> int:
        return len(self.targets)

    @property
    def bytes(self) -> int:
        return sum(t.size for t in self.targets if not t.is_tag)

    def markdown(self, *, limit: int = 200) -> str:
        """What will be deleted: tags, digests and bytes per repository."""
        manifests = [t for t in self.targets if not t.is_tag]
        lone = [t for t in self.targets if t.is_tag]
        lines = [f"# Sweep of plan `{self.plan_id}`", "",
                 f"Registry {self.registry}, snapshot `{self.snapshot_id}`.", "",
                 f"**{len(manifests)} manifests ({human_bytes(self.bytes)} referenced) and "
                 f"{len(lone)} lone tags will be deleted**"
                 + (f"; {len(self.done_before)} were deleted by an earlier run of this plan" if self.done_before else "")
                 + (f"; {len(self.skipped)} planned deletions are kept by the sweep's own checks" if self.skipped else "")
                 + ". Every tag is re-checked just before its DELETE.", ""]
        per_repo: dict[str, list[int]] = {}
        for t in self.targets:
            r = per_repo.setdefault(t.repository, [0, 0, 0])
            r[0] += 0 if t.is_tag else 1
            r[1] += len(t.tags)
            r[2] += 0 if t.is_tag else t.size
        if per_repo:
            lines += ["| repository | manifests | tags | bytes |", "|---|---:|---:|---:|"]
            lines += [f"| {repo} | {m} | {n} | {human_bytes(b)} |" for repo, (m, n, b) in sorted(per_repo.items())]
            lines.append("")
            lines += ["| repository | tags | digest | kind | size |", "|---|---|---|---|---:|"]
            for t in self.targets[:limit]:
                what = ", ".join(t.tags) if not t.is_tag else f"{t.ref} (this tag only)"
                lines.append(f"| {t.repository} | {what or '(untagged)'} | `{t.digest}` | {t.kind} | {human_bytes(t.size)} |")
            if len(self.targets) > limit:
                lines.append(f"| … | {len(self.targets) - limit} more | | | |")
        if self.skipped:
            lines += ["", "Kept although the plan deletes them:", ""]
            lines += [f"- {o.repository}@{o.digest}: {o.detail}" for o in self.skipped[:limit]]
        return "\n".join(lines)


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
    # what the re-checks and deletions noticed (tasks/notes.py): warnings and retried requests
    notes: dict[str, Any] = field(default_factory=dict)

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
        return sum(o.size for o in self.outcomes if o.status == self._gone and not o.is_tag)

    def summary(self) -> str:
        """The CLI's last line: `deleted 12 manifests (34.5 MB), skipped 2, failed 0`."""
        what = f"{self.deleted} manifests" + (f" and {self.tags_deleted} tags" if self.tags_deleted else "")
        what += f" ({human_bytes(self.bytes)})"
        if self.dry_run:
            return f"dry run: would delete {what}, skipped {self.skipped}"
        line = f"deleted {what}, skipped {self.skipped}, failed {self.failed}"
        if self.done_before:
            line += f" ({self.done_before} deleted by an earlier run of plan {self.plan_id})"
        return line

    def to_json(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "registry": self.registry, "dry_run": self.dry_run,
                "deleted": self.deleted, "tags_deleted": self.tags_deleted, "skipped": self.skipped,
                "failed": self.failed, "bytes": self.bytes, "done_before": self.done_before,
                "summary": self.summary(), **self.notes, "outcomes": [asdict(o) for o in self.outcomes]}

    def markdown(self, limit: int = 500) -> str:
        lines = [f"# Sweep of plan `{self.plan_id}`" + (" (dry run)" if self.dry_run else ""), "",
                 f"Registry {self.registry}: **{self.summary()}**.", ""]
        if not self.dry_run and self.deleted:
            lines += ["Distribution frees the disk space only when its garbage collection runs "
                      "(`registry garbage-collect`, with the registry read-only or stopped).", ""]
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


def raise_if_failed(report: SweepReport) -> None:
    """SweepFailed (exit 1) when any deletion failed; the journal says which."""
    failures = [o for o in report.outcomes if o.status == FAILED]
    if failures:
        first = failures[0]
        raise SweepFailed(f"{len(failures)} deletions failed in {report.registry} (first: "
                          f"{first.repository}@{first.digest}: {first.detail}); journal "
                          f"journal/{report.plan_id} in the store records each attempt", report)
