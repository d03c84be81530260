"""One redaction step between every secret regsweep reads and everything it writes out.

Whatever reads a secret (tasks/config/models.py `read_secret`, the docker config's credentials,
a kubeconfig's bearer token) calls `remember(value)`; `redact(text)` then replaces every
remembered value in `text` with `***`. Error messages (`RegsweepError.__str__`), warnings and
retry notes (tasks/common/notes.py, which also feed snapshot.json) and every log record of the
process (`install_log_filter`, installed by flows/prefect_env.py, so Prefect's run logs too)
pass through it (the log filter is also installed by the first `remember`, for processes that
never ran flows/prefect_env.py). A secret that reached a message through a path nobody foresaw, such as a
protocol library quoting a header value, is masked there as well.

Values shorter than MIN_LENGTH are not remembered: masking every "ab" in every message would
make them unreadable, and such a value protects nothing anyway.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from urllib.parse import quote

#: Shorter values are not masked (see the module docstring).
MIN_LENGTH = 4
MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def remember(value: str | None) -> None:
    """Mask `value` from now on, and the spellings messages give it: escaped as Python shows a
    str or bytes (an HTTP library quoting a header: b'tok\\n'), and URL-quoted."""
    if not value or len(value) < MIN_LENGTH:
        return
    global _pattern
    forms = {value, repr(value)[1:-1], repr(value.encode("utf-8", "surrogateescape"))[2:-1],
             quote(value, safe="")}
    with _lock:
        if forms <= _secrets:
            return
        _secrets.update(f for f in forms if len(f) >= MIN_LENGTH)
        # Longest first: a secret that contains another is masked whole, not around the other.
        _pattern = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))
    # Processes that never ran flows/prefect_env.py (a deployment's worker) get it here, before
    # the secret can be logged.
    install_log_filter()


def redact(text: str) -> str:
    """`text` with every remembered secret replaced by ***."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def forget_all() -> None:
    """Forget every remembered secret (tests only: a process never un-reads a secret)."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


# --- logging -------------------------------------------------------------------------------------

_installed = False


def _redacted_record(factory):
    def make(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if _pattern is None:
            return record   # nothing read yet: the common case costs one check
        try:
            message = record.getMessage()
        except Exception:   # a malformed call: leave it to logging's own error report
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters render exc_text when it is set: render it now, masked, since the
            # exception's own text (a protocol library's, say) may quote a secret.
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record
    make._regsweep_redacts = True   # type: ignore[attr-defined]
    return make


def install_log_filter() -> None:
    """Mask remembered secrets in every log record this process creates, whichever logger or
    handler (Prefect's API handler included) it later goes through.

    It wraps the log record factory rather than adding a `logging.Filter`, because a filter
    sees only the records of the logger or handler it is attached to, and Prefect attaches its
    handlers after this runs (flows/prefect_env.py runs before Prefect is imported).
    """
    global _installed
    with _lock:
        if _installed or getattr(logging.getLogRecordFactory(), "_regsweep_redacts", False):
            _installed = True
            return
        logging.setLogRecordFactory(_redacted_record(logging.getLogRecordFactory()))
        _installed = True
