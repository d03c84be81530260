"""History: what the stored snapshots say over time. It only reads the store (and the caches the
snapshot and plan flows write).

- `growth`: the growth report — per snapshot and per repository tags, manifests, unique and image
  bytes, churn, growth per day and projections (only from at least a day of history).
- `whatif`: a candidate `cleanup:` policy replayed over every complete snapshot beside the current
  one, with its regrets.
- `charts`: the PNG charts the command line writes.

Prefect tasks (tasks/history/tasks.py): `read-growth` (the history flow), `replay-candidate` (the
what-if flow). docs/history-and-whatif.md.
"""

from tasks.history.growth import Growth, growth_report
from tasks.history.whatif import WhatIf, load_policy

# (the what-if's entry point stays `tasks.history.whatif.whatif`: a re-export would hide the module)
__all__ = ["Growth", "WhatIf", "growth_report", "load_policy"]
