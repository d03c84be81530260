"""The gated deletion of a plan (SPEC.md "Safety"): the only code in regsweep that writes to a registry.

A sweep turns a stored plan into deletion *targets*, asks for approval, re-checks the registry
and the clusters, and deletes through a journal:

- **Targets.** A manifest is deleted by digest only when every tag on it is `delete` in the
  plan and nothing kept references it: no kept index lists it as a platform manifest, and an
  artifact goes only with its subject. A deleted index takes its platform manifests along, a
  deleted subject its signatures, SBOMs and referrers fallback index; each of those waits for
  its parents to be gone first, and is skipped when one of them was not deleted. A `delete`
  tag on a digest that stays is removed on its own where the registry can do that.
- **Re-checks**, after approval and just before deleting: every planned tag must still
  resolve to the planned digest (HEAD, right before each DELETE); no other tag in the
  repository may now point at a target (a tag pushed or moved after the snapshot); a new index,
  or one that workloads or Helm name by digest only (untagged, so no snapshot read it), must not
  list a target as a platform manifest; and, by default, a fresh cluster scan must not show a
  target in use. A re-check that cannot run deletes nothing (fail closed).
- **Journal**: `started` is durable (fsync) before each DELETE goes out, `done`/`skipped`/
  `failed` is written after. Running the same plan again resumes: `done` targets are never
  requested again, and a target left `started` is looked up first (gone means done).
- **Lock**: one sweep per registry at a time, a lock file in the store.

Everything here is plain Python; flows/sweep.py only wires it into Prefect (artifacts, pause).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import RegsweepConfig
from tasks.errors import (ManifestUnknown, PlanRefused, RegistryAuthError, RegistryError, RegistryUnreachable,
                          RegsweepError, StoreError, SweepFailed, SweepNotApproved, UnsupportedOperation)
from tasks.lock import sweep_lock
from tasks.oci import tag_subject
from tasks.reference import same_registry
from tasks.schemas import JOURNAL
from tasks.store import Store
from tasks.units import human_age, human_bytes, parse_duration, parse_time, utcnow

if TYPE_CHECKING:
    import pandas as pd

# Journal events.
PLANNED, STARTED, DONE, SKIPPED, FAILED = "planned", "started", "done", "skipped", "failed"
# Outcome statuses a report adds to the journal's: a dry run's, and work finished by an earlier run.
WOULD_DELETE, DONE_BEFORE = "would-delete", "done-before"

#: How far ahead of this machine's clock a snapshot or plan may be dated (clocks drift a little).
CLOCK_SKEW = timedelta(minutes=5)

#: Whether a registry removes a lone tag (DELETE /manifests/<tag>), learnt once per registry
#: per process: Distribution 2.8 refuses (400 DIGEST_INVALID), Distribution 3 and others accept.
_TAG_DELETE_SUPPORT: dict[str, bool] = {}


# ============================================================================ the plan


@dataclass
class LoadedPlan:
    """A plan the sweep agreed to act on, with the snapshot tables it needs."""

    plan_id: str
    snapshot_id: str
    registry: str
    observed_at: datetime          # when the snapshot behind the plan was taken
    plan: "pd.DataFrame"
    tags: "pd.DataFrame"
    manifests: "pd.DataFrame"
    children: "pd.DataFrame"


def load_plan(config: RegsweepConfig, store: Store, plan_ref: str = "latest",
              now: datetime | None = None) -> LoadedPlan:
    """Read a plan and its snapshot, refusing (PlanRefused) any plan a sweep must not act on."""
    from tasks.schemas import CHILDREN, MANIFESTS, TAGS

    now = now or utcnow()
    try:
        plan_id = store.resolve_plan(plan_ref)
    except StoreError as e:
        raise PlanRefused(f"plan {plan_ref!r}: {e}") from None
    meta = store.plan_meta(plan_id)
    snapshot_id = meta.get("snapshot_id")
    if not same_registry(meta.get("registry"), config.registry.url):
        raise PlanRefused(f"plan {plan_id} was made for registry {meta.get('registry')}, "
                          f"not {config.registry.url}: nothing was deleted")
    if meta.get("policy") != config.cleanup.digest():
        # A keep policy added since planning must not be bypassed by sweeping the old plan.
        raise PlanRefused(f"plan {plan_id} was made under a different cleanup policy than the current "
                          "configuration's: run `regsweep plan` again; nothing was deleted")
    if meta.get("complete") is not True:
        raise PlanRefused(f"plan {plan_id} comes from incomplete snapshot {snapshot_id}: "
                          "a sweep never deletes from an incomplete snapshot; nothing was deleted")
    try:
        snap = store.snapshot_meta(snapshot_id) if snapshot_id else None
    except FileNotFoundError:
        snap = None
    if snap is None:
        raise PlanRefused(f"plan {plan_id}: its snapshot {snapshot_id} is not in store {store.url}")
    if snap.get("complete") is not True:
        raise PlanRefused(f"plan {plan_id} comes from incomplete snapshot {snapshot_id}: "
                          "a sweep never deletes from an incomplete snapshot; nothing was deleted")
    # The age that matters is the observation's: a fresh plan of a week-old snapshot is stale.
    observed = parse_time(snap.get("created_at"))
    planned = parse_time(meta.get("created_at"))
    if observed is None or planned is None:
        raise PlanRefused(f"plan {plan_id}: no creation time recorded for it or snapshot {snapshot_id}")
    ahead = max(observed, planned) - now
    if ahead > CLOCK_SKEW:
        # A clock running ahead: "now" was wrong for the fresh rule, and the plan would never age.
        raise PlanRefused(f"plan {plan_id} (or its snapshot {snapshot_id}) was taken in the future, {human_age(ahead)} "
                          "from now: a clock is wrong here or where it was made; nothing was deleted")
    max_age = parse_duration(config.sweep.maxPlanAge)
    age = now - min(observed, planned)
    if age > max_age:
        raise PlanRefused(f"plan {plan_id} is based on snapshot {snapshot_id} taken {human_age(age)} ago, "
                          f"older than sweep.maxPlanAge {config.sweep.maxPlanAge}: take a new snapshot "
                          "and plan; nothing was deleted")

    def table(name, schema):
        t = store.snapshot_table(snapshot_id, name)
        return (t if t is not None else schema.empty_table()).to_pandas(ignore_metadata=True)

    tags = table("tags", TAGS)
    if store.snapshot_table(snapshot_id, "tags") is None:
        raise PlanRefused(f"plan {plan_id}: snapshot {snapshot_id} has no registry tables")
    plan_table = store.plan_table(plan_id)
    wanted = ["repository", "tag", "digest", "kind", "action", "size"]
    missing = [c for c in wanted if c not in plan_table.column_names]
    if missing:
        raise PlanRefused(f"plan {plan_id}: plan.parquet lacks columns {', '.join(missing)}")
    # Only the columns a sweep acts on; whoever wrote the file may have stored pandas extension dtypes.
    plan = plan_table.select(wanted).to_pandas(ignore_metadata=True)
    return LoadedPlan(plan_id=plan_id, snapshot_id=snapshot_id, registry=config.registry.url,
                      observed_at=observed, plan=plan, tags=tags,
                      manifests=table("manifests", MANIFESTS), children=table("children", CHILDREN))


# ============================================================================ targets


@dataclass
class Target:
    """One deletion: a manifest by digest, or (where supported) a lone tag."""

    repository: str
    ref: str                    # what DELETE names: the digest, or the tag for a lone-tag deletion
    digest: str                 # the planned digest
    kind: str                   # image | index | artifact | referrers-index | unknown
    tags: tuple[str, ...] = ()  # tags that must still resolve to `digest` right before deleting
    size: int = 0               # bytes counted for the report (0 for platform manifests of a deleted index)
    parents: tuple[str, ...] = ()  # digests (same repository) that must be deleted first
    note: str = ""              # for a lone tag: why its digest stays

    @property
    def is_tag(self) -> bool:
        return not self.ref.startswith("sha256:")

    @property
    def key(self) -> tuple[str, str]:
        return (self.repository, self.ref)


@dataclass
class Outcome:
    """What happened to one target in this run."""

    repository: str
    ref: str
    digest: str
    kind: str
    tags: tuple[str, ...]
    size: int
    status: str                 # done | skipped | failed | would-delete | done-before
    detail: str = ""

    @property
    def is_tag(self) -> bool:
        return not self.ref.startswith("sha256:")


def deletion_targets(plan: "pd.DataFrame", tags: "pd.DataFrame", manifests: "pd.DataFrame",
                     children: "pd.DataFrame") -> tuple[list[Target], list[Outcome]]:
    """Targets in deletion order (parents first), and the planned deletions this sweep will not make.

    Fails closed wherever the plan and its snapshot disagree: a snapshot tag on a digest that the
    plan does not mark `delete` keeps the digest, as does any `keep` row for it.
    """
    planned_delete_tags: dict[tuple[str, str], set[str]] = {}
    kept: set[tuple[str, str]] = set()
    seeds: set[tuple[str, str]] = set()
    kind: dict[tuple[str, str], str] = {}
    size: dict[tuple[str, str], int] = {}
    for r in plan.itertuples(index=False):
        k = (r.repository, r.digest)
        kind.setdefault(k, r.kind)
        size.setdefault(k, int(r.size or 0))
        if r.action == "delete":
            seeds.add(k)
            if isinstance(r.tag, str):
                planned_delete_tags.setdefault(k, set()).add(r.tag)
        else:
            kept.add(k)

    subject: dict[tuple[str, str], str] = {}
    for r in manifests.itertuples(index=False):
        k = (r.repository, r.digest)
        kind.setdefault(k, r.kind)
        size.setdefault(k, int(r.size or 0))
        if isinstance(r.subject, str):
            subject[k] = r.subject
    known = set(kind)

    # Tags on each digest in the snapshot; the referrers fallback tag belongs to its subject.
    snapshot_tags: dict[tuple[str, str], set[str]] = {}
    for r in tags.itertuples(index=False):
        if r.gone or not isinstance(r.digest, str):
            continue
        k = (r.repository, r.digest)
        snapshot_tags.setdefault(k, set()).add(r.tag)
        fs = tag_subject(r.tag)
        if fs and k not in subject:
            subject[k] = fs
    why_kept: dict[tuple[str, str], str] = {}
    for k, ts in snapshot_tags.items():
        for t in sorted(ts - planned_delete_tags.get(k, set())):
            fs = tag_subject(t)
            if fs and subject.get(k) == fs:
                continue  # kept or deleted with its subject
            why_kept.setdefault(k, f"tag {t} on this digest is not planned for deletion")
    for k in kept:
        why_kept.setdefault(k, "the plan keeps this digest")

    indexes_of: dict[tuple[str, str], set[str]] = {}
    children_of: dict[tuple[str, str], set[str]] = {}
    for r in children.itertuples(index=False):
        indexes_of.setdefault((r.repository, r.child_digest), set()).add(r.index_digest)
        children_of.setdefault((r.repository, r.index_digest), set()).add(r.child_digest)
    referrers_of: dict[tuple[str, str], set[str]] = {}
    for (repo, d), s in subject.items():
        referrers_of.setdefault((repo, s), set()).add(d)

    # Candidates: what the plan deletes, plus every relative that goes with it.
    cand = set(seeds)
    stack = list(cand)
    while stack:
        repo, d = stack.pop()
        for rel in children_of.get((repo, d), set()) | referrers_of.get((repo, d), set()):
            k = (repo, rel)
            if k not in cand:
                cand.add(k)
                stack.append(k)
    why_not: dict[tuple[str, str], str] = {k: why_kept[k] for k in cand if k in why_kept}
    cand -= set(why_not)

    def parents(k: tuple[str, str]) -> set[str]:
        repo, _ = k
        ps = set(indexes_of.get(k, set()))
        s = subject.get(k)
        if s and (repo, s) in known:
            ps.add(s)
        return ps

    # Remove, until nothing changes, whatever a surviving manifest still needs.
    changed = True
    while changed:
        changed = False
        for k in sorted(cand):
            for p in sorted(parents(k)):
                if (k[0], p) not in cand:
                    rel = "refers to" if subject.get(k) == p else "is a platform manifest of"
                    why_not[k] = f"{rel} {p}, which is kept"
                    cand.discard(k)
                    changed = True
                    break

    # Order: parents before children (depth in the relatives graph), then by name for stable output.
    depth: dict[tuple[str, str], int] = {}

    def level(k, seen=()):
        if k in depth:
            return depth[k]
        ps = [(k[0], p) for p in parents(k) if (k[0], p) in cand and (k[0], p) not in seen]
        depth[k] = 1 + max((level(p, seen + (k,)) for p in ps), default=-1)
        return depth[k]

    targets: list[Target] = []
    for k in sorted(cand, key=lambda k: (level(k), k)):
        repo, d = k
        ps = tuple(sorted(p for p in parents(k) if (repo, p) in cand))
        in_index = any((repo, p) in cand for p in indexes_of.get(k, set()))
        targets.append(Target(repository=repo, ref=d, digest=d, kind=kind.get(k, "unknown"),
                              tags=tuple(sorted(snapshot_tags.get(k, set()) | planned_delete_tags.get(k, set()))),
                              size=0 if in_index else size.get(k, 0), parents=ps))

    # Planned deletions that will not happen as digests: a lone `delete` tag may still go alone.
    skipped: list[Outcome] = []
    for k in sorted(seeds - cand):
        repo, d = k
        reason = why_not.get(k, "kept by the sweep")
        # A referrers fallback (or cosign) tag is its subject's, never an image tag of its own to remove.
        lone = sorted(t for t in planned_delete_tags.get(k, set()) if not tag_subject(t))
        for t in lone:
            targets.append(Target(repository=repo, ref=t, digest=d, kind=kind.get(k, "unknown"), tags=(t,),
                                  note=reason))
        if not lone:
            skipped.append(Outcome(repo, d, d, kind.get(k, "unknown"), tuple(sorted(snapshot_tags.get(k, set()))),
                                   size.get(k, 0), SKIPPED, reason))
    return targets, skipped


# ============================================================================ journal


@dataclass
class JournalState:
    """What earlier runs of a plan did: targets done, and targets started but never finished."""

    done: set[tuple[str, str]] = field(default_factory=set)
    in_flight: set[tuple[str, str]] = field(default_factory=set)


class Journal:
    """The append-only journal of one plan: `<store>/journal/<plan id>/<time>-<n>.parquet`.

    Each `write` is one new immutable file. On a local store the file is fsynced and renamed
    into place and the directory fsynced, so a `started` record survives a crash or SIGKILL
    before the DELETE it announces goes out; on object stores the PUT returning is that point.
    """

    def __init__(self, store: Store, plan_id: str):
        self.store, self.plan_id = store, plan_id
        self.log = f"journal/{plan_id}"
        self._seq = 0
        self._dir_ready = False

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

    def rows(self, events: list[tuple[str, str, str, str | None]]) -> pa.Table:
        now = utcnow()
        cols = list(zip(*events)) if events else [[], [], [], []]
        return pa.table({"time": [now] * len(events), "plan_id": [self.plan_id] * len(events),
                         "repository": list(cols[0]), "target": list(cols[1]),
                         "event": list(cols[2]), "detail": list(cols[3])}, schema=JOURNAL)

    def write(self, events: list[tuple[str, str, str, str | None]]) -> None:
        """Append (repository, target, event, detail) records; durable when this returns."""
        if not events:
            return
        table = self.rows(events)
        if not self.store.local:
            self.store.append_rows(self.log, table)
            return
        base = self.store.path(self.log)
        if not self._dir_ready:
            os.makedirs(base, exist_ok=True)
            _fsync_dir(os.path.dirname(base))
            self._dir_ready = True
        self._seq += 1
        name = f"{utcnow().strftime('%Y%m%dT%H%M%S%f')}-{self._seq:06d}-{uuid.uuid4().hex[:6]}.parquet"
        tmp = f"{base}/.{name}.tmp"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, f"{base}/{name}")
            _fsync_dir(base)
        except OSError as e:
            raise StoreError(f"store {self.store.url}: cannot write the sweep journal {base}: {e}") from None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Intent:
    """What a sweep is about to do, shown for approval and then executed."""

    plan_id: str
    snapshot_id: str
    registry: str
    targets: list[Target]              # not yet done, in deletion order
    skipped: list[Outcome]             # planned deletions the sweep itself keeps (see deletion_targets)
    done_before: list[Target]          # done by an earlier run of this plan
    in_flight: set[tuple[str, str]]    # started by an earlier run, never finished
    known: dict[str, set[str]] = field(default_factory=dict)  # digests the snapshot saw, per affected repository
    # digests that the snapshot's workloads and Helm revisions name, per affected repository
    referenced: dict[str, set[str]] = field(default_factory=dict)

    @property
    def deletions(self) -> int:
        return len(self.targets)

    @property
    def bytes(self) -> int:
        return sum(t.size for t in self.targets if not t.is_tag)

    def markdown(self, *, limit: int = 200) -> str:
        """What will be deleted: tags, digests and bytes per repository."""
        manifests = [t for t in self.targets if not t.is_tag]
        lone = [t for t in self.targets if t.is_tag]
        lines = [f"# Sweep of plan `{self.plan_id}`", "",
                 f"Registry {self.registry}, snapshot `{self.snapshot_id}`.", "",
                 f"**{len(manifests)} manifests ({human_bytes(self.bytes)} referenced) and "
                 f"{len(lone)} lone tags will be deleted**"
                 + (f"; {len(self.done_before)} were deleted by an earlier run of this plan" if self.done_before else "")
                 + (f"; {len(self.skipped)} planned deletions are kept by the sweep's own checks" if self.skipped else "")
                 + ". Every tag is re-checked just before its DELETE.", ""]
        per_repo: dict[str, list[int]] = {}
        for t in self.targets:
            r = per_repo.setdefault(t.repository, [0, 0, 0])
            r[0] += 0 if t.is_tag else 1
            r[1] += len(t.tags)
            r[2] += 0 if t.is_tag else t.size
        if per_repo:
            lines += ["| repository | manifests | tags | bytes |", "|---|---:|---:|---:|"]
            lines += [f"| {repo} | {m} | {n} | {human_bytes(b)} |" for repo, (m, n, b) in sorted(per_repo.items())]
            lines.append("")
            lines += ["| repository | tags | digest | kind | size |", "|---|---|---|---|---:|"]
            for t in self.targets[:limit]:
                what = ", ".join(t.tags) if not t.is_tag else f"{t.ref} (this tag only)"
                lines.append(f"| {t.repository} | {what or '(untagged)'} | `{t.digest}` | {t.kind} | {human_bytes(t.size)} |")
            if len(self.targets) > limit:
                lines.append(f"| … | {len(self.targets) - limit} more | | | |")
        if self.skipped:
            lines += ["", "Kept although the plan deletes them:", ""]
            lines += [f"- {o.repository}@{o.digest}: {o.detail}" for o in self.skipped[:limit]]
        return "\n".join(lines)


def check_up_front_approval(intent: Intent, max_deletions: int) -> None:
    """Approval given before the sweep (`--yes`) covers at most `max_deletions` deletions."""
    if intent.deletions > max_deletions:
        raise SweepNotApproved(
            f"plan {intent.plan_id} would delete {intent.deletions} manifests/tags in {intent.registry}, "
            f"more than the {max_deletions} that approval up front (--yes) covers: nothing was deleted. "
            "Approve it in the Prefect UI (run without --yes) or raise --max-deletions.")


# ============================================================================ preparation


def prepare(config: RegsweepConfig, store: Store, plan_ref: str = "latest", now: datetime | None = None) -> Intent:
    """Load and check the plan, compute its targets and drop those an earlier run finished."""
    loaded = load_plan(config, store, plan_ref, now)
    targets, skipped = deletion_targets(loaded.plan, loaded.tags, loaded.manifests, loaded.children)
    state = Journal(store, loaded.plan_id).state()
    remaining = [t for t in targets if t.key not in state.done]
    before = [t for t in targets if t.key in state.done]
    repos = {t.repository for t in remaining}
    m = loaded.manifests
    known = {repo: set(g) for repo, g in m[m.repository.isin(repos)].groupby("repository").digest}
    keys = {t.key for t in remaining}
    referenced: dict[str, set[str]] = {}
    for name in ("workloads", "helm"):
        t = store.snapshot_table(loaded.snapshot_id, name)
        if t is not None and t.num_rows:
            ids = t.column("image_id").to_pylist() if "image_id" in t.column_names else None
            _add(referenced, referenced_digests(t.column("image").to_pylist(), ids, config, repos))
    return Intent(plan_id=loaded.plan_id, snapshot_id=loaded.snapshot_id, registry=config.registry.url,
                  targets=remaining, skipped=skipped, done_before=before,
                  in_flight=state.in_flight & keys, known=known, referenced=referenced)


def referenced_digests(images: list, image_ids: list | None, config: RegsweepConfig,
                       repos: set[str]) -> dict[str, set[str]]:
    """Digests (by `@sha256:` or pod imageID) that image references name in `repos`, any host spelling.

    An index named only by digest may be untagged, so no snapshot read it: the registry re-check
    looks at it before deleting a platform manifest it may share with a deleted index.
    """
    from tasks.reference import RegistryMatcher, digest_of_image_id

    matcher = RegistryMatcher(config.registry.url, config.registry.aliases)
    out: dict[str, set[str]] = {}
    for image, image_id in zip(images, image_ids or [None] * len(images)):
        ref = matcher.parse(image) if isinstance(image, str) else None
        if ref is None or ref.repository not in repos:
            continue
        for d in (ref.digest, digest_of_image_id(image_id) if isinstance(image_id, str) else None):
            if d:
                out.setdefault(ref.repository, set()).add(d)
    return out


def _add(into: dict[str, set[str]], more: dict[str, set[str]]) -> dict[str, set[str]]:
    for k, v in more.items():
        into.setdefault(k, set()).update(v)
    return into


# ============================================================================ re-checks


@dataclass
class Protection:
    """Targets a fresh look at the registry or the clusters says must stay, with why."""

    reasons: dict[tuple[str, str], str] = field(default_factory=dict)
    referenced: dict[str, set[str]] = field(default_factory=dict)   # digests in use now, per repository

    def add(self, key: tuple[str, str], reason: str) -> None:
        self.reasons.setdefault(key, reason)


def cluster_protection(config: RegsweepConfig, targets: list[Target]) -> Protection:
    """Scan the clusters again and protect every target now in use (by digest or by tag).

    A scan that fails raises: the caller deletes nothing (fail closed).
    """
    from tasks.cluster import scan_in_use
    from tasks.reference import RegistryMatcher, digest_of_image_id

    prot = Protection()
    workloads = scan_in_use(config)
    matcher = RegistryMatcher(config.registry.url, config.registry.aliases)
    by_tag: dict[tuple[str, str], str] = {}
    by_digest: dict[tuple[str, str], str] = {}
    any_digest: dict[str, str] = {}
    for r in workloads.itertuples(index=False):
        if getattr(r, "finished", False) is True:
            continue
        where = f"{r.kind} {r.namespace}/{r.name} in context {r.context}"
        # Any host: a spelling the configuration does not list may still mean this registry
        # (the plan's evaluation keeps same-named images for it too).
        ref = matcher.parse(r.image)
        if ref is not None:
            if ref.tag is not None:
                by_tag.setdefault((ref.repository, ref.tag), where)
            if ref.digest is not None:
                by_digest.setdefault((ref.repository, ref.digest), where)
        image_id = getattr(r, "image_id", None)
        d = digest_of_image_id(image_id) if isinstance(image_id, str) else None
        if d:
            # The running image's digest counts whatever spelling the spec used (fail closed).
            any_digest.setdefault(d, where)
    for t in targets:
        where = by_digest.get((t.repository, t.digest)) or any_digest.get(t.digest)
        if where:
            prot.add(t.key, f"in use by {where} (fresh cluster scan)")
            continue
        for tag in t.tags:
            if (t.repository, tag) in by_tag:
                prot.add(t.key, f"{t.repository}:{tag} in use by {by_tag[(t.repository, tag)]} (fresh cluster scan)")
                break
    prot.referenced = referenced_digests(workloads["image"].tolist(), workloads["image_id"].tolist(), config,
                                         {t.repository for t in targets})
    return prot


async def registry_protection(client: Any, targets: list[Target], known: dict[str, set[str]],
                              concurrency: int, referenced: dict[str, set[str]] | None = None) -> Protection:
    """Look at each affected repository as it is now: tags pushed or moved onto a target, new indexes.

    Every current tag is resolved; a target that a tag not planned away with it now points at
    stays (a tag pushed, promoted or rolled back onto it), and so does a platform manifest
    listed by a new index, or a subject given a new artifact. Listing or resolving errors raise
    (fail closed).
    """
    from tasks.oci import parse_manifest

    prot = Protection()
    by_repo: dict[str, list[Target]] = {}
    for t in targets:
        by_repo.setdefault(t.repository, []).append(t)
    sem = asyncio.Semaphore(concurrency)

    async def resolve(repo: str, ref: str) -> str | None:
        async with sem:
            return await client.head_manifest(repo, ref)

    async def one_repo(repo: str, ts: list[Target]) -> None:
        digests = {t.digest: t for t in ts if not t.is_tag}
        planned = {(tag, t.digest) for t in ts for tag in t.tags}
        current = await client.list_tags(repo)
        resolved = await asyncio.gather(*(resolve(repo, tag) for tag in current))
        fresh: set[str] = set()
        for tag, d in zip(current, resolved):
            if d is None:
                continue
            if d in digests and (tag, d) not in planned:
                prot.add((repo, d), f"tag {tag} now points at it (pushed or moved after the snapshot)")
            fresh.add(d)
        # A manifest the snapshot never saw may list a target as a platform manifest or refer to
        # it; the ones it saw are immutable and already in its children and subject columns.
        # So may a manifest that workloads or Helm name by digest only (an untagged index).
        named = (referenced or {}).get(repo, set())

        async def inspect(d: str) -> None:
            try:
                async with sem:
                    _, media_type, body = await client.get_manifest(repo, d)
            except ManifestUnknown:
                if d in fresh:
                    raise
                return  # named by a workload, but not (or no longer) in this repository
            m = parse_manifest(body, media_type)
            how = "pushed after the snapshot" if d in fresh else "which the snapshot did not read"
            for c in m.children:
                if c.digest in digests:
                    prot.add((repo, c.digest), f"listed by index {d}, {how}")
            if m.subject in digests:
                prot.add((repo, m.subject), f"artifact {d}, {how}, refers to it")

        await asyncio.gather(*(inspect(d) for d in (fresh | named) - set(digests) - known.get(repo, set())))

    await asyncio.gather(*(one_repo(repo, ts) for repo, ts in by_repo.items()))
    return prot


# ============================================================================ deletion


async def execute(config: RegsweepConfig, store: Store, intent: Intent, *, dry_run: bool = False,
                  protection: Protection | None = None, client: Any = None,
                  progress: Callable[[int], None] | None = None) -> list[Outcome]:
    """Delete `intent.targets` in order with bounded concurrency, journalling each attempt.

    `started` records are written ahead, a window of targets per journal file (fsynced) before
    any of them is requested; `done`/`skipped`/`failed` records ride along with the next such
    file or are written within a second. A sweep killed in between leaves targets `started`
    without an end: the next run looks each of those up before anything else.
    """
    from tasks.registry import RegistryClient

    if client is None:
        async with RegistryClient(config.registry) as c:
            return await execute(config, store, intent, dry_run=dry_run, protection=protection,
                                 client=c, progress=progress)

    registry = config.registry.url
    prot = protection or Protection()
    journal = None if dry_run else Journal(store, intent.plan_id)
    workers = config.sweep.concurrency
    window = max(64, 8 * workers)
    finished: dict[str, asyncio.Future] = {}   # "repo@digest" -> its outcome status
    outcomes: list[Outcome] = []
    finish_records: list[tuple[str, str, str, str | None]] = []
    stop: list[str] = []                       # the first error that makes every other request pointless
    done_before = {(t.repository, t.digest) for t in intent.done_before if not t.is_tag}
    tag_probe = asyncio.Lock()
    ready: asyncio.Queue = asyncio.Queue()
    room = asyncio.Event()
    loop = asyncio.get_running_loop()
    for t in intent.targets:
        if not t.is_tag:
            finished[f"{t.repository}@{t.digest}"] = loop.create_future()

    def outcome(t: Target, status: str, detail: str = "") -> None:
        outcomes.append(Outcome(t.repository, t.ref, t.digest, t.kind, t.tags, t.size, status, detail))
        if not t.is_tag:
            fut = finished[f"{t.repository}@{t.digest}"]
            if not fut.done():
                fut.set_result(status)
        if status != WOULD_DELETE:
            finish_records.append((t.repository, t.ref, status, detail or None))
        if progress:
            progress(1)

    def no_tag_delete(t: Target) -> str:
        return (f"registry {registry} cannot delete a tag alone, and digest {t.digest} stays"
                + (f" ({t.note})" if t.note else ""))

    writing = asyncio.Lock()  # one journal file at a time, so files sort in the order written

    async def write(rows: list) -> None:
        if journal is not None and rows:
            async with writing:
                await asyncio.to_thread(journal.write, rows)

    async def flush_now() -> None:
        rows, finish_records[:] = finish_records[:], []
        await write(rows)

    async def flush_every_second(until: asyncio.Event) -> None:
        while not until.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), 1.0)
            await flush_now()

    async def announce() -> None:
        """Journal `started` for the next window of targets, then hand them to the workers."""
        i = 0
        while i < len(intent.targets):
            while ready.qsize() > window // 2:
                room.clear()
                await room.wait()
            chunk = []
            for t in intent.targets[i:i + window - ready.qsize()]:
                i += 1
                if t.key in prot.reasons:  # known before any request: no attempt to record
                    outcome(t, SKIPPED, prot.reasons[t.key])
                else:
                    chunk.append(t)
            rows = [(t.repository, t.ref, STARTED, None if not t.is_tag else f"tag of {t.digest}") for t in chunk]
            await flush_now()
            await write(rows)
            for t in chunk:
                ready.put_nowait(t)
        for _ in range(workers):
            ready.put_nowait(None)

    async def worker() -> None:
        while (t := await ready.get()) is not None:
            if ready.qsize() <= window // 2:
                room.set()
            await one(t)

    async def one(t: Target) -> None:
        # Parents first: a platform manifest waits for its indexes, an artifact for its subject.
        for p in t.parents:
            if (t.repository, p) in done_before:
                continue
            status = await finished[f"{t.repository}@{p}"]
            if status not in (DONE, WOULD_DELETE):
                return outcome(t, SKIPPED, f"{p}, which it belongs to, was not deleted")
        if stop:
            return outcome(t, SKIPPED, f"not attempted: {stop[0]}")
        if t.is_tag and _TAG_DELETE_SUPPORT.get(registry) is False:
            return outcome(t, SKIPPED, no_tag_delete(t))
        try:
            if t.key in intent.in_flight:
                # An earlier run announced this DELETE and died: it may have gone out.
                if await client.head_manifest(t.repository, t.ref) is None:
                    return outcome(t, DONE, "deleted by an earlier run (found gone on resume)")
            for tag in t.tags:
                now = await client.head_manifest(t.repository, tag)
                if now != t.digest:
                    if now is None and (t.is_tag or await client.head_manifest(t.repository, t.digest) is None):
                        return outcome(t, DONE, "already gone from the registry")
                    why = f"tag {tag} is gone" if now is None else f"tag {tag} now points at {now}"
                    return outcome(t, SKIPPED, f"{why}, not the planned {t.digest}")
            if dry_run:
                return outcome(t, WOULD_DELETE)
            if t.is_tag:
                return await delete_tag(t)
            existed = await client.delete_manifest(t.repository, t.digest)
        except UnsupportedOperation as e:
            stop.append(f"registry {registry} refuses deletion ({e}); enable it (Distribution: storage.delete.enabled)")
            return outcome(t, FAILED, stop[-1])
        except (RegistryAuthError, RegistryUnreachable) as e:
            # Every other request would meet the same answer: stop instead of failing them one by one.
            stop.append(str(e))
            return outcome(t, FAILED, str(e))
        except RegistryError as e:
            return outcome(t, FAILED, str(e))
        outcome(t, DONE, "" if existed else "already gone (404)")

    async def delete_tag(t: Target) -> None:
        # The first lone-tag deletion probes whether the registry can do it; the rest wait for the answer.
        async with tag_probe if registry not in _TAG_DELETE_SUPPORT else contextlib.nullcontext():
            if _TAG_DELETE_SUPPORT.get(registry) is False:
                return outcome(t, SKIPPED, no_tag_delete(t))
            try:
                existed = await client.delete_tag(t.repository, t.ref)
            except UnsupportedOperation:
                _TAG_DELETE_SUPPORT[registry] = False
                return outcome(t, SKIPPED, no_tag_delete(t))
            _TAG_DELETE_SUPPORT[registry] = True
        outcome(t, DONE, "tag removed, its digest stays" if existed else "already gone (404)")

    all_done = asyncio.Event()

    async def deleting() -> None:
        try:
            async with asyncio.TaskGroup() as inner:
                inner.create_task(announce())
                for _ in range(workers):
                    inner.create_task(worker())
        finally:
            all_done.set()

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(deleting())
            tg.create_task(flush_every_second(all_done))
    except BaseExceptionGroup as eg:
        first = eg.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    finally:
        await flush_now()
    return outcomes


# ============================================================================ report


@dataclass
class SweepReport:
    """The result of one sweep run."""

    plan_id: str
    registry: str
    dry_run: bool
    outcomes: list[Outcome]
    done_before: int = 0

    def _count(self, status: str, tags: bool | None = None) -> int:
        return sum(1 for o in self.outcomes if o.status == status and (tags is None or o.is_tag == tags))

    @property
    def deleted(self) -> int:
        return self._count(WOULD_DELETE if self.dry_run else DONE, tags=False)

    @property
    def tags_deleted(self) -> int:
        return self._count(WOULD_DELETE if self.dry_run else DONE, tags=True)

    @property
    def skipped(self) -> int:
        return self._count(SKIPPED)

    @property
    def failed(self) -> int:
        return self._count(FAILED)

    @property
    def bytes(self) -> int:
        st = WOULD_DELETE if self.dry_run else DONE
        return sum(o.size for o in self.outcomes if o.status == st and not o.is_tag)

    def summary(self) -> str:
        """The CLI's last line: `deleted 12 manifests (34.5 MB), skipped 2, failed 0`."""
        what = f"{self.deleted} manifests" + (f" and {self.tags_deleted} tags" if self.tags_deleted else "")
        what += f" ({human_bytes(self.bytes)})"
        if self.dry_run:
            return f"dry run: would delete {what}, skipped {self.skipped}"
        line = f"deleted {what}, skipped {self.skipped}, failed {self.failed}"
        if self.done_before:
            line += f" ({self.done_before} deleted by an earlier run of plan {self.plan_id})"
        return line

    def to_json(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "registry": self.registry, "dry_run": self.dry_run,
                "deleted": self.deleted, "tags_deleted": self.tags_deleted, "skipped": self.skipped,
                "failed": self.failed, "bytes": self.bytes, "done_before": self.done_before,
                "summary": self.summary(), "outcomes": [asdict(o) for o in self.outcomes]}

    def markdown(self, limit: int = 500) -> str:
        lines = [f"# Sweep of plan `{self.plan_id}`" + (" (dry run)" if self.dry_run else ""), "",
                 f"Registry {self.registry}: **{self.summary()}**.", ""]
        if not self.dry_run and self.deleted:
            lines += ["Distribution frees the disk space only when its garbage collection runs "
                      "(`registry garbage-collect`, with the registry read-only or stopped).", ""]
        rows = sorted(self.outcomes, key=lambda o: ({FAILED: 0, SKIPPED: 1}.get(o.status, 2), o.repository, o.ref))
        if rows:
            lines += ["| status | repository | tags | digest | kind | size | detail |", "|---|---|---|---|---|---:|---|"]
            for o in rows[:limit]:
                tags = o.ref if o.is_tag else (", ".join(o.tags) or "(untagged)")
                lines.append(f"| {o.status} | {o.repository} | {tags} | `{o.digest}` | {o.kind} | "
                             f"{human_bytes(o.size)} | {o.detail} |")
            if len(rows) > limit:
                lines.append(f"| … | {len(rows) - limit} more | | | | | |")
        return "\n".join(lines)


