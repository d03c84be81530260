"""Undoing a sweep until the registry's garbage collector runs: `regsweep restore` (docs/operations/restore.md).

A sweep id is the id of the plan the sweep acted on (`regsweep sweep --plan ID`, the id its report
names): the journal of every run of that plan is `journal/<plan id>/`, and what a restore needs is
`restore/<plan id>/` (schema `RESTORE`). Right before a target's `started` record, the sweep reads its
manifest by digest and records it here, durable before the DELETE goes out: the bytes the registry
served, their media type, the tags it carried and the digests deleted before it (its index, its
subject). Manifests are public content: no credential is ever recorded.

`restore` re-uploads, through the Distribution API at `registry.url`, what the journal says was
deleted (`done`), children before their index, each group (a manifest with what went along with it)
only when every blob and manifest it refers to is still in the registry: a DELETE removes only the
manifest, and its blobs stay until garbage collection removes those nothing references. Then it
re-creates each tag the manifest carried, unless the tag now resolves to another digest (a tag that
moved is never overwritten). Every item gets one line: what was restored, what was already there,
what cannot be restored and why.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from tasks.common.errors import ManifestUnknown, NotFound, RegistryError
from tasks.common.units import utcnow
from tasks.oci import manifest as oci
from tasks.store.schemas import RESTORE
from tasks.store.store import Store
from tasks.sweep.journal import Journal
from tasks.sweep.targets import Target

if TYPE_CHECKING:
    from tasks.config.models import RegsweepConfig
    from tasks.registry.distribution import RegistryClient

log = logging.getLogger("regsweep.restore")

def window(plan_id: str) -> str:
    """The undo window, in the words the approval form and the sweep report use (docs/operations/restore.md)."""
    return (f"deleted manifests and tags can be restored with `regsweep restore --sweep {plan_id}` until the "
            "registry's garbage collector runs (through the Distribution API at registry.url, which must accept "
            "pushes: docs/operations/restore.md says how each registry API differs)")

# Statuses of a restore item.
RESTORED, PRESENT, CANNOT, NOT_OVERWRITTEN = "restored", "already-there", "cannot-restore", "not-overwritten"


class RestoreLog:
    """`restore/<plan id>/`: what the sweep of one plan recorded before each DELETE."""

    def __init__(self, store: Store, plan_id: str):
        self.store, self.plan_id = store, plan_id
        self.log = f"restore/{plan_id}"

    def write(self, recorded: list[tuple[Target, str, bytes]]) -> None:
        """Append (target, media type, body) records; durable when this returns."""
        if not recorded:
            return
        now = utcnow()
        self.store.append_rows(self.log, pa.table({
            "time": [now] * len(recorded), "plan_id": [self.plan_id] * len(recorded),
            "repository": [t.repository for t, _, _ in recorded], "target": [t.ref for t, _, _ in recorded],
            "digest": [t.digest for t, _, _ in recorded], "media_type": [m for _, m, _ in recorded],
            "body": [b for _, _, b in recorded],
            "tags": [[t.ref] if t.is_tag else list(t.tags) for t, _, _ in recorded],
            "parents": [[] if t.is_tag else list(t.parents) for t, _, _ in recorded]}, schema=RESTORE))

    def read(self) -> list[dict]:
        """Every record, first one per (repository, target), in the order written."""
        seen: dict[tuple[str, str], dict] = {}
        for row in self.store.read_rows(self.log, RESTORE).to_pylist():
            seen.setdefault((row["repository"], row["target"]), row)
        return list(seen.values())


async def record_manifests(client: "RegistryClient", targets: list[Target]) -> tuple[list[tuple[Target, str, bytes]],
                                                                                     dict[str, str]]:
    """Read each target's manifest by digest for the restore log: (records, {target key: why not}).

    A manifest already gone (404) is neither: the deletion finds it gone. One that cannot be read
    otherwise is not deleted (fail closed): a deletion that could not be undone was not approved."""
    async def one(t: Target):
        try:
            digest, media_type, body = await client.get_manifest(t.repository, t.digest)
        except ManifestUnknown:
            return None
        except RegistryError as e:
            return f"its manifest could not be read to record it for `regsweep restore`: {e}"
        return t, media_type, body

    got = await asyncio.gather(*(one(t) for t in targets))
    records = [g for g in got if isinstance(g, tuple)]
    refused = {f"{t.repository}\n{t.ref}": g for t, g in zip(targets, got) if isinstance(g, str)}
    return records, refused


@dataclass
class RestoreItem:
    """One line of a restore: a manifest (`repo@digest`) or a tag (`repo:tag`), and what became of it."""

    repository: str
    ref: str
    digest: str
    status: str
    detail: str = ""

    def line(self) -> str:
        what = f"{self.repository}:{self.ref}" if self.ref != self.digest else f"{self.repository}@{self.digest}"
        words = {RESTORED: "restored", PRESENT: "already there", CANNOT: "cannot restore",
                 NOT_OVERWRITTEN: "not restored"}[self.status]
        return f"{words} {what}" + (f": {self.detail}" if self.detail else "")


@dataclass
class RestoreReport:
    sweep_id: str
    registry: str
    items: list[RestoreItem] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for i in self.items if i.status == status)

    @property
    def complete(self) -> bool:
        return not any(i.status in (CANNOT, NOT_OVERWRITTEN) for i in self.items)

    def summary(self) -> str:
        manifests = sum(1 for i in self.items if i.status == RESTORED and i.ref == i.digest)
        tags = sum(1 for i in self.items if i.status == RESTORED and i.ref != i.digest)
        head = (f"restore of sweep {self.sweep_id} in {self.registry}: restored {manifests} manifests and {tags} tags"
                f", {self.count(PRESENT)} already there")
        left = self.count(CANNOT) + self.count(NOT_OVERWRITTEN)
        return head + (f", {left} not restored (see the lines above)" if left else "")

    def markdown(self) -> str:
        return "\n".join([f"# Restore of sweep {self.sweep_id}", "", f"Registry: `{self.registry}`", ""]
                         + [f"- {i.line()}" for i in self.items] + ["", f"**{self.summary()}**"])

    def to_json(self) -> dict:
        return {"sweep_id": self.sweep_id, "registry": self.registry, "summary": self.summary(),
                "complete": self.complete, "lines": [i.line() for i in self.items],
                "items": [asdict(i) for i in self.items]}


def _selected(rows: list[dict], repository: str | None, tag: str | None) -> list[tuple[dict, list[str]]]:
    """The records to restore, each with the tags to re-create: `--repository` and `--tag` select a
    manifest (and what went along with it: its platform manifests, its artifacts), `--tag` only that tag."""
    rows = [r for r in rows if repository is None or r["repository"] == repository]
    if tag is None:
        return [(r, list(r["tags"])) for r in rows]
    chosen = {id(r): [tag] for r in rows if tag in r["tags"]}
    grew = True
    while grew:   # what was deleted along with a chosen manifest
        grew = False
        roots = {(r["repository"], r["digest"]) for r in rows if id(r) in chosen}
        for r in rows:
            if id(r) not in chosen and any((r["repository"], p) in roots for p in r["parents"]):
                chosen[id(r)] = list(r["tags"])
                grew = True
    return [(r, chosen[id(r)]) for r in rows if id(r) in chosen]


def restore(config: "RegsweepConfig", store: Store, sweep_id: str, *, repository: str | None = None,
            tag: str | None = None) -> RestoreReport:
    """Restore what the sweep of plan `sweep_id` deleted (filtered); NotFound when it deleted nothing
    restorable that matches."""
    done = Journal(store, sweep_id).state().done
    rows = [r for r in RestoreLog(store, sweep_id).read() if (r["repository"], r["target"]) in done]
    if not rows:
        raise NotFound(f"sweep {sweep_id} deleted nothing that `regsweep restore` can bring back (no journal "
                       f"and restore records in the store for it; its id is the id of the plan it acted on)",
                       what="sweep")
    picked = _selected(rows, repository, tag)
    if not picked:
        which = " ".join(f"{k} {v}" for k, v in (("--repository", repository), ("--tag", tag)) if v)
        raise NotFound(f"sweep {sweep_id} deleted nothing that matches {which}", what="sweep")
    return asyncio.run(_restore(config, sweep_id, picked))


def _groups(picked: list[tuple[dict, list[str]]]) -> list[list[tuple[dict, list[str]]]]:
    """Records grouped with what was deleted along with them (same repository, by `parents`), each
    group children first (the reverse of the order the sweep deleted them in)."""
    group_of: dict[tuple[str, str], int] = {}
    groups: list[list[tuple[dict, list[str]]]] = []
    for r, tags in picked:
        g = next((group_of[(r["repository"], p)] for p in r["parents"] if (r["repository"], p) in group_of), None)
        if g is None:
            g = len(groups)
            groups.append([])
        groups[g].append((r, tags))
        group_of.setdefault((r["repository"], r["digest"]), g)
    return [list(reversed(g)) for g in groups]


async def _missing(client: "RegistryClient", r: dict, restoring: set[tuple[str, str]]) -> list[str]:
    """What manifest `r` refers to that the registry no longer has (and this restore will not bring back)."""
    repo = r["repository"]
    m = oci.parse_manifest(r["body"], r["media_type"])
    missing = []
    blobs = ([m.config] if m.config else []) + m.layers
    for d in blobs:
        if not await client.blob_exists(repo, d.digest):
            missing.append(f"blob {d.digest} is gone (garbage-collected)")
    for d in m.children:
        if (repo, d.digest) not in restoring and await client.head_manifest(repo, d.digest) is None:
            missing.append(f"manifest {d.digest} it lists is gone")
    return missing


async def _restore(config: "RegsweepConfig", sweep_id: str, picked: list[tuple[dict, list[str]]]) -> RestoreReport:
    from tasks.registry.backends import open_backend

    report = RestoreReport(sweep_id=sweep_id, registry=config.registry.url)
    async with open_backend(config.registry) as backend:
        client = backend.oci   # restore goes through the Distribution API at registry.url for every backend
        for group in _groups(picked):
            await _restore_group(client, group, report)
    return report


async def _restore_group(client: "RegistryClient", group: list[tuple[dict, list[str]]], report: RestoreReport) -> None:
    """Upload a group's manifests children first, then its tags; nothing of it when anything it needs is gone."""
    add = report.items.append
    absent = [(r, tags) for r, tags in group
              if await client.head_manifest(r["repository"], r["digest"]) is None]
    restoring = {(r["repository"], r["digest"]) for r, _ in absent}
    why: dict[int, list[str]] = {}
    for r, _ in absent:
        if missing := await _missing(client, r, restoring):
            why[id(r)] = missing
    if why:
        first = next(r for r, _ in absent if id(r) in why)
        for r, tags in group:
            own = why.get(id(r))
            detail = "; ".join(own) if own else (f"deleted with {first['repository']}@{first['digest']}, which "
                                                  "cannot be restored")
            add(RestoreItem(r["repository"], r["digest"], r["digest"], CANNOT, detail + ": nothing of it restored"))
        return
    for r, _ in group:
        repo, digest = r["repository"], r["digest"]
        if (repo, digest) not in restoring:
            if r["target"] == digest:
                add(RestoreItem(repo, digest, digest, PRESENT))
            continue
        try:
            got = await client.put_manifest(repo, digest, r["media_type"], r["body"])
        except RegistryError as e:
            add(RestoreItem(repo, digest, digest, CANNOT, str(e)))
            return   # its index (or subject's relatives) would fail the same way; said above for this one
        add(RestoreItem(repo, digest, digest, RESTORED if got == digest else CANNOT,
                        "" if got == digest else f"the registry stored it as {got}"))
    for r, tags in group:
        repo, digest = r["repository"], r["digest"]
        for tag in tags:
            try:
                now = await client.head_manifest(repo, tag)
                if now == digest:
                    add(RestoreItem(repo, tag, digest, PRESENT))
                elif now is not None:
                    add(RestoreItem(repo, tag, digest, NOT_OVERWRITTEN,
                                    f"tag {tag} now points at {now}: not overwritten"))
                else:
                    await client.put_manifest(repo, tag, r["media_type"], r["body"])
                    add(RestoreItem(repo, tag, digest, RESTORED))
            except RegistryError as e:
                add(RestoreItem(repo, tag, digest, CANNOT, str(e)))
