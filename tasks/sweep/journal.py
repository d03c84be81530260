"""The sweep journal: every deletion attempt, recorded before and after it is made (README "Safety").

`<store>/journal/<plan id>/` holds one immutable Parquet file per write, appended through
`Store.append_rows`, which makes each durable before it returns (fsync and rename on a local
disk, the PUT on object stores): a `started` record survives a crash or SIGKILL before the
DELETE it announces goes out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from tasks.store.schemas import JOURNAL
from tasks.store.store import Store
from tasks.sweep.targets import DONE, PLANNED, STARTED
from tasks.common.units import utcnow

#: One record: (repository, target, event, detail); target is a digest or a lone tag.
Event = tuple[str, str, str, str | None]


@dataclass
class JournalState:
    """What earlier runs of a plan did: targets done, and targets started but never finished."""

    done: set[tuple[str, str]] = field(default_factory=set)
    in_flight: set[tuple[str, str]] = field(default_factory=set)


class Journal:
    """The append-only journal of one plan."""

    def __init__(self, store: Store, plan_id: str):
        self.store, self.plan_id = store, plan_id
        self.log = f"journal/{plan_id}"

    def read(self) -> pa.Table:
        return self.store.read_rows(self.log, JOURNAL)

    def state(self) -> JournalState:
        t = self.read()
        st = JournalState()
        if t.num_rows == 0:
            return st
        last: dict[tuple[str, str], str] = {}
        for repo, target, event in zip(*(t.column(c).to_pylist() for c in ("repository", "target", "event"))):
            k = (repo, target)
            if event == DONE:
                st.done.add(k)
            if event != PLANNED:
                last[k] = event
        st.in_flight = {k for k, e in last.items() if e == STARTED and k not in st.done}
        return st

    def write(self, events: list[Event]) -> None:
        """Append records; durable when this returns."""
        if not events:
            return
        now = utcnow()
        repos, targets, kinds, details = zip(*events)
        self.store.append_rows(self.log, pa.table(
            {"time": [now] * len(events), "plan_id": [self.plan_id] * len(events), "repository": list(repos),
             "target": list(targets), "event": list(kinds), "detail": list(details)}, schema=JOURNAL))
