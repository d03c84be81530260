"""Loading the plan a sweep acts on: the checks that refuse it, and the intent made from it.

A plan is refused (PlanRefused, nothing deleted) unless it was made for this registry under the
current cleanup policy, from a complete snapshot that is younger than `sweep.maxPlanAge` and
not dated in the future (docs/safety.md). The age is checked again once approval came
(`check_age_after_approval`): the wait for it may be long.

The registry's capabilities recorded with the plan (probed with its snapshot, tasks/registry/capabilities.py)
decide up front what cannot go: lone tags where the registry cannot delete a tag alone, untagged
manifests where its API deletes tags only. A plan whose probe found the registry unable to delete
is probed again before the sweep refuses it (the registry may have been fixed since).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from tasks.registry.capabilities import DENIED, NO, Capabilities, cannot_delete, probe_registry
from tasks.common.errors import NotFound, PlanRefused, RegistryError, StoreError, SweepFailed
from tasks.oci.reference import RegistryMatcher, same_registry
from tasks.store.store import Store
from tasks.sweep.journal import Journal
from tasks.sweep.recheck import merge_digests, referenced_digests
from tasks.sweep.intent import Intent
from tasks.sweep.targets import SKIPPED, Target, deletion_targets
from tasks.common.units import human_age, parse_duration, parse_time, utcnow

if TYPE_CHECKING:
    import pandas as pd

    from tasks.config.models import RegsweepConfig, SweepConfig
    from tasks.snapshot.footprint import Reclaim

#: How far ahead of this machine's clock a snapshot or plan may be dated (clocks drift a little).
CLOCK_SKEW = timedelta(minutes=5)


@dataclass
class LoadedPlan:
    """A plan the sweep agreed to act on, with the snapshot tables it needs."""

    plan_id: str
    snapshot_id: str
    plan: "pd.DataFrame"
    meta: dict
    snapshot: dict
    tags: "pd.DataFrame"
    manifests: "pd.DataFrame"
    children: "pd.DataFrame"
    capabilities: Capabilities | None = None


def check_age_after_approval(intent: Intent, settings: "SweepConfig") -> None:
    """PlanRefused when the plan checked before approval has since passed `sweep.maxPlanAge`
    (approval may wait for up to `sweep.approvalTimeout`): nothing is deleted then."""
    try:
        _check_age(intent.plan_id, intent.snapshot_id, {"created_at": intent.snapshot_created},
                   {"created_at": intent.plan_created}, settings)
    except PlanRefused as e:
        raise PlanRefused(f"{e} (checked again after approval, before the first DELETE)") from None


def _check_age(plan_id: str, snapshot_id: str, snap: dict, meta: dict, settings: "SweepConfig") -> None:
    # The age that matters is the observation's: a fresh plan of a week-old snapshot is stale.
    observed = parse_time(snap.get("created_at"))
    planned = parse_time(meta.get("created_at"))
    if observed is None or planned is None:
        raise PlanRefused(f"plan {plan_id}: no creation time recorded for it or snapshot {snapshot_id}")
    now = utcnow()
    ahead = max(observed, planned) - now
    if ahead > CLOCK_SKEW:
        # A clock running ahead: "now" was wrong for the fresh rule, and the plan would never age.
        raise PlanRefused(f"plan {plan_id} (or its snapshot {snapshot_id}) was taken in the future, {human_age(ahead)} "
                          "from now: a clock is wrong here or where it was made; nothing was deleted")
    age = now - min(observed, planned)
    if age > parse_duration(settings.maxPlanAge):
        raise PlanRefused(f"plan {plan_id} is based on snapshot {snapshot_id} taken {human_age(age)} ago, "
                          f"older than sweep.maxPlanAge {settings.maxPlanAge}: take a new snapshot "
                          "and plan; nothing was deleted")


def load_plan(store: Store, plan_ref: str, *, registry: str, policy: str, settings: "SweepConfig") -> LoadedPlan:
    """Read a plan and its snapshot, refusing (PlanRefused) any plan a sweep must not act on.

    `registry` is the configured registry URL, `policy` the digest of the current cleanup policy.
    """
    from tasks.store.schemas import CHILDREN, MANIFESTS

    try:
        plan_id = store.plans.resolve(plan_ref)
    except StoreError as e:
        raise PlanRefused(f"plan {plan_ref!r}: {e}") from None
    meta = store.plans.meta(plan_id)
    snapshot_id = meta.get("snapshot_id")
    if not same_registry(meta.get("registry"), registry):
        raise PlanRefused(f"plan {plan_id} was made for registry {meta.get('registry')}, "
                          f"not {registry}: nothing was deleted")
    if meta.get("policy") != policy:
        # A keep policy added since planning must not be bypassed by sweeping the old plan.
        raise PlanRefused(f"plan {plan_id} was made under a different cleanup policy than the current "
                          "configuration's: run `regsweep plan` again; nothing was deleted")
    incomplete = PlanRefused(f"plan {plan_id} comes from incomplete snapshot {snapshot_id}: "
                             "a sweep never deletes from an incomplete snapshot; nothing was deleted")
    if meta.get("complete") is not True:
        raise incomplete
    try:
        snap = store.snapshots.meta(snapshot_id) if snapshot_id else None
    except NotFound:
        snap = None
    if snap is None:
        raise PlanRefused(f"plan {plan_id}: its snapshot {snapshot_id} is not in store {store.url}")
    if snap.get("complete") is not True:
        raise incomplete
    _check_age(plan_id, snapshot_id, snap, meta, settings)

    def table(name, schema):
        t = store.snapshots.table(snapshot_id, name)
        return (t if t is not None else schema.empty_table()).to_pandas(ignore_metadata=True)

    tags = store.snapshots.table(snapshot_id, "tags")
    if tags is None:
        raise PlanRefused(f"plan {plan_id}: snapshot {snapshot_id} has no registry tables")
    plan_table = store.plans.table(plan_id)
    wanted = ["repository", "tag", "digest", "kind", "action", "size"]
    missing = [c for c in wanted if c not in plan_table.column_names]
    if missing:
        raise PlanRefused(f"plan {plan_id}: plan.parquet lacks columns {', '.join(missing)}")
    shown = [c for c in ("reasons", "created") if c in plan_table.column_names]  # for the approval form only
    # Only the columns a sweep uses; whoever wrote the file may have stored pandas extension dtypes.
    plan = plan_table.select(wanted + shown).to_pandas(ignore_metadata=True)
    return LoadedPlan(plan_id=plan_id, snapshot_id=snapshot_id, plan=plan, meta=meta, snapshot=snap,
                      tags=tags.to_pandas(ignore_metadata=True),
                      manifests=table("manifests", MANIFESTS), children=table("children", CHILDREN),
                      capabilities=Capabilities.from_json(meta.get("registry_capabilities")))


def prepare(config: "RegsweepConfig", store: Store, plan_ref: str = "latest", *, probe: bool = False) -> Intent:
    """Load and check the plan, compute its targets and drop those an earlier run finished.

    `probe` asks the registry again what it can delete (tasks/registry/capabilities.py) instead of trusting
    the answer recorded with the snapshot: deletion may have been switched on or off since.
    """
    registry = config.registry.url
    loaded = load_plan(store, plan_ref, registry=registry, policy=config.cleanup.digest(), settings=config.sweep)
    targets, skipped = deletion_targets(loaded.plan, loaded.tags, loaded.manifests, loaded.children)
    state = Journal(store, loaded.plan_id).state()
    remaining = [t for t in targets if t.key not in state.done]
    before = [t for t in targets if t.key in state.done]
    repos = {t.repository for t in remaining}
    m = loaded.manifests
    known = {repo: set(g) for repo, g in m[m.repository.isin(repos)].groupby("repository").digest}
    matcher = RegistryMatcher(registry, config.registry.aliases)
    named = []
    for name in ("workloads", "helm"):
        t = store.snapshots.table(loaded.snapshot_id, name)
        if t is not None and t.num_rows:
            ids = t.column("image_id").to_pylist() if "image_id" in t.column_names else None
            named.append(referenced_digests(t.column("image").to_pylist(), ids, matcher, repos))
    keys = {t.key for t in remaining}
    reasons, built = _row_facts(loaded.plan)
    intent = Intent(plan_id=loaded.plan_id, snapshot_id=loaded.snapshot_id, registry=registry,
                    targets=remaining, skipped=skipped, done_before=before,
                    in_flight=state.in_flight & keys, known=known, referenced=merge_digests(*named),
                    plan_created=loaded.meta.get("created_at"), snapshot_created=loaded.snapshot.get("created_at"),
                    reasons=reasons, built=built, cluster_recheck=_cluster_recheck(config))
    caps = loaded.capabilities
    if remaining and (probe or (caps is not None and caps.delete_digest in (NO, DENIED))):
        caps = _probe_now(config, remaining[0].repository)
    if caps is not None:
        _apply_capabilities(intent, caps)
    intent.reclaim = reclaim_after(store, intent, [(t.repository, t.digest) for t in intent.targets if not t.is_tag])
    return intent


def reclaim_after(store: Store, intent: Intent, deleted: list[tuple[str, str]]) -> Reclaim | None:
    """What garbage collection frees once these (repository, digest) manifests are gone, besides
    those an earlier run of the sweep deleted: the plan's own function (tasks/snapshot/footprint.py)."""
    from tasks.snapshot.footprint import Footprint, reclaim_of

    done = [(t.repository, t.digest) for t in intent.done_before if not t.is_tag]
    return reclaim_of(Footprint.load(store, intent.snapshot_id), deleted, gone=done)


