"""Prefect settings that keep its own noise (telemetry, server logs, shutdown tracebacks) away from users.

Each is a default: a value already in the environment wins. They must be set before Prefect
is first imported, so this module imports nothing heavy (the CLI loads it for `--help` too).
"""

from __future__ import annotations

import os
import sys

from tasks.common.redact import install_log_filter

_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",   # with no network, telemetry fails loudly
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "ERROR",       # the temporary local server's own chatter
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",   # a loaded 2-core machine needs more than 20 s
    "PREFECT_LOGGING_EXTRA_LOGGERS": "regsweep",   # regsweep's warnings and retries reach the run logs (the UI)
    # ...and outside a run (the CLI's preflight, plain function calls) they stay local, without a warning
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def set_defaults(**overrides: str) -> None:
    """Quiet Prefect for a script or a test session; `overrides` replace defaults, not the environment."""
    for key, value in {**_DEFAULTS, **overrides}.items():
        os.environ.setdefault(key, value)
    install_log_filter()   # every log record, Prefect's included, is masked of the secrets read


def set_cli_defaults(verbose: bool = False) -> None:
    """The CLI's: run logs still reach the Prefect API (the UI shows them), while the terminal
    gets regsweep's own one-line messages, not Prefect's tracebacks of failures regsweep explains."""
    set_defaults(PREFECT_LOGGING_LEVEL="INFO",
                 PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="INFO" if verbose else "CRITICAL",
                 PREFECT_LOGGING_LOG_PRINTS="false",
                 PREFECT_CLI_COLORS="true" if sys.stderr.isatty() else "false")
