"""Configurations the worker holds: the only configurations a deployment run may use.

A deployment can be started by anyone who can reach the Prefect UI or API, with any parameters;
in Prefect OSS every such user can also edit blocks and variables. Nothing that grants rights
(hosts, credentials, files, stores, schedulers, approval) may therefore come from a run. A
deployment names a configuration; the worker resolves the name in the directory it was started
with (`REGSWEEP_CONFIG_DIR`), one file `<name>.yaml` per configuration. docs/security.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tasks.common.errors import ConfigError
from tasks.config.models import RegsweepConfig, load_config

CONFIG_DIR_ENV = "REGSWEEP_CONFIG_DIR"
#: A name, never a path: no separator, no dot-dot, no hidden file.
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def config_dir() -> Path:
    """The directory of configurations this worker holds; refused when the worker was started without one."""
    value = os.environ.get(CONFIG_DIR_ENV, "").strip()
    if not value:
        raise ConfigError("config", f"this worker holds no configurations: start it with {CONFIG_DIR_ENV} set "
                                    "to a directory of <name>.yaml files")
    return Path(value)


def load_named_config(name: str) -> RegsweepConfig:
    """The configuration `<name>.yaml` in the worker's configuration directory."""
    if not NAME.match(name):
        raise ConfigError("config", "must name a configuration the worker holds (lowercase letters, digits, '-', '_'), "
                                    "not a path or a URL")
    path = config_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError("config", f"the worker holds no configuration named {name!r}")
    return load_config(path)
