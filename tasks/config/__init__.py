"""Configuration: the YAML a user writes, as pydantic models with field descriptions (the Prefect
UI renders them as forms), and where a run may take it from.

- `models`: `RegsweepConfig` and its sections (registry, link, git, kubernetes, helm, sweep,
  runner), `load_config` (one YAML file, relative paths anchored at the file), secret reading by
  name (`*_env`, `*_file`, `*_block`) that never stores the value.
- `policy`: `CleanupPolicy`, werf.yaml's `cleanup:` section accepted verbatim.
- `pinned`: configurations the worker holds (`REGSWEEP_CONFIG_DIR`), the only ones a deployment
  run may use (docs/security.md).

No Prefect tasks. docs/configuration.md lists every key.
"""

from tasks.config.models import RegsweepConfig, load_config
from tasks.config.pinned import load_named_config
from tasks.config.policy import CleanupPolicy

__all__ = ["CleanupPolicy", "RegsweepConfig", "load_config", "load_named_config"]