def _probe_now(config: "RegsweepConfig", repository: str) -> Capabilities:
    """The registry's capabilities as it answers now; a probe that cannot run deletes nothing."""
    try:
        return probe_registry(config.registry, repository)
    except RegistryError as e:
        raise SweepFailed(f"the capability probe before the sweep failed, so nothing was deleted: {e}") from e


def _row_facts(plan: "pd.DataFrame") -> tuple[dict, dict]:
    """The reasons and build time of each planned deletion's digest, as the plan recorded them."""
    import pandas as pd

    reasons: dict[tuple[str, str], list[str]] = {}
    built: dict[tuple[str, str], object] = {}
    if "reasons" not in plan.columns:
        return reasons, built
    dele = plan[plan["action"] == "delete"]
    created = dele["created"] if "created" in dele.columns else pd.Series([None] * len(dele), index=dele.index)
    for repo, digest, why, when in zip(dele["repository"], dele["digest"], dele["reasons"], created):
        key = (repo, digest)
        reasons.setdefault(key, list(why) if why is not None else [])
        if when is not None and not pd.isna(when):
            built.setdefault(key, when.to_pydatetime() if hasattr(when, "to_pydatetime") else when)
    return reasons, built


def _cluster_recheck(config: "RegsweepConfig") -> str:
    """How the sweep looks at the clusters again before deleting, in words for the approval form."""
    if not config.sweep.recheckCluster or config.cleanup.disableKubernetesBasedPolicy:
        return ""
    if config.kubernetes.dumps:
        return ("re-reads the cluster dumps (" + ", ".join(d.file.rsplit("/", 1)[-1] for d in config.kubernetes.dumps)
                + "; a dump is only as fresh as whoever wrote it)")
    return "scans the clusters again"


def no_tag_delete(registry: str, t: Target) -> str:
    """Why a lone tag stays: the registry cannot delete a tag without the digest it names."""
    return f"registry {registry} cannot delete a tag alone, and digest {t.digest} stays" + (f" ({t.note})" if t.note else "")


def _apply_capabilities(intent: Intent, caps: Capabilities) -> None:
    """Keep, up front and said why, the targets this registry cannot delete (module docstring)."""
    intent.capabilities = caps
    lone = caps.delete_tag in (NO, DENIED)
    untagged = caps.delete_untagged in (NO, DENIED)
    keep: list[Target] = []
    for t in intent.targets:
        why = None
        if t.is_tag and lone:
            why = no_tag_delete(intent.registry, t)
        elif not t.is_tag and not t.tags and untagged:
            why = caps.notes.get("delete_untagged") or f"registry {intent.registry} cannot delete untagged manifests"
        if why:
            intent.skipped.append(t.outcome(SKIPPED, why))
        else:
            keep.append(t)
    intent.targets = keep
    intent.refusal = cannot_delete(caps, intent.registry) if any(not t.is_tag for t in keep) else None
