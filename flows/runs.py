"""What a flow run may be told: the boundary between whoever starts a run and the worker that runs it.

The command line calls the flows in its own process with the configuration file its user gave.
A deployment run is started from the Prefect UI or API, where anyone who can start it can set
every parameter: such a run takes only the *name* of a configuration the worker holds
(tasks/config/pinned.py), and its other parameters choose among safe things (which snapshot or
plan, a dry run, a candidate policy, a date). Approval given up front, and a higher deletion cap,
are a deployment run's only when the worker's own configuration allows them (`sweep.upFrontApproval`).
"""

from typing import Annotated

from pydantic import Field

from tasks.common.errors import ConfigError
from tasks.config.models import RegsweepConfig
from tasks.config.pinned import load_named_config

#: The `config` parameter of every flow: a deployment gives a name, the command line a configuration.
ConfigParam = Annotated[RegsweepConfig | str, Field(description=(
    "The name of a configuration the worker holds (a file `<name>.yaml` in the directory `REGSWEEP_CONFIG_DIR` "
    "the worker was started with). A deployment run takes only a name; hosts, credentials, stores and files "
    "never come from a run's parameters."))]


def in_deployment_run() -> bool:
    """Whether this flow run was started from a deployment (the UI, the API, a schedule)."""
    from prefect.runtime import deployment

    return bool(deployment.id)


def run_config(config: RegsweepConfig | str) -> RegsweepConfig:
    """The configuration this run may use: the worker's own when a deployment started it."""
    if isinstance(config, str):
        return load_named_config(config)
    if in_deployment_run():
        raise ConfigError("config", "a deployment run takes the name of a configuration the worker holds, "
                                    "not a configuration: refused")
    return config


def check_run_approval(config: RegsweepConfig, approve: bool, max_deletions: int | None) -> None:
    """Refuse, in a deployment run, approval up front or a cap above `sweep.maxDeletions` unless the
    worker's configuration allows them; the approval form in the UI stays the way to approve."""
    if not in_deployment_run():
        return
    if approve and not config.sweep.upFrontApproval:
        raise ConfigError("approve", "a deployment run cannot approve up front: the worker's configuration does not "
                                     "allow it (sweep.upFrontApproval); approve in the form the run pauses with")
    if max_deletions is not None and max_deletions > config.sweep.maxDeletions:
        raise ConfigError("max_deletions", f"above the worker's sweep.maxDeletions ({config.sweep.maxDeletions}): refused")
