"""regsweep's work, one package per pipeline stage; flows/ only sequences it.

    common ← config, oci ← store ← registry ← sources ← snapshot ← plan ← history, sweep ← flows

Each stage imports only the stages below it (an import-linter contract in pyproject.toml, checked
by `make test`). Each stage package says in its docstring what it owns and its public names, and
keeps the Prefect tasks its flows run in `tasks/<stage>/tasks.py` (snapshot, plan, history,
sweep), so that only those modules import Prefect. docs/development/architecture.md draws it.
"""