# ============================================================================ the whole sweep


def recheck_cluster(config: RegsweepConfig, intent: Intent) -> Protection:
    """The fresh cluster scan, when enabled; raises SweepFailed when it cannot run."""
    prot = Protection()
    if config.sweep.recheckCluster and not config.cleanup.disableKubernetesBasedPolicy:
        try:
            prot = cluster_protection(config, intent.targets)
        except RegsweepError as e:
            raise SweepFailed(f"the fresh cluster scan before deleting failed, so nothing was deleted: {e}") from e
    return prot


async def _registry_recheck(config: RegsweepConfig, intent: Intent, client: Any,
                            referenced: dict[str, set[str]] | None = None) -> Protection:
    try:
        return await registry_protection(client, intent.targets, intent.known, config.registry.concurrency,
                                         referenced)
    except RegistryError as e:
        raise SweepFailed(f"the registry re-check before deleting failed, so nothing was deleted: {e}") from e


async def _recheck_and_execute(config: RegsweepConfig, store: Store, intent: Intent, prot: Protection,
                               dry_run: bool, progress: Callable[[int], None] | None) -> list[Outcome]:
    from tasks.registry import RegistryClient

    async with RegistryClient(config.registry) as client:
        fresh = await _registry_recheck(config, intent, client,
                                        _add(_add({}, intent.referenced), prot.referenced))
        for k, why in fresh.reasons.items():
            prot.add(k, why)
        return await execute(config, store, intent, dry_run=dry_run, protection=prot, client=client,
                             progress=progress)


