"""Taking a snapshot: every enabled source into one published, immutable set of Parquet tables.

- `take`: choosing and running sources (`select_sources`, `run_source`, `SourceStatus`), and
  snapshot.json (`snapshot_meta`);
- `scaleout`: the registry scan fanned out in repository batches (Dask);
- `completeness`: what makes a snapshot unfit to delete from (`snapshot_problems`);
- `footprint`: a snapshot's blobs, unique and reclaimable bytes (`Footprint`, `FootprintIndex`);
- `summary`: per-snapshot summaries, diffs and the FootprintIndex cached for history and the
  what-if (`cache_history_inputs`); `render`: the snapshot's artifact (pure).

Prefect tasks (tasks/snapshot/tasks.py), in the order flows/snapshot.py runs them:
`extract-source` (one per source) or `scan-registry-batch` (one per batch, on Dask),
`probe-registry`, then `cache-history-inputs` after publishing.
"""

from tasks.snapshot.completeness import snapshot_problems
from tasks.snapshot.footprint import Footprint, FootprintIndex, load_index
from tasks.snapshot.take import SourceStatus, run_source, select_sources, snapshot_meta

__all__ = ["Footprint", "FootprintIndex", "SourceStatus", "load_index", "run_source", "select_sources",
           "snapshot_meta", "snapshot_problems"]
