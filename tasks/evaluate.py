"""The plan: a pure function of (snapshot tables, snapshot meta, policy) deciding keep or delete.

Decisions are made per manifest digest of a repository (a "node"); every tag on a digest gets
the digest's decision, because deleting a manifest deletes all of its tags (SPEC.md, Safety).
A node is kept when any rule keeps it, and its reasons list every rule that did:

  1. in use      workload images (not finished Jobs) by digest (imageID, @sha256) and by tag
  2. helm        every stored revision the Helm source recorded
  3. git         werf keep policies over git history (tasks/gitpolicy.py)
  4. fresh       built within keepImagesBuiltWithinLastNHours of the snapshot time
  5. unlinked    digests linked to no commit, unless `unlinkedImages: delete`
  6. relatives   an index with a kept platform is kept whole with all its platforms; referrers
                 (signatures, SBOMs, the `sha256-<hex>` fallback index) follow their subject

Unknown media types, manifests missing from the snapshot and referrers of subjects the snapshot
does not know are always kept. A deleted node's reasons say which rules looked at it and why
none kept it. If the snapshot is incomplete every row is kept (fail closed).

"Now" is the snapshot's `created_at`, so re-evaluating a snapshot reproduces its plan.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.config import RegsweepConfig
from tasks.gitpolicy import US, evaluate_git, fmt_duration, to_us
from tasks.reference import RegistryMatcher, digest_of_image_id, match_images
from tasks.schemas import PLAN, SOURCE_TABLES

IN_USE, HELM, GIT, FRESH, UNLINKED, ALWAYS, RELATIVE = range(7)
CAP = 5                      # reasons of one rule listed per digest; the rest are counted
PRIMARY_KINDS = {"image", "index", "artifact"}
NAT = np.iinfo(np.int64).min
# cosign's tag scheme for signatures/attestations/SBOMs of a subject digest
_SUBJECT_TAG = re.compile(r"^sha256-([0-9a-f]{64})(?:\.(?:sig|att|sbom))?$")
_CTYPE = {"containers": "container", "initContainers": "init container",
          "ephemeralContainers": "ephemeral container"}


# ------------------------------------------------------------------ snapshot completeness

def snapshot_problems(meta: dict[str, Any], tables: dict[str, Any], config: RegsweepConfig) -> list[str]:
    """Why no plan from this snapshot may delete anything (empty when it is complete)."""
    problems = []
    sources = meta.get("sources") or {}
    enabled = set(config.enabled_sources())
    for name, st in sources.items():
        if st.get("status") == "failed":
            problems.append(f"snapshot incomplete: {name} failed: {st.get('error') or 'unknown error'}")
    for name in sorted(enabled, key=list(SOURCE_TABLES).index):
        st = sources.get(name)
        if st is None:
            problems.append(f"snapshot incomplete: {name} not in snapshot")
        elif st.get("status") == "skipped":
            problems.append(f"snapshot incomplete: {name} was skipped but this policy needs it")
        elif st.get("status") == "ok":
            for t in SOURCE_TABLES[name]:
                if tables.get(t) is None:
                    problems.append(f"snapshot incomplete: {name} table {t} missing")
    if not meta.get("complete", False) and not problems:
        problems.append("snapshot incomplete: marked incomplete by the snapshot flow")
    return problems


def snapshot_now(meta: dict[str, Any]) -> datetime:
    now = datetime.fromisoformat(str(meta["created_at"]).replace("Z", "+00:00"))
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)


# ------------------------------------------------------------------ nodes

class _Nodes:
    """Every (repository, digest) of the snapshot as an integer id, with its manifest facts."""

    def __init__(self, tags: pd.DataFrame, manifests: pd.DataFrame | None):
        if manifests is None:
            manifests = pd.DataFrame({c: pd.Series(dtype=object) for c in
                                      ("repository", "digest", "media_type", "kind", "artifact_type",
                                       "size", "created", "revision", "subject")})
        man = manifests.drop_duplicates(["repository", "digest"])
        mkeys = (man["repository"].astype(str) + "@" + man["digest"].astype(str)).to_numpy(dtype=object)
        tkeys = (tags["repository"].astype(str) + "@" + tags["digest"].astype(str)).to_numpy(dtype=object)
        extra = pd.Index(tkeys).difference(pd.Index(mkeys)).to_numpy(dtype=object)
        self.index = pd.Index(np.concatenate([mkeys, extra]))
        self.n = n = len(self.index)
        m = len(mkeys)
        split = pd.Series(self.index).str.split("@", n=1, expand=True) if n else pd.DataFrame({0: [], 1: []})
        self.repo = split[0].to_numpy(dtype=object)
        self.digest = split[1].to_numpy(dtype=object)
        self.repo_id, self.repos = pd.factorize(self.repo)
        self.kind = np.concatenate([man["kind"].astype(str).to_numpy(dtype=object), np.full(len(extra), "missing", dtype=object)])
        self.media_type = np.concatenate([man["media_type"].astype(object).to_numpy(), np.full(len(extra), None, dtype=object)])
        self.size = np.concatenate([pd.to_numeric(man["size"]).fillna(0).to_numpy(np.int64), np.zeros(len(extra), np.int64)])
        created = to_us(man["created"]) if m else np.array([], dtype=np.int64)
        self.created = np.concatenate([created, np.full(len(extra), NAT, np.int64)])
        self.subject = np.concatenate([man["subject"].astype(object).where(man["subject"].notna(), None).to_numpy(),
                                       np.full(len(extra), None, dtype=object)])
        self.tag_node = self.index.get_indexer(tkeys)
        self.tagged = np.zeros(n, bool)
        self.tagged[self.tag_node] = True

    def lookup(self, repos, digests) -> np.ndarray:
        keys = (pd.Series(np.asarray(repos, dtype=object)).astype(str) + "@"
                + pd.Series(np.asarray(digests, dtype=object)).astype(str))
        return self.index.get_indexer(keys.to_numpy(dtype=object))


# ------------------------------------------------------------------ reasons

class _Reasons:
    """Keep reasons and 'why not kept' notes per node, turned into one Arrow list column."""

    def __init__(self, n: int):
        self.n = n
        self.parts: list[tuple[np.ndarray, np.ndarray, int, bool]] = []

    def add(self, nodes, texts, order: int, keep: bool = True) -> None:
        nodes = np.asarray(nodes, dtype=np.int64)
        if not len(nodes):
            return
        if isinstance(texts, str):
            texts = np.full(len(nodes), texts, dtype=object)
        self.parts.append((nodes, np.asarray(texts, dtype=object), order, keep))

    def build(self, kept: np.ndarray, planned: np.ndarray) -> pa.ListArray:
        if self.parts:
            node = np.concatenate([p[0] for p in self.parts])
            text = np.concatenate([p[1] for p in self.parts])
            order = np.concatenate([np.full(len(p[0]), p[2], np.int8) for p in self.parts])
            keep = np.concatenate([np.full(len(p[0]), p[3], bool) for p in self.parts])
            sel = (keep == kept[node]) & planned[node]
            node, text, order = node[sel], text[sel], order[sel]
        else:
            node, text, order = (np.array([], np.int64), np.array([], object), np.array([], np.int8))
        missing = planned & (np.bincount(node, minlength=self.n) == 0)
        if missing.any():
            ids = np.flatnonzero(missing)
            node = np.concatenate([node, ids])
            text = np.concatenate([text, np.where(kept[ids], "kept", "no keep rule applies").astype(object)])
            order = np.concatenate([order, np.full(len(ids), 99, np.int8)])
        srt = np.lexsort((order, node))
        node, text, order = node[srt], text[srt], order[srt]
        # Cap each rule's reasons per node, counting the rest.
        grp = np.r_[True, (node[1:] != node[:-1]) | (order[1:] != order[:-1])] if len(node) else np.array([], bool)
        starts = np.flatnonzero(grp)
        sizes = np.diff(np.r_[starts, len(node)])
        rank = np.arange(len(node)) - np.repeat(starts, sizes)
        keep_row = rank < CAP
        keep_row[starts[sizes == CAP + 1] + CAP] = True   # one more is shown, not counted
        over = sizes > CAP + 1
        if over.any():
            # the (CAP+1)th row of an over-long group becomes "… and N more"
            pos = starts[over] + CAP
            text = text.copy()
            text[pos] = [f"… and {k - CAP} more" for k in sizes[over]]
            keep_row[pos] = True
        node, text = node[keep_row], text[keep_row]
        offsets = np.zeros(self.n + 1, dtype=np.int32)
        np.cumsum(np.bincount(node, minlength=self.n), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(text, pa.string()))


# ------------------------------------------------------------------ evaluation

def evaluate(tables: dict[str, pd.DataFrame | None], meta: dict[str, Any], config: RegsweepConfig) -> pd.DataFrame:
    """The plan (PLAN schema) for one snapshot under one policy: pure, deterministic."""
    now_us = int(snapshot_now(meta).timestamp() * US)
    cleanup = config.cleanup
    tags = tables.get("tags")
    if tags is None:
        tags = pd.DataFrame({"repository": [], "tag": [], "digest": [], "gone": []})
    tags = tags[~tags["gone"].astype(bool) & tags["digest"].notna()].reset_index(drop=True)
    nodes = _Nodes(tags, tables.get("manifests"))
    problems = snapshot_problems(meta, tables, config)
    if problems:
        return _rows(nodes, tags, np.ones(nodes.n, bool),
                     pa.ListArray.from_arrays(pa.array(np.arange(nodes.n + 1) * len(problems), pa.int32()),
                                              pa.array(problems * nodes.n, pa.string())),
                     np.zeros(nodes.n, bool))

    R = _Reasons(nodes.n)
    kept = np.zeros(nodes.n, bool)
    followers, subject = _followers(nodes, tags)
    kind = nodes.kind
    primary = np.isin(kind, list(PRIMARY_KINDS)) & ~followers
    tag_index = pd.Index((tags["repository"].astype(str) + ":" + tags["tag"].astype(str)).to_numpy(dtype=object))
    matcher = RegistryMatcher(config.registry.url, config.registry.aliases)

    if not cleanup.disableKubernetesBasedPolicy and tables.get("workloads") is not None:
        wl = tables["workloads"]
        wl = wl[~wl["finished"].astype(bool)]
        texts = ("in use: " + wl["context"] + "/" + wl["namespace"] + "/" + wl["kind"] + "/" + wl["name"]
                 + " " + wl["container_type"].map(_CTYPE).fillna("container") + " " + wl["container"])
        _keep_referenced(nodes, kept, R, IN_USE, matcher, tag_index, tags, wl["image"], texts, wl["image_id"])
        R.add(np.arange(nodes.n), "not in use in any scanned workload", IN_USE, keep=False)
    if config.helm.enabled and tables.get("helm") is not None:
        h = tables["helm"]
        texts = ("helm: " + h["context"] + "/" + h["namespace"] + "/" + h["release"] + " revision "
                 + h["revision"].astype(str) + " (" + h["status"].fillna("unknown").astype(str) + ")")
        _keep_referenced(nodes, kept, R, HELM, matcher, tag_index, tags, h["image"], texts, None)
        R.add(np.arange(nodes.n), "in no stored Helm revision", HELM, keep=False)

    links = _links(nodes, tables.get("links"), primary)
    if not cleanup.disableGitHistoryBasedPolicy and tables.get("git_commits") is not None:
        out = evaluate_git(tables["git_refs"], tables["git_commits"], links,
                           cleanup.effective_keep_policies, now_us)
        kept[out.kept] = True
        R.add(out.keep_node, out.keep_text, GIT)
        R.add(out.note_node, out.note_text, GIT, keep=False)

    if not cleanup.disableBuiltWithinLastNHoursPolicy:
        _fresh(nodes, kept, R, primary, now_us, cleanup.keepImagesBuiltWithinLastNHours)

    _unlinked(nodes, kept, R, primary, links, tables.get("children"), cleanup.unlinkedImages)

    always = ~np.isin(kind, list(PRIMARY_KINDS | {"referrers-index"})) & ~followers
    missing = always & (kind == "missing")
    unknown = always & ~missing
    R.add(np.flatnonzero(missing), "manifest not in snapshot: kept", ALWAYS)
    ids = np.flatnonzero(unknown)
    R.add(ids, [f"unknown media type {nodes.media_type[i] or kind[i]}: kept" for i in ids], ALWAYS)
    kept |= always

    _relatives(nodes, kept, R, tables.get("children"), followers, subject)
    planned = nodes.tagged | (~kept & (kind != "missing"))
    return _rows(nodes, tags, kept, R.build(kept, planned), ~nodes.tagged & planned)


def _followers(nodes: _Nodes, tags: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Nodes that belong to a subject (artifacts with `subject`, referrer indexes, cosign tags)."""
    subj = pd.Series(nodes.subject, dtype=object)
    kind = nodes.kind
    fol = (kind == "referrers-index") | ((kind == "artifact") & subj.notna().to_numpy())
    # a subject named only by the tag (`sha256-<hex>` fallback index, cosign `.sig`/`.att`/`.sbom`)
    m = tags["tag"].astype(str).str.extract(_SUBJECT_TAG, expand=False)
    has = m.notna().to_numpy()
    tnodes = nodes.tag_node[has]
    from_tag = pd.Series("sha256:" + m[has].to_numpy(dtype=object), index=tnodes)
    from_tag = from_tag[~from_tag.index.duplicated()]
    subj = subj.copy()
    fill = subj.iloc[from_tag.index].isna().to_numpy()
    subj.iloc[from_tag.index[fill]] = from_tag.to_numpy()[fill]
    fol[tnodes] = True
    subject = np.full(nodes.n, -1, np.int64)
    ids = np.flatnonzero(fol & subj.notna().to_numpy())
    subject[ids] = nodes.lookup(nodes.repo[ids], subj.to_numpy()[ids])
    nodes.subject = subj.to_numpy(dtype=object)
    return fol, subject


