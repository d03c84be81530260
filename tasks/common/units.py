"""Quantities as regsweep reads and writes them: points in time, durations and byte counts.

One home for each rule, so that the snapshot, the plan, the sweep and history read a time or
print a size the same way:

- times are aware UTC datetimes; `parse_time` reads RFC 3339 as registries and Helm write it
  (Go's nanoseconds, `Z`) and Python's own `isoformat()` as the store writes it;
- durations are Go-style strings (`168h`, `1h30m`) as werf writes them (durationpy);
- byte counts are shown in decimal units (kB, MB, GB: powers of 1000), as registries, `docker
  images` and cloud bills show them (humanize).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import durationpy
import humanize

#: A build time before this is not a build time (reproducible builds stamp 1970 or similar).
TRUSTED_SINCE = datetime(2013, 1, 1, tzinfo=timezone.utc)

_NANOS = re.compile(r"(\.\d{6})\d+")


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(timezone.utc)


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 / ISO 8601 time as aware UTC; None when absent or unparsable (naive = UTC)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str) and value.strip():
        s = value.strip().replace("z", "Z")
        if s.endswith("Z"):
            s = s[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(_NANOS.sub(r"\1", s))
        except ValueError:
            return None
    else:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def parse_build_time(value: Any) -> datetime | None:
    """A build time, or None when absent, unparsable or before 2013 (reproducible builds write 1970)."""
    dt = parse_time(value)
    return dt if dt is not None and dt >= TRUSTED_SINCE else None


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """Parse a Go-style duration (`168h`, `90m`, `1h30m`) as werf writes them; ValueError otherwise."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # werf durations are strings; a bare number is ambiguous (seconds? hours?), refuse it
        raise ValueError(f"duration {value!r} needs a unit, e.g. '{value}h'")
    text = str(value).strip()
    try:
        if text.startswith("P"):
            # ISO 8601 (`P7D`): how pydantic writes a duration to JSON, so a configuration that went
            # through Prefect's stored parameters (a deployment run, the UI form) reads back
            from pydantic import TypeAdapter

            d = TypeAdapter(timedelta).validate_python(text)
        else:
            d = durationpy.from_str(text)
    except Exception:
        raise ValueError(f"{value!r} is not a duration (expected e.g. '12h', '90m', '1h30m')") from None
    if d < timedelta(0):
        raise ValueError(f"duration {value!r} is negative")
    return d


def format_duration(d: timedelta | int) -> str:
    """A duration (or microseconds) as werf users write one: `168h`, `90m`, `12h30m`."""
    us = d if isinstance(d, int) else int(d.total_seconds() * 1_000_000)
    minutes = max(0, us // 60_000_000)
    h, m = divmod(minutes, 60)
    if h and m:
        return f"{h}h{m}m"
    return f"{h}h" if h else f"{m}m"


def human_age(d: timedelta) -> str:
    """An age for messages: hours up to two days, then days (`5.0h`, `3.2 days`)."""
    hours = d.total_seconds() / 3600
    return f"{hours:.1f}h" if hours < 48 else f"{hours / 24:.1f} days"


def human_bytes(n: int | float) -> str:
    """A byte count in decimal units: `0 B`, `512 B`, `1.5 kB`, `34.5 MB`."""
    n = int(n)
    if abs(n) < 1000:
        return f"{n} B"
    return humanize.naturalsize(n, binary=False, format="%.1f")
