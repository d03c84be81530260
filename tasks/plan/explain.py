"""`regsweep explain`: why a stored plan keeps or deletes an image, read from the plan itself.

An IMAGE_REF is read as the registry's own (through registry.url and its aliases), as a
repository path of it (`team/api:v1`), or, naming another host, by its path there; the plan's rows
for the first reading that names any are its answer. Kept platform manifests and referrers have
no row of their own: they are answered with the kept manifest they belong to. The registry's
push and pull times are shown as information, never as a rule.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.errors import NotFound, StoreError
from tasks.common.units import human_bytes
from tasks.config.models import RegistryConfig, RegsweepConfig
from tasks.oci.reference import ImageRef, RegistryMatcher, parse_reference
from tasks.store.store import Store


def _candidates(registry: RegistryConfig, image_ref: str) -> list[tuple[str, str | None, str | None]]:
    """(repository, tag, digest) readings of IMAGE_REF, most specific first: a reference into this
    registry (its URL's host or an alias); a repository path of it as written (`team/api:v1`,
    `api`); a reference into another host, by its path there (`docker.io/team/api`: `team/api`,
    and `nginx`: `library/nginx`, as the plan reads a workload's image). An invalid reference
    has no reading. Tags are `latest` when neither tag nor digest is given (parse_reference)."""
    hosts = RegistryMatcher(registry.url, registry.aliases).hosts
    written = _parsed(image_ref)
    # behind `localhost/` the whole reference reads as a path, its first component whatever it looks like
    as_path = _parsed(f"localhost/{image_ref}")
    readings = [r for r in (written if written is not None and written.host in hosts else None, as_path,
                            written if written is not None and written.host not in hosts else None) if r is not None]
    return list(dict.fromkeys((r.repository, r.tag, r.digest) for r in readings))


def _parsed(ref: str) -> ImageRef | None:
    try:
        return parse_reference(ref)
    except ValueError:
        return None


def find_rows(plan: pd.DataFrame, candidates: list[tuple[str, str | None, str | None]], image_ref: str) -> pd.DataFrame:
    """Plan rows an IMAGE_REF names; NotFound when there are none."""
    for repo, tag, digest in candidates:
        rows = plan[plan["repository"] == repo]
        if digest:
            rows = rows[rows["digest"] == digest]
        if tag:
            rows = rows[rows["tag"] == tag]
        elif not digest:
            rows = rows[rows["tag"] == "latest"]
        if len(rows):
            return rows
    raise _not_in_plan(image_ref)


def _not_in_plan(image_ref: str) -> NotFound:
    return NotFound(f"{image_ref} is not in the plan (no such repository, tag or digest)", what="image")


def explain(config: RegsweepConfig, image_ref: str, plan_ref: str = "latest") -> list[str]:
    """Lines explaining the decision on IMAGE_REF; the last line is the decision."""
    store = Store(config.store)
    plan_id = store.plans.resolve(plan_ref)   # NotFound(what="plan"): an unknown id, or no plan yet
    meta = store.plans.meta(plan_id)
    candidates = _candidates(config.registry, image_ref)
    if not candidates:   # not an image reference: no repository to read
        raise _not_in_plan(image_ref)
    # plans are sorted by repository: decoding only its row groups keeps explain fast on big plans
    table = store.read_table(store.path("plans", plan_id, "plan.parquet"),
                             filters=[("repository", "in", sorted({c[0] for c in candidates}))])
    plan = table.to_pandas()
    out = [f"plan {plan_id} from snapshot {meta.get('snapshot_id')} ({'complete' if meta.get('complete') else 'INCOMPLETE: deletes nothing'})"]
    try:
        rows = find_rows(plan, candidates, image_ref)
    except NotFound:
        kept = _kept_relative(store, meta.get("snapshot_id"), plan, candidates)
        if kept is None:
            raise
        return out + kept
    times = _registry_times(store, meta.get("snapshot_id"), sorted(set(rows["repository"])))
    for r in rows.itertuples(index=False):
        name = f"{r.repository}:{r.tag}" if isinstance(r.tag, str) else f"{r.repository}@{r.digest} (untagged)"
        out.append(f"{name} -> {r.digest} ({r.kind}, {human_bytes(int(r.size))}): {r.action}")
        out += [f"  - {reason}" for reason in r.reasons]
        seen = times.get((r.repository, r.digest))
        if seen:
            out.append(f"  ({seen}; as the registry reports it: information only, never a keep or delete rule)")
    action = "/".join(sorted(set(rows["action"])))   # one digest, one action (digest-level decisions)
    first = rows.iloc[0]
    if len(rows) == 1 and isinstance(first["tag"], str) and "@" not in image_ref:
        out.append(f"{action} {first['repository']}:{first['tag']} ({first['digest']})")
    else:
        tags = [t for t in rows["tag"] if isinstance(t, str)]
        which = f"tags: {', '.join(tags)}" if tags else "untagged"
        out.append(f"{action} {first['repository']}@{first['digest']} ({which})")
    return out


def _registry_times(store: Store, snapshot_id: str | None, repos: list[str]) -> dict[tuple[str, str], str]:
    """`pushed …, last pulled …` per (repository, digest), where the registry's API reported them."""
    if not snapshot_id:
        return {}
    try:
        # Through the store: it hands Arrow memory Arrow owns (see Store.read_table).
        t = store.read_table(store.path("snapshots", snapshot_id, "manifests.parquet"),
                             columns=["repository", "digest", "pushed", "last_pulled"],
                             filters=[("repository", "in", repos)])
    except (OSError, StoreError, pa.ArrowInvalid, KeyError, ValueError):
        return {}   # no manifests table, or one from before the registry's times were recorded
    out = {}
    for r in t.to_pylist():
        parts = [f"{what} {when.strftime('%Y-%m-%d %H:%M UTC')}"
                 for what, when in (("pushed", r["pushed"]), ("last pulled", r["last_pulled"])) if when]
        if parts:
            out[(r["repository"], r["digest"])] = ", ".join(parts)
    return out


def _kept_relative(store: Store, snapshot_id: str | None, plan: pd.DataFrame,
                   candidates: list[tuple[str, str | None, str | None]]) -> list[str] | None:
    """Explain lines for an untagged platform manifest or referrer the plan keeps.

    Kept relatives get no plan row of their own (deleted ones do), yet a user may well ask about
    one — a pod's platform digest, a signature: answer with the manifest they belong to.
    """
    def matching(table: str, column: str, repo: str, digest: str) -> list[dict]:
        t = store.snapshots.table(snapshot_id, table)
        if t is None:
            return []
        return t.filter(pc.and_(pc.equal(t["repository"], repo), pc.equal(t[column], digest))).to_pylist()

    if not snapshot_id:
        return None
    for repo, _, digest in candidates:
        if not digest:
            continue
        owners = [(r["index_digest"], "platform" + (f" ({r['platform']})" if r["platform"] else "") + " of kept index")
                  for r in matching("children", "child_digest", repo, digest)]
        owners += [(r["subject"], "referrer of kept") for r in matching("manifests", "digest", repo, digest) if r["subject"]]
        lines = []
        for owner, relation in owners:
            rows = plan[(plan["repository"] == repo) & (plan["digest"] == owner) & (plan["action"] == "keep")]
            if len(rows):
                tags = [t for t in rows["tag"] if isinstance(t, str)]
                lines.append(f"  - {relation} {owner}" + (f" (tags: {', '.join(tags)})" if tags else ""))
        if lines:
            return [f"{repo}@{digest} (untagged): keep", *lines, f"keep {repo}@{digest} (untagged)"]
    return None
