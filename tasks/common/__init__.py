"""What every stage shares and nothing else: the typed error tree, units, notes and progress.

- `errors`: every error regsweep raises on purpose, each with what a user needs to act on it and
  its exit code (RegsweepError, ConfigError, InputFileError, StoreError, NotFound, SourceError and
  its registry, cluster, Helm and git kinds, the sweep's refusals).
- `units`: one home for each rule of time, duration and byte formatting (`parse_duration`,
  `parse_build_time`, `human_age`, `human_bytes`, `utcnow`).
- `notes`: warnings and retries a run collects for snapshot.json and the logs (`warn`, `retried`,
  `collecting`).
- `progress`: progress on a terminal, quiet line-oriented output when piped (`terminal_progress`).

No Prefect tasks: nothing here runs on its own.
"""

from tasks.common.errors import (ConfigError, InputFileError, NotFound, RegsweepError, SourceError,
                                 StoreError)
from tasks.common.units import human_age, human_bytes, parse_duration, utcnow

__all__ = ["ConfigError", "InputFileError", "NotFound", "RegsweepError", "SourceError", "StoreError", "human_age",
           "human_bytes", "parse_duration", "utcnow"]
