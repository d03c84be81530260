"""Progress reporting that extractors call without knowing who listens.

On a terminal the CLI installs a rich progress display; piped, it prints a line per stage;
inside a deployment nothing listens and the calls cost nothing.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Iterator, Protocol


class Reporter(Protocol):
    def start(self, key: str, description: str, total: int | None) -> None: ...
    def advance(self, key: str, n: int = 1) -> None: ...
    def finish(self, key: str, summary: str) -> None: ...


class _Silent:
    def start(self, key, description, total): pass
    def advance(self, key, n=1): pass
    def finish(self, key, summary): pass


class _Lines:
    """Line-oriented progress for pipes and log files: one line when a stage starts and ends."""

    def __init__(self, stream):
        self.stream, self.lock = stream, threading.Lock()

    def start(self, key, description, total):
        with self.lock:
            # stream.write, not print: Prefect's log_prints would turn print() into log records
            self.stream.write(f"{description}" + (f" ({total})" if total else "") + "\n")
            self.stream.flush()

    def advance(self, key, n=1):
        pass

    def finish(self, key, summary):
        with self.lock:
            self.stream.write(summary + "\n")
            self.stream.flush()


class _Rich:
    def __init__(self, progress):
        self.progress, self.ids, self.lock = progress, {}, threading.Lock()

    def start(self, key, description, total):
        with self.lock:
            self.ids[key] = self.progress.add_task(description, total=total)

    def advance(self, key, n=1):
        tid = self.ids.get(key)
        if tid is not None:
            self.progress.advance(tid, n)

    def finish(self, key, summary):
        with self.lock:
            tid = self.ids.pop(key, None)
            if tid is not None:
                self.progress.update(tid, description=summary, completed=self.progress.tasks[tid].total or 1,
                                     total=self.progress.tasks[tid].total or 1)


_current: Reporter = _Silent()


def reporter() -> Reporter:
    return _current


@contextlib.contextmanager
def terminal_progress(stream=None) -> Iterator[None]:
    """Show progress on stderr: rich bars on a terminal, plain lines when piped."""
    global _current
    stream = stream or sys.stderr
    previous = _current
    if stream.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(file=stream), transient=False) as p:
            _current = _Rich(p)
            try:
                yield
            finally:
                _current = previous
    else:
        _current = _Lines(stream)
        try:
            yield
        finally:
            _current = previous
