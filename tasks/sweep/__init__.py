"""The gated deletion of a plan (README "Safety"): the only code in regsweep that writes to a registry.

A sweep turns a stored plan into deletion *targets*, asks for approval, re-checks the registry
and the clusters, and deletes through a journal:

- **Targets** (`targets`). A manifest is deleted by digest only when every tag on it is `delete`
  in the plan and nothing kept references it: no kept index lists it as a platform manifest,
  and an artifact goes only with its subject. A deleted index takes its platform manifests
  along, a deleted subject its signatures, SBOMs and referrers fallback index; each of those
  waits for its parents to be gone first, and is skipped when one of them was not deleted. A
  `delete` tag on a digest that stays is removed on its own where the registry can do that.
- **Plan checks** (`loading`): the plan must be of this registry, under the current cleanup
  policy, from a complete snapshot younger than `sweep.maxPlanAge` and not dated in the future.
- **Re-checks** (`recheck`, `execute`), after approval and just before deleting: every planned
  tag must still resolve to the planned digest (HEAD, right before each DELETE); no other tag in
  the repository may now point at a target (a tag pushed or moved after the snapshot); a new
  index, or one that workloads or Helm name by digest only (untagged, so no snapshot read it),
  must not list a target as a platform manifest; and, by default, a fresh cluster scan must not
  show a target in use. A re-check that cannot run deletes nothing (fail closed).
- **Journal** (`journal`): `started` is durable (fsync) before each DELETE goes out, `done`/
  `skipped`/`failed` is written after. Running the same plan again resumes: `done` targets are
  never requested again, and a target left `started` is looked up first (gone means done).
- **Lock** (tasks/sweep/lock.py): one sweep per registry at a time, a lock file in the store.

Everything here is plain Python; flows/sweep.py is the one orchestration (lock, approval pause,
artifacts) and calls, in order: `prepare`, `check_deletable` (a registry that cannot delete is
said so before any approval is asked), `check_up_front_approval` (or the approval form),
`delete_targets`, `raise_if_failed`.
"""

from tasks.sweep.execute import delete_targets
from tasks.sweep.journal import Journal
from tasks.sweep.loading import prepare
from tasks.sweep.report import Intent, SweepReport, check_deletable, check_up_front_approval, raise_if_failed

__all__ = ["Intent", "Journal", "SweepReport", "check_deletable", "check_up_front_approval", "delete_targets",
           "prepare", "raise_if_failed"]
