"""The plan: a pure function of (snapshot tables, snapshot meta, policy) deciding keep or delete.

Decisions are made per manifest digest of a repository (a "node"); every tag on a digest gets
the digest's decision, because deleting a manifest deletes all of its tags (docs/safety.md).
A node is kept when any rule keeps it, and its reasons list every rule that did:

  1. in use      workload images (not finished Jobs) by digest (imageID, @sha256) and by tag, and
                 the images keep lists name (`tables["keep_list"]`, when `keep.lists` is set), alike;
                 a reference into another host keeps the same-named repository's image (fail closed)
  2. helm        every stored revision the Helm source recorded
  2b. seen        (keepImagesSeenInUseWithin, regsweep's own) what earlier snapshots within the window
                 saw in use or in Helm, matched as rule 1 matches (`tables["seen_in_use"]`, tasks/plan/history_rules.py)
  3. git         werf keep policies over git history (tasks/plan/git/policy.py)
  4. fresh       built (else pushed, by the registry's own time) within keepImagesBuiltWithinLastNHours
                 of the snapshot time; an image whose build time or revision could not be read
                 (MANIFESTS `problem`) counts as fresh; with firstSeenAsBuildTime an image with neither
                 time is judged by the first snapshot that listed it (`tables["first_seen"]`)
  5. unlinked    digests linked to no commit, unless `unlinkedImages: delete`
  6. relatives   an index with a kept platform is kept whole with all its platforms; referrers
                 (signatures, SBOMs, the `sha256-<hex>` fallback index) follow their subject

Unknown media types, artifacts with no subject (a Helm chart: no image rule can judge it),
manifests missing from the snapshot and referrers of subjects the snapshot does not know are
always kept. A deleted node's reasons say which rules looked at it and why none kept it. If the
snapshot is incomplete (tasks/snapshot/completeness.py) every row is kept (fail closed).

"Now" is the snapshot's `created_at`, so re-evaluating a snapshot reproduces its plan. The rules
work on integer nodes (tasks/plan/nodes.py, coded by tasks/plan/codes.py) and add their texts to one
reasons column (tasks/plan/reasons.py).

Two entry points run the same evaluation: `plan_rows` (the plan's rows with their reasons, and
what the in-use and Helm rules kept) and `decide` (the Decision alone, without texts: the
what-if's replay of many snapshots).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.plan.codes import NAT, US, join_texts, large_strings, sort_ranks, to_us
from tasks.snapshot.completeness import snapshot_problems
from tasks.config.models import RegsweepConfig
from tasks.plan.git.policy import evaluate_git
from tasks.plan.inputs import Shared, snapshot_now, to_frame
from tasks.plan.nodes import K_ARTIFACT, K_MISSING, K_REFERRERS, K_UNKNOWN, KINDS, Nodes
from tasks.oci.manifest import tag_subject
from tasks.plan.reasons import NoReasons, Reasons
from tasks.plan.references import helm_revision_names, keep_list_names, note_other_hosts, references, workload_names
from tasks.oci.reference import RegistryMatcher
from tasks.store.schemas import PLAN
from tasks.common.units import compact_ages, format_duration

IN_USE, HELM, GIT, FRESH, UNLINKED, ALWAYS, RELATIVE = range(7)
SEEN = 7   # seen in use by earlier snapshots: listed after rule 2's reasons, as it is added after them
#: The rules whose kept images a later snapshot says were needed (Decision.needed).
NEEDED_BY = (IN_USE, HELM)
_COMMIT_ID = r"^[0-9a-fA-F]{4,64}$"


# ------------------------------------------------------------------ evaluation

def _prefixed(prefix: str, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.binary_join_element_wise(prefix, texts, "").to_numpy(zero_copy_only=False).astype(object)


def _subject_tags(tags: pd.DataFrame) -> pa.Array:
    """The subject digest a tag names (`sha256-<hex>` fallback index, cosign `.sig`/`.att`/`.sbom`)."""
    t = large_strings(tags["tag"])
    cand = pc.starts_with(t, "sha256-")
    out = pa.nulls(len(t), pa.large_string())
    idx = np.flatnonzero(cand.to_numpy(zero_copy_only=False)) if len(t) else np.zeros(0, np.int64)
    if not len(idx):
        return out
    sub = t.take(pa.array(idx)).to_pylist()
    vals = [None] * len(t)
    for i, s in zip(idx.tolist(), sub):
        vals[i] = tag_subject(s)
    return pa.array(vals, pa.large_string())


def decide(tables: dict[str, pd.DataFrame | None], meta: dict[str, Any], config: RegsweepConfig,
           shared: Shared | None = None, *, matcher: RegistryMatcher | None = None) -> Decision:
    """What the plan of one snapshot under one policy deletes, without its reason texts (the
    what-if's hundreds of evaluations need none): pure, deterministic; `plan_rows` decides alike.

    shared: when `tables` hold one batch of the snapshot's repositories (tasks/plan/batches.py),
    what only the whole snapshot tells: its completeness problems and its git history.
    matcher (for config.registry) may be shared by many evaluations: its parse cache then is."""
    e = _evaluate(tables, meta, config, shared, matcher, texts=False)
    return _decision(e)


def plan_rows(tables: dict[str, pd.DataFrame | None], meta: dict[str, Any], config: RegsweepConfig,
              shared: Shared | None = None, *, matcher: RegistryMatcher | None = None) -> PlanRows:
    """The plan of one snapshot under one policy, every row with its reasons, and what its in-use
    and Helm rules kept (as `decide` gives it: a plan can cache what the what-if would otherwise
    evaluate again). Pure, deterministic; `shared` and `matcher` as for `decide`."""
    e = _evaluate(tables, meta, config, shared, matcher, texts=True)
    return PlanRows(_rows(e), _needed(e))


@dataclass
class _Evaluation:
    """Every node's decision, and what the rules said about it."""

    nodes: Nodes
    kept: np.ndarray               # per node
    untagged: np.ndarray           # per node: an untagged relative deleted with what it belongs to (a row of its own)
    reasons: Reasons | NoReasons   # NoReasons: texts only of the rules `needed` reports
    problems: list[str]            # why the snapshot is incomplete: then every node is kept, for these reasons


def _evaluate(tables: dict[str, pd.DataFrame | None], meta: dict[str, Any], config: RegsweepConfig,
              shared: Shared | None, matcher: RegistryMatcher | None, *, texts: bool) -> _Evaluation:
    """The rules in order over the snapshot's nodes; `texts=False` skips the texts of every rule
    but those `needed` reports (in use, Helm)."""
    now_us = int(snapshot_now(meta).timestamp() * US)
    cleanup = config.cleanup
    tags = tables.get("tags")
    if tags is None:
        tags = pd.DataFrame({"repository": pd.Series(dtype=object), "tag": pd.Series(dtype=object),
                             "digest": pd.Series(dtype=object), "gone": pd.Series(dtype=bool)})
    tags = tags[~tags["gone"].astype(bool).to_numpy() & tags["digest"].notna().to_numpy()].reset_index(drop=True)
    problems = snapshot_problems(meta, tables, config) if shared is None else shared.problems
    matcher = matcher or RegistryMatcher(config.registry.url, config.registry.aliases)

    refs = {}   # per reference rule, in rule order: (repository, tag, digest, host, text)
    in_use, not_in_use = [], []
    if not problems and not cleanup.disableKubernetesBasedPolicy and tables.get("workloads") is not None:
        wl = tables["workloads"]
        wl = wl[~wl["finished"].astype(bool)]
        wl = wl.assign(text=_prefixed("in use: ", workload_names(wl)))
        in_use.append(references(wl, matcher, carry="text", with_ids=True))
        not_in_use.append("in any scanned workload")
    if not problems and config.keep.lists and tables.get("keep_list") is not None:
        # a keep list names images in use where no scanned cluster shows them: rule 1, matched alike
        kl = tables["keep_list"]
        kl = kl.assign(text=_prefixed("in use: keep list ", keep_list_names(kl)))
        in_use.append(references(kl, matcher, carry="text"))
        not_in_use.append("on any keep list")
    if in_use:
        refs[IN_USE] = pd.concat(in_use, ignore_index=True) if len(in_use) > 1 else in_use[0]
    if not problems and config.helm.enabled and tables.get("helm") is not None:
        h = tables["helm"]
        h = h.assign(text=_prefixed("helm: ", helm_revision_names(h, status=True)))
        refs[HELM] = references(h, matcher, carry="text")
    seen = tables.get("seen_in_use")
    if not problems and cleanup.keepImagesSeenInUseWithin is not None and seen is not None:
        # the sources this policy reads today decide which sightings count
        counts = {"kubernetes": not cleanup.disableKubernetesBasedPolicy, "helm": config.helm.enabled}
        seen = seen[seen["source"].map(counts).fillna(False).to_numpy(dtype=bool)]
        refs[SEEN] = references(seen, matcher, carry="text", with_ids=True)
    refs = {order: note_other_hosts(r, "text", matcher) for order, r in refs.items()}
    nodes = Nodes(tables, tags, refs, _subject_tags(tags))
    reasons = Reasons(nodes.n) if texts else NoReasons(nodes.n, record=NEEDED_BY)
    if problems:
        return _Evaluation(nodes, np.ones(nodes.n, bool), np.zeros(nodes.n, bool), reasons, problems)

    kept = np.zeros(nodes.n, bool)
    followers = _followers(nodes, nodes.encoded.subject_tags)
    kind = nodes.kind
    # An artifact with no subject (a Helm chart, a WASM module) is no image: no image rule judges it.
    loose = (kind == K_ARTIFACT) & ~followers
    primary = (kind < K_ARTIFACT) & ~followers   # images and indexes

    for order, r in refs.items():
        named = nodes.encoded.rule_refs[order]
        # by digest, then by tag: a tag on two digests in this snapshot keeps both
        by_tag_ref, by_tag = nodes.find_tag(named.repository, named.tag)
        node = np.concatenate([nodes.find(named.repository, named.digest), by_tag])
        texts = r["text"].to_numpy(dtype=object)
        text = np.concatenate([texts, texts[by_tag_ref]])
        ok = node >= 0
        uniq = pd.DataFrame({"node": node[ok], "text": text[ok]}).drop_duplicates().sort_values(["node", "text"])
        kept[uniq["node"].to_numpy()] = True
        reasons.add(uniq["node"].to_numpy(), uniq["text"].to_numpy(dtype=object), order)
        reasons.add_common({IN_USE: "not in use " + " or ".join(not_in_use), HELM: "in no stored Helm revision"}.get(order)
                           or f"not seen in use or in Helm within {format_duration(cleanup.keepImagesSeenInUseWithin)}")

    links = nodes.encoded.links
    link_node = nodes.find(links.repository, links.digest)
    ok = link_node >= 0
    ok[ok] = primary[link_node[ok]]
    # A revision that cannot name a commit (`main`, `unknown`, `${GIT_COMMIT}`) links to none:
    # the image is unlinked, not "linked to a commit that is gone" (which git rules never keep).
    ok &= _commit_ids(nodes.links_commit)
    if not cleanup.disableGitHistoryBasedPolicy and tables.get("git_commits") is not None and ok.any():
        out = evaluate_git(tables["git_refs"], tables["git_commits"], link_node[ok],
                           large_strings(nodes.links_commit).filter(pa.array(ok)), nodes.repo_code,
                           cleanup.effective_keep_policies, now_us, None if shared is None else shared.git)
        kept[out.kept] = True
        reasons.add(out.keep_node, out.keep_text, GIT)
        for note_nodes, codes, table in out.notes:
            reasons.add_coded(note_nodes, codes, table, GIT, keep=False)

    if not cleanup.disableBuiltWithinLastNHoursPolicy:
        _fresh(nodes, kept, reasons, primary, now_us, cleanup.keepImagesBuiltWithinLastNHours,
               tables.get("first_seen") if cleanup.firstSeenAsBuildTime else None)
    _unreadable(nodes, kept, reasons, primary)

    _unlinked(nodes, kept, reasons, primary, link_node[ok], cleanup.unlinkedImages)

    always = (kind >= K_UNKNOWN) & ~followers
    missing = always & (kind == K_MISSING)
    unknown = always & ~missing
    reasons.add(np.flatnonzero(missing), "manifest not in snapshot: kept", ALWAYS)
    ids = np.flatnonzero(unknown)
    reasons.add(ids, [f"unreadable manifest ({nodes.problem[i]}): kept" if nodes.problem[i] else
                      f"unknown media type {nodes.media_type(i) or 'unknown'}: kept" for i in ids], ALWAYS)
    kept |= always
    ids = np.flatnonzero(loose)
    reasons.add(ids, [f"artifact of type {nodes.artifact_type(i) or 'unknown'} (not an image"
                      + (f"; {nodes.problem[i]}" if nodes.problem[i] else "") + "): kept" for i in ids], ALWAYS)
    kept |= loose

    _relatives(nodes, kept, reasons, followers)
    untagged = ~nodes.tagged & ~kept & (kind != K_MISSING)
    return _Evaluation(nodes, kept, untagged, reasons, [])


def _commit_ids(commits) -> np.ndarray:
    """Which link values are a full or abbreviated (4+ hex digits, as git requires) commit id."""
    a = large_strings(commits)
    if not len(a):
        return np.zeros(0, bool)
    return pc.match_substring_regex(a, _COMMIT_ID).fill_null(False).to_numpy(zero_copy_only=False)


def _followers(nodes: Nodes, tag_subject_codes: np.ndarray) -> np.ndarray:
    """Nodes that belong to a subject (artifacts with `subject`, referrer indexes, tagged by
    subject); a node tagged by its subject gets that subject (`subject_code`, `subject`)."""
    kind = nodes.kind
    followers = (kind == K_REFERRERS) | ((kind == K_ARTIFACT) & (nodes.subject_code >= 0))
    has = tag_subject_codes >= 0
    tagged = nodes.tag_node[has]          # the node of each tag that names a subject
    followers[tagged] = True
    fill = nodes.subject_code[tagged] < 0
    nodes.subject_code[tagged[fill]] = tag_subject_codes[has][fill]
    nodes.subject[tagged[fill]] = nodes.find(nodes.repo_code[tagged[fill]], tag_subject_codes[has][fill])
    return followers


def _fresh(nodes: Nodes, kept, reasons: Reasons, primary, now_us: int, hours: float,
           first_seen: pd.DataFrame | None = None) -> None:
    window = int(hours * 3600 * US)
    # Build time: the config's (or annotation's) `created`, else the registry's push time.
    by_push = (nodes.created == NAT) & (nodes.pushed != NAT)
    when = np.where(by_push, nodes.pushed, nodes.created)
    have = primary & (when != NAT)
    fresh = have & (when > now_us - window)
    limit = format_duration(window)
    for ids, suffix, keep in ((np.flatnonzero(fresh), f" ago (< {limit})", True),
                              (np.flatnonzero(have & ~fresh), f" ago (not within {limit})", False)):
        if len(ids) and reasons.wants_text:   # decide-only: the ages are only texts
            codes, fmt = compact_ages(now_us - when[ids])
            codes = np.where(by_push[ids], codes + len(fmt), codes)
            reasons.add_coded(ids, codes, [f"built {f}{suffix}" for f in fmt]
                        + [f"pushed {f}{suffix}, no build time recorded" for f in fmt], FRESH, keep=keep)
    kept[fresh] = True
    untimed = primary & ~have
    if first_seen is not None and untimed.any():
        untimed &= ~_first_seen_fresh(nodes, kept, reasons, np.flatnonzero(untimed), first_seen, now_us, window)
    reasons.add(np.flatnonzero(untimed), "build time unknown", FRESH, keep=False)


def _first_seen_fresh(nodes: Nodes, kept, reasons: Reasons, ids: np.ndarray, first_seen: pd.DataFrame,
                      now_us: int, window: int) -> np.ndarray:
    """The fresh rule for images with no build or push time: the first snapshot that listed them
    stands in as the build time. Returns which nodes (of all) it judged."""
    want = pa.table({"node": pa.array(ids), "repository": nodes.repositories(ids),
                     "digest": nodes.digests(ids).cast(pa.string())})
    have = pa.table({"repository": pa.array(first_seen["repository"], pa.string()),
                     "digest": pa.array(first_seen["digest"], pa.string()),
                     "first_us": pa.array(to_us(first_seen["first_seen"]), pa.int64()),
                     "snapshot": pa.array(first_seen["snapshot"], pa.string())})
    found = want.join(have, ["repository", "digest"], join_type="inner").sort_by("node")
    node = found["node"].to_numpy()
    judged = np.zeros(nodes.n, bool)
    judged[node] = True
    if not len(node):
        return judged
    first = found["first_us"].to_numpy()
    fresh = first > now_us - window
    kept[node[fresh]] = True
    if not reasons.wants_text:   # decide-only: only which nodes were judged and kept matters
        return judged
    codes, fmt = compact_ages(now_us - first)
    limit = format_duration(window)
    texts = (pd.Series(np.asarray(fmt, dtype=object)[codes]).radd("first seen ")
             + " ago (snapshot " + pd.Series(found["snapshot"].to_pylist(), dtype=object) + "), no build time recorded")
    for sel, suffix, keep in ((fresh, f" (< {limit})", True), (~fresh, f" (not within {limit})", False)):
        reasons.add(node[sel], (texts[sel] + suffix).to_numpy(dtype=object), FRESH, keep=keep)
    return judged


def _unreadable(nodes: Nodes, kept, reasons: Reasons, primary) -> None:
    """Images whose build time or revision could not be read (`problem`) count as fresh: kept,
    whatever the fresh window, since no rule can tell how old they are or which commit built them."""
    ids = np.flatnonzero(primary & (nodes.problem != None))  # noqa: E711 - elementwise on objects
    if len(ids):
        known = nodes.created[ids] != NAT
        reasons.add(ids, [f"{'revision' if k else 'build time'} unknown ({nodes.problem[i]}): counts as fresh, kept"
                    for i, k in zip(ids.tolist(), known.tolist())], FRESH)
        kept[ids] = True


def _unlinked(nodes: Nodes, kept, reasons: Reasons, primary, link_nodes, mode: str) -> None:
    """Tagged images linked to no commit (their own, their platforms' or their index's)."""
    linked = np.zeros(nodes.n, bool)
    linked[link_nodes] = True
    parent, child, _ = nodes.edges
    family = linked.copy()
    family[parent[linked[child]]] = True
    family[child[linked[parent]]] = True
    ids = np.flatnonzero(nodes.tagged & primary & ~family)
    if mode == "keep":
        reasons.add(ids, "unlinked: no revision annotation, label or tag pattern links it to a commit", UNLINKED)
        kept[ids] = True
    else:
        reasons.add(ids, "unlinked (unlinkedImages: delete)", UNLINKED, keep=False)


def _relatives(nodes: Nodes, kept, reasons: Reasons, followers) -> None:
    """Whole indexes, their platforms and referrers go with what is kept."""
    parent, child, platform = nodes.edges
    subject = nodes.subject
    # An index with a platform kept by a rule is kept whole (nested indexes too).
    up = kept.copy()
    while True:
        e = np.flatnonzero(up[child] & ~up[parent])
        if not len(e):
            break
        reasons.add(parent[e], [f"index of kept platform {d}" + (f" ({p})" if isinstance(p, str) else "")
                          for d, p in zip(nodes.digests(child[e]).to_pylist(), platform[e])], RELATIVE)
        up[parent[e]] = True
    kept |= up
    while True:
        e = np.flatnonzero(kept[parent] & ~kept[child])
        f = np.flatnonzero(followers & (subject >= 0))
        f = f[kept[subject[f]] & ~kept[f]]
        if not len(e) and not len(f):
            break
        reasons.add(child[e], join_texts("platform of kept index ", nodes.digests(parent[e])), RELATIVE)
        reasons.add(f, join_texts("referrer of kept ", nodes.digests(subject[f])), RELATIVE)
        kept[child[e]] = True
        kept[f] = True
    orphans = np.flatnonzero(followers & (subject < 0))
    if len(orphans):
        codes = nodes.subject_code[orphans]
        names = nodes.digest_names.take(pa.array(np.maximum(codes, 0))) if len(nodes.digest_names) \
            else pa.nulls(len(codes), pa.large_string())
        names = pc.if_else(pa.array(codes >= 0), names, pa.scalar("unknown", pa.large_string()))
        reasons.add(orphans, join_texts("subject ", names, " not in snapshot: kept"), RELATIVE)
        kept[orphans] = True
    # why the rest go (notes only reach deleted nodes)
    gone = ~kept[child]
    reasons.add(child[gone], join_texts("platform of deleted index ", nodes.digests(parent[gone])), RELATIVE, keep=False)
    f = np.flatnonzero(followers & (subject >= 0) & ~kept)
    reasons.add(f, join_texts("referrer of deleted ", nodes.digests(subject[f])), RELATIVE, keep=False)


def _rows(e: _Evaluation) -> pd.DataFrame:
    """One row per tag plus untagged relatives deleted with their subject, ordered by
    (repository, tag, digest), untagged rows last within their repository (PLAN schema)."""
    nodes, kept = e.nodes, e.kept
    extra = np.flatnonzero(e.untagged)
    row_node = np.concatenate([nodes.tag_node, extra]).astype(np.int64)
    tag_code = np.concatenate([nodes.encoded.tags.tag, np.full(len(extra), -1, np.int64)])
    repo_rank = sort_ranks(nodes.repository_names)[nodes.repo_code[row_node]] if len(row_node) else np.zeros(0, np.int64)
    tag_rank = np.where(tag_code >= 0, sort_ranks(nodes.tag_names)[np.maximum(tag_code, 0)], len(nodes.tag_names)) \
        if len(nodes.tag_names) else np.zeros(len(row_node), np.int64)
    dig_rank = np.zeros(len(row_node), np.int64)
    if len(extra):
        # untagged rows: ordered by digest string among themselves
        ex = np.arange(len(nodes.tag_node), len(row_node))
        d = nodes.digests(row_node[ex])
        dig_rank[ex[pc.sort_indices(d).to_numpy()]] = np.arange(len(ex))
    order = np.lexsort((dig_rank, tag_rank, repo_rank))
    row_node, tag_code = row_node[order], tag_code[order]
    if e.problems:
        problems = e.problems
        reason_lists = pa.ListArray.from_arrays(pa.array(np.arange(len(row_node) + 1) * len(problems), pa.int32()),
                                                pa.array(problems * len(row_node), pa.string()))
    else:
        reason_lists = e.reasons.build(kept, row_node)
    kind = np.asarray(KINDS, dtype=object)[np.where(nodes.kind == K_MISSING, K_UNKNOWN, nodes.kind)[row_node]]
    created = nodes.created[row_node]
    table = pa.table({
        "repository": nodes.repositories(row_node),
        "tag": (nodes.tag_names.take(pa.array(np.maximum(tag_code, 0), mask=tag_code < 0)).cast(pa.string())
                if len(nodes.tag_names) else pa.nulls(len(row_node), pa.string())),
        "digest": nodes.digests(row_node).cast(pa.string()),
        "kind": pa.array(kind, pa.string()),
        "action": pa.array(np.where(kept[row_node], "keep", "delete"), pa.string()),
        "reasons": reason_lists,
        "size": pa.array(nodes.size[row_node], pa.int64()),
        "created": pa.array(np.where(created == NAT, 0, created), pa.int64(), mask=created == NAT).cast(PLAN.field("created").type),
    }, schema=PLAN)
    return to_frame(table)


@dataclass(frozen=True)
class Decision:
    """What a plan decides without its reason texts (`decide`; tasks/history/whatif.py): the
    deleted tags, the deleted untagged relatives, and the images the in-use and Helm rules kept,
    with the first text of each (what a later snapshot says needed an image)."""

    deleted_tags: pa.Table      # repository, tag, digest
    deleted_untagged: pa.Table  # repository, digest
    needed: pa.Table            # repository, digest, why (NEEDED)

    @property
    def delete(self) -> int:
        """Rows the plan would mark delete (plan.json `delete`)."""
        return self.deleted_tags.num_rows + self.deleted_untagged.num_rows


@dataclass(frozen=True)
class PlanRows:
    """A plan's rows (`plan_rows`) and what its in-use and Helm rules kept, as Decision.needed."""

    frame: pd.DataFrame         # PLAN
    needed: pa.Table            # repository, digest, why (NEEDED)


def _decision(e: _Evaluation) -> Decision:
    """The Decision: `_rows` without ordering or reasons."""
    nodes = e.nodes
    deleted = np.flatnonzero(~e.kept[nodes.tag_node])     # tag rows
    deleted_nodes = nodes.tag_node[deleted]
    untagged = np.flatnonzero(e.untagged)
    tags = pa.table({"repository": nodes.repositories(deleted_nodes),
                     "tag": nodes.tag_names.take(pa.array(nodes.encoded.tags.tag[deleted])).cast(pa.string())
                     if len(deleted) else pa.array([], pa.string()),
                     "digest": nodes.digests(deleted_nodes).cast(pa.string())})
    return Decision(tags, pa.table({"repository": nodes.repositories(untagged),
                                    "digest": nodes.digests(untagged).cast(pa.string())}), _needed(e))


def _needed(e: _Evaluation) -> pa.Table:
    """(repository, digest, why): each image the in-use and Helm rules kept, with its first text."""
    node, text = e.reasons.recorded(NEEDED_BY)
    return pa.table({"repository": e.nodes.repositories(node), "digest": e.nodes.digests(node).cast(pa.string()),
                     "why": pa.array(text, pa.string())})