def _image_id_refs(image_ids: pd.Series, matcher: RegistryMatcher) -> pd.DataFrame:
    """(image_id, repository or None, digest) for each distinct pod status imageID."""
    rows = []
    for iid in pd.unique(image_ids.dropna()):
        d = digest_of_image_id(iid)
        if d is None:
            continue
        s = str(iid).split("://", 1)[-1]
        ref = matcher.match(s) if "@" in s else None
        rows.append((iid, ref.repository if ref else None, d))
    return pd.DataFrame(rows, columns=["image_id", "id_repository", "id_digest"], dtype=object)


def _keep_referenced(nodes: _Nodes, kept, R: _Reasons, order: int, matcher, tag_index, tags,
                     images: pd.Series, texts: pd.Series, image_ids: pd.Series | None) -> None:
    """Keep what image references point at: by digest (ref or imageID) and by tag."""
    df = pd.DataFrame({"image": images.to_numpy(dtype=object), "text": texts.to_numpy(dtype=object)})
    if image_ids is not None:
        df["image_id"] = image_ids.to_numpy(dtype=object)
    m = match_images(df["image"].dropna(), matcher)
    df = df.merge(m, on="image", how="left")
    hits = []
    by_digest = df[df["digest"].notna()]
    hits.append((nodes.lookup(by_digest["repository"], by_digest["digest"]), by_digest["text"]))
    by_tag = df[df["tag"].notna() & df["repository"].notna()]
    ti = tag_index.get_indexer((by_tag["repository"].astype(str) + ":" + by_tag["tag"].astype(str)).to_numpy(dtype=object))
    ok = ti >= 0
    hits.append((nodes.tag_node[ti[ok]], by_tag["text"].to_numpy()[ok]))
    if image_ids is not None and df["image_id"].notna().any():
        ids = _image_id_refs(df["image_id"], matcher)
        j = df.merge(ids, on="image_id", how="inner")
        a = j[j["repository"].notna()]
        hits.append((nodes.lookup(a["repository"], a["id_digest"]), a["text"]))
        b = j[j["id_repository"].notna()]
        hits.append((nodes.lookup(b["id_repository"], b["id_digest"]), b["text"]))
    node = np.concatenate([np.asarray(h[0], np.int64) for h in hits])
    text = np.concatenate([np.asarray(h[1], dtype=object) for h in hits])
    ok = node >= 0
    uniq = pd.DataFrame({"node": node[ok], "text": text[ok]}).drop_duplicates().sort_values(["node", "text"])
    kept[uniq["node"].to_numpy()] = True
    R.add(uniq["node"].to_numpy(), uniq["text"].to_numpy(), order)


