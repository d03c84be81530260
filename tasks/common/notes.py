"""What a source (or a sweep) noticed while it worked: warnings and retried requests.

`run_source` collects them per source for snapshot.json (`sources.<name>.warnings` and
`.retries`: a count and the first few messages); the sweep puts them in its report. Code
below calls `warn(log, message)` and `retried(log, message)`, which log as well. Collection
follows the context: asyncio tasks inherit it, and threads run through `in_context` do, so
two sources of one snapshot, or two snapshots in one process, never mix their notes.
Messages are redacted (tasks/common/redact.py) before they are logged or kept: they quote
what registries and libraries said, and they end up in snapshot.json and the run logs.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

from tasks.common.redact import redact

#: Messages kept per kind; the count goes on.
MAX_MESSAGES = 5

T = TypeVar("T")


@dataclass
class Tally:
    """A count and its first few messages."""

    count: int = 0
    messages: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "messages": list(self.messages)}


@dataclass
class Notes:
    """Warnings and retries of one source or sweep."""

    warnings: Tally = field(default_factory=Tally)
    retries: Tally = field(default_factory=Tally)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"warnings": self.warnings.to_json(), "retries": self.retries.to_json()}


_current: contextvars.ContextVar[Notes | None] = contextvars.ContextVar("regsweep_notes", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[Notes]:
    """Collect what the code run inside reports, into the Notes yielded."""
    notes = Notes()
    token = _current.set(notes)
    try:
        yield notes
    finally:
        _current.reset(token)


def _note(kind: str, message: str) -> None:
    notes = _current.get()
    if notes is not None:
        with notes._lock:
            getattr(notes, kind).add(message)


def warn(log: logging.Logger, message: str) -> None:
    """Log a warning and count it for snapshot.json."""
    message = redact(message)
    log.warning(message)
    _note("warnings", message)


def retried(log: logging.Logger, message: str) -> None:
    """Log a request about to be tried again and count it."""
    message = redact(message)
    log.warning(message)
    _note("retries", message)


def in_context(fn: Callable[[], T]) -> Callable[[], T]:
    """`fn` bound to the caller's context, for running on another thread."""
    ctx = contextvars.copy_context()
    return lambda: ctx.run(fn)