def delete_targets(config: RegsweepConfig, store: Store, intent: Intent, *, dry_run: bool = False) -> SweepReport:
    """Re-check and delete an approved intent (or, dry, report what would go).

    Raises SweepFailed, deleting nothing, when a re-check cannot run; a target that fails is
    recorded in the report (and the journal) instead.
    """
    from tasks.progress import reporter

    outcomes: list[Outcome] = []
    if intent.targets:
        prot = recheck_cluster(config, intent)
        if not dry_run:
            Journal(store, intent.plan_id).write(
                [(o.repository, o.ref, SKIPPED, o.detail) for o in intent.skipped]
                + [(t.repository, t.ref, PLANNED, None) for t in intent.targets])
        rep = reporter()
        rep.start("sweep", f"{'checking' if dry_run else 'deleting'} {intent.deletions} targets in "
                           f"{config.registry.url}", intent.deletions)
        outcomes = asyncio.run(_recheck_and_execute(config, store, intent, prot, dry_run,
                                                    lambda n: rep.advance("sweep", n)))
        order = {t.key: i for i, t in enumerate(intent.targets)}
        outcomes.sort(key=lambda o: order.get((o.repository, o.ref), -1))
    report = SweepReport(plan_id=intent.plan_id, registry=config.registry.url, dry_run=dry_run,
                         outcomes=list(intent.skipped) + outcomes, done_before=len(intent.done_before))
    if intent.targets:
        rep.finish("sweep", report.summary())
    return report


