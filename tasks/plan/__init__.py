"""The plan: a stored snapshot evaluated under the keep policies, published for a sweep to act on.

The plan stage owns the decision of keep or delete for every tag and manifest of a snapshot — a
pure function of (snapshot tables, snapshot meta, policy, and for the history-only rules the
earlier snapshots in the store), so re-evaluating a snapshot reproduces its plan — and everything
made from that decision: the plan's rows and plan.json, its summary and artifacts, `regsweep
explain`, and the what-if's cache of the current policy's decision. It reads snapshots and writes
plans and that one cache; it never talks to a registry or a cluster.

Modules, from the evaluation's inputs up:

- `inputs`: which tables and columns the evaluation reads and in which form (`read_tables`,
  `read_frames`), the snapshot's own "now" (`snapshot_now`), what only the whole snapshot tells
  a batch (`Shared`);
- `references`: image references as the in-use, Helm and seen rules read them, and the one
  spelling of a workload and of a Helm revision;
- `codes`, `nodes`, `reasons`: the snapshot as integer nodes, and the reasons column;
- `git/`: werf's git keep policies over the commit graph; `history_rules`: the inputs of the
  rules only history makes possible (seen in use, first seen);
- `evaluate`: the keep rules, with two entry points over one evaluation: `plan_rows` (rows with
  reasons) and `decide` (the Decision alone, for the what-if's replays);
- `batches`: the evaluation in batches of whole repositories, so memory follows a batch;
- `make`: `make_plan`, evaluating and publishing a plan; `render`: its summary, artifact and
  JSON; `explain`: why a stored plan keeps or deletes an image;
- `decision_cache`: the what-if's entry for the current policy at a snapshot, written from a
  plan (`cache_current_decision`) and read by tasks/history/whatif.py.

Imports point one way: batches → evaluate → references, nodes, reasons, inputs; make → batches,
render, history_rules; decision_cache → make. Inside the package, modules import each other's
modules, never this package.

The plan flow (flows/plan.py `plan_flow`) runs two Prefect tasks (tasks/plan/tasks.py), in order:
`evaluate-plan` (`make_plan`) and `cache-whatif-entry` (`cache_current_decision`), then publishes
the plan's markdown and table artifacts.
"""

from tasks.plan.decision_cache import Outcome, cache_current_decision, policy_key, read_current, write_current
from tasks.plan.evaluate import Decision, PlanRows, decide, plan_rows
from tasks.plan.explain import explain
from tasks.plan.history_rules import HistoryInputs
from tasks.plan.inputs import read_frames, read_tables, snapshot_now
from tasks.plan.make import PlanResult, make_plan
from tasks.plan.render import plan_summary, summary_markdown, write_plan_json

__all__ = ["Decision", "HistoryInputs", "Outcome", "PlanResult", "PlanRows", "cache_current_decision", "decide",
           "explain", "make_plan", "plan_rows", "plan_summary", "policy_key", "read_current", "read_frames",
           "read_tables", "snapshot_now", "summary_markdown", "write_current", "write_plan_json"]