def _links(nodes: _Nodes, links: pd.DataFrame | None, primary: np.ndarray) -> pd.DataFrame:
    """Link rows of primary nodes as (node, repo, commit)."""
    if links is None or links.empty:
        return pd.DataFrame({"node": np.array([], np.int64), "repo": np.array([], np.int64), "commit": []})
    node = nodes.lookup(links["repository"], links["digest"])
    ok = node >= 0
    ok[ok] = primary[node[ok]]
    df = pd.DataFrame({"node": node[ok], "commit": links["commit"].to_numpy(dtype=object)[ok]})
    df = df.drop_duplicates()
    df["repo"] = nodes.repo_id[df["node"].to_numpy()]
    return df.reset_index(drop=True)


def _age_texts(age_us: np.ndarray) -> np.ndarray:
    """35m, 5h, 3d — formatted once per distinct value."""
    minutes = np.maximum(age_us, 0) // (60 * US)
    key = np.where(minutes < 48 * 60, minutes, -(minutes // (24 * 60)) - 1)
    uniq, inv = np.unique(key, return_inverse=True)
    fmt = np.array([fmt_duration(int(k) * 60 * US) if k >= 0 else f"{-(int(k) + 1)}d" for k in uniq], dtype=object)
    return fmt[inv.ravel()]


def _fresh(nodes: _Nodes, kept, R: _Reasons, primary, now_us: int, hours: float) -> None:
    window = int(hours * 3600 * US)
    have = primary & (nodes.created != NAT)
    fresh = have & (nodes.created > now_us - window)
    limit = fmt_duration(window)
    ids = np.flatnonzero(fresh)
    if len(ids):
        R.add(ids, "built " + _age_texts(now_us - nodes.created[ids]) + f" ago (< {limit})", FRESH)
        kept[ids] = True
    ids = np.flatnonzero(have & ~fresh)
    if len(ids):
        R.add(ids, "built " + _age_texts(now_us - nodes.created[ids]) + f" ago (not within {limit})", FRESH, keep=False)
    R.add(np.flatnonzero(primary & ~have), "build time unknown", FRESH, keep=False)


def _edges(nodes: _Nodes, children: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if children is None or children.empty:
        e = np.array([], np.int64)
        return e, e, np.array([], object)
    parent = nodes.lookup(children["repository"], children["index_digest"])
    child = nodes.lookup(children["repository"], children["child_digest"])
    ok = (parent >= 0) & (child >= 0)
    return parent[ok], child[ok], children["platform"].astype(object).to_numpy()[ok]


def _unlinked(nodes: _Nodes, kept, R: _Reasons, primary, links: pd.DataFrame, children, mode: str) -> None:
    """Tagged images linked to no commit (their own, their platforms' or their index's)."""
    linked = np.zeros(nodes.n, bool)
    linked[links["node"].to_numpy(np.int64)] = True
    parent, child, _ = _edges(nodes, children)
    family = linked.copy()
    family[parent[linked[child]]] = True
    family[child[linked[parent]]] = True
    ids = np.flatnonzero(nodes.tagged & primary & ~family)
    if mode == "keep":
        R.add(ids, "unlinked: no revision annotation, label or tag pattern links it to a commit", UNLINKED)
        kept[ids] = True
    else:
        R.add(ids, "unlinked (unlinkedImages: delete)", UNLINKED, keep=False)


def _relatives(nodes: _Nodes, kept, R: _Reasons, children, followers, subject) -> None:
    """Whole indexes, their platforms and referrers go with what is kept."""
    parent, child, platform = _edges(nodes, children)
    digest = nodes.digest
    # An index with a platform kept by a rule is kept whole (nested indexes too).
    up = kept.copy()
    while True:
        e = np.flatnonzero(up[child] & ~up[parent])
        if not len(e):
            break
        R.add(parent[e], [f"index of kept platform {digest[c]}" + (f" ({p})" if isinstance(p, str) else "")
                          for c, p in zip(child[e], platform[e])], RELATIVE)
        up[parent[e]] = True
    kept |= up
    while True:
        e = np.flatnonzero(kept[parent] & ~kept[child])
        f = np.flatnonzero(followers & (subject >= 0))
        f = f[kept[subject[f]] & ~kept[f]]
        if not len(e) and not len(f):
            break
        R.add(child[e], "platform of kept index " + digest[parent[e]], RELATIVE)
        R.add(f, "referrer of kept " + digest[subject[f]], RELATIVE)
        kept[child[e]] = True
        kept[f] = True
    orphans = np.flatnonzero(followers & (subject < 0))
    if len(orphans):
        subj = pd.Series(nodes.subject[orphans], dtype=object).fillna("unknown").to_numpy(dtype=object)
        R.add(orphans, "subject " + subj + " not in snapshot: kept", RELATIVE)
        kept[orphans] = True
    # why the rest go
    R.add(child, "platform of deleted index " + digest[parent], RELATIVE, keep=False)
    f = np.flatnonzero(followers & (subject >= 0))
    R.add(f, "referrer of deleted " + digest[subject[f]], RELATIVE, keep=False)


def _rows(nodes: _Nodes, tags: pd.DataFrame, kept: np.ndarray, reasons: pa.ListArray,
          untagged: np.ndarray) -> pd.DataFrame:
    """One row per tag plus untagged relatives deleted with their subject, sorted."""
    extra = np.flatnonzero(untagged)
    row_node = np.concatenate([nodes.tag_node, extra]).astype(np.int64)
    kind = np.where(nodes.kind == "missing", "unknown", nodes.kind)
    created = nodes.created[row_node]
    table = pa.table({
        "repository": pa.array(nodes.repo[row_node], pa.string()),
        "tag": pa.array(np.concatenate([tags["tag"].astype(str).to_numpy(dtype=object),
                                        np.full(len(extra), None, dtype=object)]), pa.string()),
        "digest": pa.array(nodes.digest[row_node], pa.string()),
        "kind": pa.array(kind[row_node], pa.string()),
        "action": pa.array(np.where(kept[row_node], "keep", "delete"), pa.string()),
        "reasons": pc.take(reasons, pa.array(row_node)),
        "size": pa.array(nodes.size[row_node], pa.int64()),
        "created": pa.array(np.where(created == NAT, 0, created), pa.int64(), mask=created == NAT).cast(PLAN.field("created").type),
    }, schema=PLAN)
    table = table.sort_by([("repository", "ascending"), ("tag", "ascending"), ("digest", "ascending")])
    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)


def plan_summary(plan: pd.DataFrame) -> dict[str, Any]:
    """Counts and bytes reclaimable, overall and per repository (each deleted digest once)."""
    action = plan["action"].to_numpy(dtype=object)
    dele = plan[action == "delete"]
    uniq = dele.drop_duplicates(["repository", "digest"])
    per = (plan.assign(delete=action == "delete").groupby("repository", sort=True)
           .agg(tags=("tag", "count"), rows=("digest", "size"), delete=("delete", "sum")))
    reclaim = uniq.groupby("repository")["size"].sum()
    repos = {r: {"tags": int(v.tags), "delete": int(v.delete), "keep": int(v.rows - v.delete),
                 "bytes_reclaimable": int(reclaim.get(r, 0))} for r, v in per.iterrows()}
    return {"rows": int(len(plan)), "tags": int(plan["tag"].notna().sum()),
            "keep": int((action == "keep").sum()), "delete": int(len(dele)),
            "digests_deleted": int(len(uniq)), "bytes_reclaimable": int(uniq["size"].sum()),
            "repositories": repos}