def raise_if_failed(report: SweepReport) -> None:
    """SweepFailed (exit 1) when any deletion failed; the journal says which."""
    failures = [o for o in report.outcomes if o.status == FAILED]
    if failures:
        first = failures[0]
        raise SweepFailed(f"{len(failures)} deletions failed in {report.registry} (first: "
                          f"{first.repository}@{first.digest}: {first.detail}); journal "
                          f"journal/{report.plan_id} in the store records each attempt", report)


def run_sweep(config: RegsweepConfig, plan: str = "latest", *, dry_run: bool = False, approve: bool = False,
              max_deletions: int | None = None, gate: Callable[[Intent], None] | None = None,
              now: datetime | None = None) -> SweepReport:
    """A whole sweep without Prefect: the lock, the plan checks, approval, re-checks, deletion.

    `gate(intent)` asks a human and raises SweepNotApproved unless they approve; without it only
    `approve=True` within `max_deletions` (default `sweep.maxDeletions`) lets deletion happen.
    Raises SweepFailed (carrying the report) when any deletion failed.
    """
    store = Store(config.store)
    limit = config.sweep.maxDeletions if max_deletions is None else max_deletions
    lock = contextlib.nullcontext() if dry_run else sweep_lock(store, config.registry.url, plan)
    with lock:
        intent = prepare(config, store, plan, now)
        if intent.targets and not dry_run:
            if approve:
                check_up_front_approval(intent, limit)
            elif gate is not None:
                gate(intent)
            else:
                raise SweepNotApproved(f"plan {intent.plan_id}: deleting needs approval (--yes within "
                                       f"--max-deletions, or the Prefect form); nothing was deleted")
        report = delete_targets(config, store, intent, dry_run=dry_run)
    raise_if_failed(report)
    return report
