"""Quantities as regsweep reads and writes them: points in time, durations and byte counts.

One home for each rule, so that the snapshot, the plan, the sweep and history read a time or
print a size the same way:

- times are aware UTC datetimes; `parse_time` reads RFC 3339 as registries and Helm write it
  (Go's nanoseconds, `Z`) and Python's own `isoformat()` as the store writes it;
- durations are Go-style strings (`168h`, `1h30m`) as werf writes them (durationpy);
- ages (how long ago) are written by `human_age`, in the style of their reader: a message, a
  plan's reason, the approval form;
- byte counts are shown in decimal units (kB, MB, GB: powers of 1000), as registries, `docker
  images` and cloud bills show them (humanize).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import durationpy
import humanize
import numpy as np

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


AgeStyle = Literal["decimal", "compact", "ago"]


def human_age(d: timedelta, style: AgeStyle = "decimal") -> str:
    """An age as regsweep writes one: hours up to two days, then days, in one of three styles.

    - `decimal`, for messages (a plan's age when a sweep refuses it): `5.0h`, `3.2 days`;
    - `compact`, for a plan's reasons, in whole minutes as werf writes durations: `35m`, `5h`,
      `5h12m`, `3d` (days rounded down: an image "3d" old is not 4 days old);
    - `ago`, for the approval form: `less than a minute ago`, `12 min ago` (up to 90 minutes),
      `3h ago`, `2 days ago` (rounded).

    A negative age (a time in the future) is no age: `0m` in the compact style, `less than a
    minute ago` in the `ago` style.
    """
    if style == "compact":
        minutes = max(0, d // timedelta(minutes=1))
        return format_duration(minutes * 60_000_000) if minutes < 48 * 60 else f"{minutes // (24 * 60)}d"
    if style == "ago":
        minutes = d.total_seconds() / 60
        if minutes < 1:
            return "less than a minute ago"
        if minutes < 90:
            return f"{round(minutes)} min ago"
        return f"{round(minutes / 60)}h ago" if minutes < 48 * 60 else f"{round(minutes / 1440)} days ago"
    hours = d.total_seconds() / 3600
    return f"{hours:.1f}h" if hours < 48 else f"{hours / 24:.1f} days"


def compact_ages(age_us: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """`human_age(…, "compact")` of many ages in microseconds, as codes into the distinct texts
    (a plan writes one text per distinct age, however many images share it)."""
    minutes = np.maximum(np.asarray(age_us, np.int64), 0) // 60_000_000
    # ages that read the same share a key: whole minutes below two days, whole days above
    key = np.where(minutes < 48 * 60, minutes, minutes // (24 * 60) * (24 * 60))
    uniq, codes = np.unique(key, return_inverse=True)
    return codes.reshape(-1), [human_age(timedelta(minutes=int(k)), "compact") for k in uniq]


def human_bytes(n: int | float) -> str:
    """A byte count in decimal units: `0 B`, `512 B`, `1.5 kB`, `34.5 MB`."""
    n = int(n)
    if abs(n) < 1000:
        return f"{n} B"
    return humanize.naturalsize(n, binary=False, format="%.1f")
