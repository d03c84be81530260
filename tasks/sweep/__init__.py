"""The sweep: the gated deletion of a stored plan, and the only code in regsweep that writes to a registry.

Safety rules and what each check guarantees: docs/safety.md.

What it owns, in the order a sweep runs:

- **Loading** (`loading.prepare`): the plan must be of this registry, under the current cleanup
  policy, from a complete snapshot younger than `sweep.maxPlanAge` and not dated in the future
  (PlanRefused otherwise). It becomes an `Intent` (`intent`): the deletion targets
  (`targets.deletion_targets`) minus what an earlier run of the plan finished, with what the
  registry's probed capabilities keep up front.
- **Targets** (`targets`). Each says what its DELETE names, decided when it is made: a digest
  (sha256 or sha512), or one tag alone. A manifest is deleted by digest only when every tag on
  it is `delete` in the plan and nothing kept references it: no kept index lists it as a
  platform manifest, and an artifact goes only with its subject. A deleted index takes its platform manifests
  along, a deleted subject its signatures, SBOMs and referrers fallback index; each of those
  waits for its parents to be gone first, and is skipped when one of them was not deleted. A
  `delete` tag on a digest that stays is removed on its own where the registry can do that.
- **Approval** (`approval.render`, the form's text; `report.check_deletable` and
  `report.check_up_front_approval`, the checks before asking).
- **Re-checks** (`recheck`, `execute`), after approval: the plan must still be younger than
  `sweep.maxPlanAge`; by default, a fresh cluster scan must not show a target in use; and right
  before each DELETE (and before each retry of one) the target's repository is listed and every
  tag resolved again, batched per repository: every planned tag must still resolve to the planned
  digest, no other tag may now point at a target (pushed or moved since the snapshot, or while
  the sweep ran), and no new index or artifact, nor one that workloads or Helm name by digest
  only (untagged, so no snapshot read it), may list or refer to it. A re-check that cannot run
  before the first DELETE deletes nothing (fail closed). A lone-tag DELETE is followed by a look
  at its digest: gone means the registry's tag deletion is unsafe, and no further lone tag goes.
- **Deleting and the journal** (`execute.delete_targets`, `journal`): `started` is durable
  (fsync) before each DELETE goes out, `done`/`skipped`/`failed` is written after. Running the
  same plan again resumes: `done` targets are never requested again, and a target left `started`
  is looked up first (gone means done).
- **Report** (`report.SweepReport`, `report.raise_if_failed`): what happened, as markdown,
  the CLI's last line and JSON.
- **Restore** (`restore`): right before its `started` record, each target's manifest (bytes, media
  type, tags, what it went with) is recorded in `restore/<plan id>/`; `restore.restore` re-uploads
  what a sweep deleted, children first, where every blob is still there (until the registry's
  garbage collector runs), and never overwrites a tag that moved (docs/operations/restore.md).
- **Lock** (`lock.sweep_lock`): one sweep per registry at a time, a lock file in the store.

Public names: `prepare`, `Intent`, `check_deletable`, `check_up_front_approval`, `delete_targets`,
`SweepReport`, `raise_if_failed`, `Journal` (and the modules `approval` and `lock`).

Everything here is plain Python except `tasks` (tasks/sweep/tasks.py), which holds the Prefect
tasks flows/sweep.py runs: `prepare_sweep` (`prepare`) and `recheck_and_delete`
(`delete_targets`). The flow sequences them with the lock, `check_deletable` (a registry that
cannot delete is said so before any approval is asked), `check_up_front_approval` or the approval
form, and `raise_if_failed`. `tasks` is not imported here: it imports Prefect, which the CLI
keeps out of its start-up.
"""

from tasks.sweep.execute import delete_targets
from tasks.sweep.intent import Intent
from tasks.sweep.journal import Journal
from tasks.sweep.loading import prepare
from tasks.sweep.report import SweepReport, check_deletable, check_up_front_approval, raise_if_failed

__all__ = ["Intent", "Journal", "SweepReport", "check_deletable", "check_up_front_approval", "delete_targets",
           "prepare", "raise_if_failed"]
