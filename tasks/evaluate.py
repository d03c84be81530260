"""The plan: a pure function of (snapshot tables, snapshot meta, policy) deciding keep or delete.

Decisions are made per manifest digest of a repository (a "node"); every tag on a digest gets
the digest's decision, because deleting a manifest deletes all of its tags (SPEC.md, Safety).
A node is kept when any rule keeps it, and its reasons list every rule that did:

  1. in use      workload images (not finished Jobs) by digest (imageID, @sha256) and by tag;
                 a reference into another host keeps the same-named repository's image (fail closed)
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

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.config import RegsweepConfig
from tasks.gitpolicy import US, evaluate_git, to_us
from tasks.reference import RegistryMatcher, digest_of_image_id, match_images, other_host_images
from tasks.oci import tag_subject
from tasks.schemas import PLAN, SOURCE_TABLES
from tasks.units import format_duration, parse_time
from tasks.reference import same_registry

IN_USE, HELM, GIT, FRESH, UNLINKED, ALWAYS, RELATIVE = range(7)
CAP = 5                      # reasons of one rule listed per digest; the rest are counted
PRIMARY_KINDS = {"image", "index", "artifact"}
NAT = np.iinfo(np.int64).min
_COMMIT_ID = r"^[0-9a-fA-F]{4,64}$"
_CTYPE = {"containers": "container", "initContainers": "init container",
          "ephemeralContainers": "ephemeral container"}


# ------------------------------------------------------------------ snapshot completeness

def snapshot_problems(meta: dict[str, Any], tables: dict[str, Any], config: RegsweepConfig) -> list[str]:
    """Why no plan from this snapshot may delete anything (empty when it is complete)."""
    problems = []
    sources = meta.get("sources") or {}
    enabled = set(config.enabled_sources())
    taken_of = meta.get("registry")
    if not same_registry(taken_of, config.registry.url):
        # e.g. two configurations sharing a store, and `latest` naming the other one's snapshot
        problems.append(f"snapshot incomplete: it is of registry {taken_of}, not {config.registry.url}")
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
            recorded = st.get("tables") or {}
            for t in SOURCE_TABLES[name]:
                if tables.get(t) is None:
                    problems.append(f"snapshot incomplete: {name} table {t} missing")
                elif t in recorded and len(tables[t]) != recorded[t]:
                    # a table replaced or cut short after the snapshot was taken: rows may be missing
                    problems.append(f"snapshot incomplete: {name} table {t} has {len(tables[t])} rows, "
                                    f"the snapshot recorded {recorded[t]}")
        elif st.get("status") != "failed":   # failed is reported above
            problems.append(f"snapshot incomplete: {name} has status {st.get('status')!r}, not ok")
    if not meta.get("complete", False) and not problems:
        problems.append("snapshot incomplete: marked incomplete by the snapshot flow")
    return problems


def snapshot_now(meta: dict[str, Any]) -> datetime:
    """The snapshot's own time: "now" for every rule."""
    now = parse_time(meta.get("created_at"))
    if now is None:
        raise ValueError(f"snapshot created_at {meta.get('created_at')!r} is not a time")
    return now


# ------------------------------------------------------------------ strings as integer codes

def _strings(col) -> pa.Array | pa.ChunkedArray:
    """A column (pandas, numpy, list, Arrow) as Arrow large_string, nulls kept, without copying
    what is already Arrow."""
    if not isinstance(col, (pa.Array, pa.ChunkedArray)):
        if isinstance(col, pd.Series) and not isinstance(col.dtype, (pd.ArrowDtype, pd.StringDtype)):
            col = col.astype(object).where(col.notna(), None)
        col = pa.array(col, from_pandas=True)
    if col.type != pa.large_string():
        col = col.cast(pa.large_string())
    return col


def _encode(*cols) -> tuple[list[np.ndarray], pa.Array]:
    """Integer codes (-1 for null) of several string columns over one shared dictionary.

    One hash pass over all of them (Arrow's dictionary_encode over a chunked array).
    """
    chunks = []
    for c in cols:
        a = _strings(c)
        chunks.append(a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a)
    lens = [len(a) for a in chunks]
    if not sum(lens):
        return [np.zeros(0, np.int64) for _ in chunks], pa.array([], pa.large_string())
    enc = pc.dictionary_encode(pa.chunked_array([a for a in chunks if len(a)], pa.large_string()))
    parts = iter(enc.chunks)
    out = []
    for n in lens:
        out.append(next(parts).indices.fill_null(-1).to_numpy().astype(np.int64) if n else np.zeros(0, np.int64))
    return out, enc.chunks[0].dictionary


def _encode_digests(*cols) -> tuple[list[np.ndarray], pa.Array]:
    """`_encode` for digest columns: when every digest is `sha256:<hex>` (71 bytes), hash them as
    fixed-size binary (about twice as fast as strings); anything else takes the general path."""
    arrs, valid = [], []
    for c in cols:
        a = _strings(c)
        a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
        v = None
        if a.null_count:
            v = a.is_valid()
            a = a.filter(v)
            v = v.to_numpy(zero_copy_only=False)
        off = np.frombuffer(a.buffers()[1], np.int64)[a.offset: a.offset + len(a) + 1] if len(a) else np.zeros(1, np.int64)
        if len(a) and (off[-1] - off[0] != 71 * len(a) or not np.all(np.diff(off) == 71)):
            return _encode(*cols)
        arrs.append(pa.Array.from_buffers(pa.binary(71), len(a), [None, a.buffers()[2].slice(int(off[0]), 71 * len(a))])
                    if len(a) else pa.array([], pa.binary(71)))
        valid.append(v)
    if not sum(len(a) for a in arrs):
        return _encode(*cols)
    enc = pc.dictionary_encode(pa.chunked_array([a for a in arrs if len(a)], pa.binary(71)))
    chunks = iter(enc.chunks)
    out = []
    for a, v in zip(arrs, valid):
        idx = next(chunks).indices.to_numpy().astype(np.int64) if len(a) else np.zeros(0, np.int64)
        if v is not None:
            full = np.full(len(v), -1, np.int64)
            full[v] = idx
            idx = full
        out.append(idx)
    return out, enc.chunks[0].dictionary.cast(pa.binary()).cast(pa.large_string())


def _texts(prefix: str, values, suffix: str = "") -> pa.Array:
    """prefix + value + suffix for every value, in Arrow."""
    parts = [pa.scalar(prefix, pa.large_string()), _strings(values)]
    if suffix:
        parts.append(pa.scalar(suffix, pa.large_string()))
    return pc.binary_join_element_wise(*parts, pa.scalar("", pa.large_string()))


def _first_unique(sorted_keys: np.ndarray) -> np.ndarray:
    return sorted_keys[np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]] if len(sorted_keys) else sorted_keys


# ------------------------------------------------------------------ nodes

KINDS = ["image", "index", "artifact", "referrers-index", "unknown", "missing"]
K_IMAGE, K_INDEX, K_ARTIFACT, K_REFERRERS, K_UNKNOWN, K_MISSING = range(len(KINDS))


class _Nodes:
    """Every (repository, digest) of the snapshot as an integer id, with its manifest facts.

    Repositories, digests and tags are dictionary-encoded once (one hash pass per domain over
    every table); a node is the int64 key repo_code * |digests| + digest_code, ids in key order.
    """

    def __init__(self, tables: dict, tags: pd.DataFrame, extra_digests, extra_repos, extra_tags):
        man = _frame(tables.get("manifests"), ("repository", "digest", "media_type", "kind", "size", "created", "subject"))
        ch = _frame(tables.get("children"), ("repository", "index_digest", "child_digest", "platform"))
        lk = _frame(tables.get("links"), ("repository", "digest", "commit"))
        (self.t_dig, m_dig, m_subj, c_idx, c_child, self.l_dig, *self.x_dig), self.DIG = _encode_digests(
            tags["digest"], man["digest"], man["subject"], ch["index_digest"], ch["child_digest"], lk["digest"],
            *extra_digests)
        (self.t_repo, m_repo, c_repo, self.l_repo, *self.x_repo), self.REPO = _encode(
            tags["repository"], man["repository"], ch["repository"], lk["repository"], *extra_repos)
        (self.t_tag, *self.x_tag), self.TAG = _encode(tags["tag"], *extra_tags)
        self.links_commit = lk["commit"]
        self.ND = nd = max(len(self.DIG), 1)
        mkey = m_repo * nd + m_dig
        tkey = self.t_repo * nd + self.t_dig
        self.keys = _first_unique(np.sort(np.concatenate([mkey, tkey]), kind="stable"))
        self.n = n = len(self.keys)
        self.repo_code = self.keys // nd
        self.dig_code = self.keys % nd
        # dense digest → node map (a digest in several repositories falls back to a search)
        self._by_dig = np.full(nd, -1, np.int64)
        self._by_dig[self.dig_code] = np.arange(n)
        self._dig_count = np.bincount(self.dig_code, minlength=nd)
        m_node = self.find(m_repo, m_dig)
        kcodes = pd.Categorical(man["kind"].to_numpy(dtype=object), categories=KINDS).codes.astype(np.int8)
        kcodes[kcodes < 0] = K_UNKNOWN
        self.kind = np.full(n, K_MISSING, np.int8)
        self.kind[m_node] = kcodes
        self.mrow = np.full(n, -1, np.int64)
        self.mrow[m_node] = np.arange(len(mkey))
        self.size = np.zeros(n, np.int64)
        self.size[m_node] = pd.to_numeric(man["size"]).fillna(0).to_numpy(np.int64)
        self.created = np.full(n, NAT, np.int64)
        if len(mkey):
            self.created[m_node] = to_us(man["created"])
        self.subject_code = np.full(n, -1, np.int64)
        has = m_subj >= 0
        self.subject_code[m_node[has]] = m_subj[has]
        self.subject = np.full(n, -1, np.int64)   # the subject's node (same repository); -1 absent
        self.subject[m_node[has]] = self.find(m_repo[has], m_subj[has])
        self.tag_node = self.find(self.t_repo, self.t_dig)
        self.tagged = np.zeros(n, bool)
        self.tagged[self.tag_node] = True
        self._man = man
        parent, child = self.find(c_repo, c_idx), self.find(c_repo, c_child)
        ok = (parent >= 0) & (child >= 0)
        platform = ch["platform"].astype(object).where(ch["platform"].notna(), None).to_numpy()
        self.edges = (parent[ok], child[ok], platform[ok])
        # (repository, tag) → node, for references by tag
        self.NT = max(len(self.TAG), 1)
        tk = self.t_repo * self.NT + self.t_tag
        order = np.argsort(tk, kind="stable")
        self._tag_keys, self._tag_nodes = tk[order], self.tag_node[order]

    def find(self, repo_codes, dig_codes) -> np.ndarray:
        """Node ids of (repository code, digest code) pairs; -1 where there is none."""
        rc, dc = np.asarray(repo_codes, np.int64), np.asarray(dig_codes, np.int64)
        out = np.full(len(rc), -1, np.int64)
        valid = (rc >= 0) & (dc >= 0)
        if not self.n or not valid.any():
            return out
        cand = np.where(valid, self._by_dig[np.where(valid, dc, 0)], -1)
        hit = (cand >= 0) & (self.repo_code[np.maximum(cand, 0)] == rc)
        out[hit] = cand[hit]
        again = np.flatnonzero(valid & ~hit & (self._dig_count[np.where(valid, dc, 0)] > 1))
        if len(again):
            key = rc[again] * self.ND + dc[again]
            pos = np.minimum(np.searchsorted(self.keys, key), self.n - 1)
            found = self.keys[pos] == key
            out[again[found]] = pos[found]
        return out

    def find_tag(self, repo_codes, tag_codes) -> np.ndarray:
        rc, tc = np.asarray(repo_codes, np.int64), np.asarray(tag_codes, np.int64)
        key = np.where((rc >= 0) & (tc >= 0), rc * self.NT + tc, -1)
        if not len(self._tag_keys):
            return np.full(len(key), -1, np.int64)
        pos = np.minimum(np.searchsorted(self._tag_keys, key), len(self._tag_keys) - 1)
        return np.where((key >= 0) & (self._tag_keys[pos] == key), self._tag_nodes[pos], -1)

    def digests(self, ids) -> pa.Array:
        return self.DIG.take(pa.array(self.dig_code[np.asarray(ids, np.int64)]))

    def media_type(self, i: int) -> str | None:
        r = self.mrow[i]
        return None if r < 0 else self._man["media_type"].iloc[r]


def _frame(df, columns) -> pd.DataFrame:
    return df if df is not None else pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


# ------------------------------------------------------------------ reasons

class _Reasons:
    """Keep reasons and 'why not kept' notes per node, assembled into one Arrow list column.

    Texts are codes into a table of distinct strings, so a note shared by a million nodes is
    one string. Notes that apply to every deleted node (`common`) are not stored per node.
    Parts are added in rule order, so a stable sort by node keeps each node's reasons in order.
    """

    def __init__(self, n: int):
        self.n = n
        self.table: list[pa.Array] = []
        self.size = 0
        self.parts: list[tuple[np.ndarray, np.ndarray, int, bool]] = []
        self.common: list[int] = []   # codes of notes every deleted node gets, first

    def _intern(self, values: pa.Array) -> int:
        self.table.append(values)
        at = self.size
        self.size += len(values)
        return at

    def add(self, nodes, texts, order: int, keep: bool = True) -> None:
        nodes = np.asarray(nodes, dtype=np.int64)
        if not len(nodes):
            return
        if isinstance(texts, str):
            codes = np.full(len(nodes), self._intern(pa.array([texts], pa.large_string())), np.int64)
        else:
            enc = pc.dictionary_encode(_strings(texts))
            if isinstance(enc, pa.ChunkedArray):
                enc = enc.combine_chunks()
            codes = enc.indices.to_numpy().astype(np.int64) + self._intern(enc.dictionary)
        self.parts.append((nodes, codes, order, keep))

    def add_coded(self, nodes, codes, table: list[str], order: int, keep: bool = True) -> None:
        nodes = np.asarray(nodes, dtype=np.int64)
        if len(nodes):
            base = self._intern(pa.array(table, pa.large_string()))
            self.parts.append((nodes, np.asarray(codes, np.int64) + base, order, keep))

    def add_common(self, text: str) -> None:
        self.common.append(self._intern(pa.array([text], pa.large_string())))

    def build(self, kept: np.ndarray, row_node: np.ndarray) -> pa.ListArray:
        """The reasons of each row (rows name nodes; several rows may share one)."""
        planned = np.zeros(self.n, bool)
        planned[row_node] = True
        if self.parts:
            node = np.concatenate([p[0] for p in self.parts])
            code = np.concatenate([p[1] for p in self.parts])
            order = np.concatenate([np.full(len(p[0]), p[2], np.int8) for p in self.parts])
            keep = np.concatenate([np.full(len(p[0]), p[3], bool) for p in self.parts])
            sel = (keep == kept[node]) & planned[node]
            node, code, order = node[sel], code[sel], order[sel]
        else:
            node, code, order = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8)
        n_common = np.where(kept, 0, len(self.common))
        missing = planned & (np.bincount(node, minlength=self.n) + n_common == 0)
        if missing.any():
            ids = np.flatnonzero(missing)
            base = self._intern(pa.array(["no keep rule applies", "kept"], pa.large_string()))
            node = np.concatenate([node, ids])
            code = np.concatenate([code, base + kept[ids].astype(np.int64)])
            order = np.concatenate([order, np.full(len(ids), 99, np.int8)])
        srt = np.argsort(node, kind="stable")
        node, code, order = node[srt], code[srt], order[srt]
        # Cap each rule's reasons per node, counting the rest.
        grp = np.r_[True, (node[1:] != node[:-1]) | (order[1:] != order[:-1])] if len(node) else np.zeros(0, bool)
        starts = np.flatnonzero(grp)
        sizes = np.diff(np.r_[starts, len(node)])
        if len(sizes) and sizes.max() > CAP + 1:
            rank = np.arange(len(node)) - np.repeat(starts, sizes)
            keep_row = rank < CAP
            keep_row[starts[sizes == CAP + 1] + CAP] = True   # one more is shown, not counted
            over = sizes > CAP + 1
            pos = starts[over] + CAP   # the (CAP+1)th reason becomes "… and N more"
            base = self._intern(pa.array([f"… and {k - CAP} more" for k in sizes[over]], pa.large_string()))
            code = code.copy()
            code[pos] = base + np.arange(len(pos))
            keep_row[pos] = True
            node, code = node[keep_row], code[keep_row]
        # per node: [common notes if deleted] + its own; then gathered in row order
        own = np.bincount(node, minlength=self.n)
        own_start = np.r_[0, np.cumsum(own)[:-1]]
        cnt = own[row_node] + n_common[row_node]
        offsets = np.zeros(len(row_node) + 1, np.int64)
        np.cumsum(cnt, out=offsets[1:])
        total = int(offsets[-1])
        codes = np.empty(total, np.int64)
        c_rows = np.flatnonzero(n_common[row_node] > 0)
        for k, c in enumerate(self.common):
            codes[offsets[c_rows] + k] = c
        o = own[row_node]
        rep = np.repeat(np.arange(len(row_node)), o)          # the row of each own reason
        within = np.arange(int(o.sum())) - np.repeat(np.cumsum(o) - o, o)
        codes[(offsets[:-1] + n_common[row_node])[rep] + within] = code[own_start[row_node][rep] + within]
        table = pa.concat_arrays(self.table) if self.table else pa.array([], pa.large_string())
        values = table.take(pa.array(codes)).cast(pa.string())
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), pa.int32()), values)


# ------------------------------------------------------------------ evaluation

def _references(df: pd.DataFrame, image_col: str, matcher: RegistryMatcher, with_ids: bool) -> pd.DataFrame:
    """(repository, tag, digest, text) per thing an image reference can keep: by tag, by digest."""
    images = df[image_col].dropna()
    # References into other hosts keep a same-named repository's image too (fail closed), saying so.
    m = pd.concat([match_images(images, matcher).assign(host=None), other_host_images(images, matcher)],
                  ignore_index=True).astype(object)
    j = pd.DataFrame({"image": df[image_col].to_numpy(dtype=object), "text": df["_text"].to_numpy(dtype=object),
                      **({"image_id": df["image_id"].to_numpy(dtype=object)} if with_ids else {})})
    j = j.merge(m, on="image", how="left" if with_ids else "inner")
    foreign = j["host"].notna().to_numpy()
    if foreign.any():
        j.loc[foreign, "text"] = (j.loc[foreign, "text"].astype(str) + ", by name: host " + j.loc[foreign, "host"].astype(str)
                                  + f" is not {matcher.registry_url} (add it to registry.aliases if it is)")
    out = [j.loc[j["repository"].notna(), ["repository", "tag", "digest", "text"]]]
    if with_ids and j["image_id"].notna().any():
        ids = _image_id_refs(j["image_id"], matcher)
        k = j.merge(ids, on="image_id", how="inner")
        # the digest a pod runs, under the repository of its image and of its imageID
        out.append(pd.DataFrame({"repository": k["repository"], "tag": None, "digest": k["id_digest"], "text": k["text"]}))
        out.append(pd.DataFrame({"repository": k["id_repository"], "tag": None, "digest": k["id_digest"], "text": k["text"]}))
    r = pd.concat(out, ignore_index=True).astype(object)
    return r[r["repository"].notna()].reset_index(drop=True)


def _subject_tags(tags: pd.DataFrame) -> pa.Array:
    """The subject digest a tag names (`sha256-<hex>` fallback index, cosign `.sig`/`.att`/`.sbom`)."""
    t = _strings(tags["tag"])
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


def evaluate(tables: dict[str, pd.DataFrame | None], meta: dict[str, Any], config: RegsweepConfig) -> pd.DataFrame:
    """The plan (PLAN schema) for one snapshot under one policy: pure, deterministic."""
    now_us = int(snapshot_now(meta).timestamp() * US)
    cleanup = config.cleanup
    tags = tables.get("tags")
    if tags is None:
        tags = pd.DataFrame({"repository": pd.Series(dtype=object), "tag": pd.Series(dtype=object),
                             "digest": pd.Series(dtype=object), "gone": pd.Series(dtype=bool)})
    tags = tags[~tags["gone"].astype(bool).to_numpy() & tags["digest"].notna().to_numpy()].reset_index(drop=True)
    problems = snapshot_problems(meta, tables, config)
    matcher = RegistryMatcher(config.registry.url, config.registry.aliases)

    refs = {}
    if not problems and not cleanup.disableKubernetesBasedPolicy and tables.get("workloads") is not None:
        wl = tables["workloads"]
        wl = wl[~wl["finished"].astype(bool)]
        wl = wl.assign(_text=("in use: " + wl["context"] + "/" + wl["namespace"] + "/" + wl["kind"] + "/" + wl["name"]
                              + " " + wl["container_type"].map(_CTYPE).fillna("container") + " " + wl["container"]))
        refs[IN_USE] = _references(wl, "image", matcher, with_ids=True)
    if not problems and config.helm.enabled and tables.get("helm") is not None:
        h = tables["helm"]
        h = h.assign(_text=("helm: " + h["context"] + "/" + h["namespace"] + "/" + h["release"] + " revision "
                            + h["revision"].astype(str) + " (" + h["status"].fillna("unknown").astype(str) + ")"))
        refs[HELM] = _references(h, "image", matcher, with_ids=False)
    nodes = _Nodes(tables, tags, [r["digest"] for r in refs.values()] + [_subject_tags(tags)],
                   [r["repository"] for r in refs.values()], [r["tag"] for r in refs.values()])
    if problems:
        return _rows(nodes, np.ones(nodes.n, bool), np.zeros(nodes.n, bool), None, problems)

    R = _Reasons(nodes.n)
    kept = np.zeros(nodes.n, bool)
    followers = _followers(nodes, nodes.x_dig[-1])
    kind = nodes.kind
    primary = (kind <= K_ARTIFACT) & ~followers

    for i, (order, r) in enumerate(refs.items()):
        node = np.concatenate([nodes.find(nodes.x_repo[i], nodes.x_dig[i]),
                               nodes.find_tag(nodes.x_repo[i], nodes.x_tag[i])])
        text = np.concatenate([r["text"].to_numpy(dtype=object)] * 2)
        ok = node >= 0
        uniq = pd.DataFrame({"node": node[ok], "text": text[ok]}).drop_duplicates().sort_values(["node", "text"])
        kept[uniq["node"].to_numpy()] = True
        R.add(uniq["node"].to_numpy(), uniq["text"].to_numpy(dtype=object), order)
        R.add_common("not in use in any scanned workload" if order == IN_USE else "in no stored Helm revision")

    link_node = nodes.find(nodes.l_repo, nodes.l_dig)
    ok = link_node >= 0
    ok[ok] = primary[link_node[ok]]
    # A revision that cannot name a commit (`main`, `unknown`, `${GIT_COMMIT}`) links to none:
    # the image is unlinked, not "linked to a commit that is gone" (which git rules never keep).
    ok &= _commit_ids(nodes.links_commit)
    if not cleanup.disableGitHistoryBasedPolicy and tables.get("git_commits") is not None and ok.any():
        out = evaluate_git(tables["git_refs"], tables["git_commits"], link_node[ok],
                           _strings(nodes.links_commit).filter(pa.array(ok)), nodes.repo_code,
                           cleanup.effective_keep_policies, now_us)
        kept[out.kept] = True
        R.add(out.keep_node, out.keep_text, GIT)
        for note_nodes, codes, table in out.notes:
            R.add_coded(note_nodes, codes, table, GIT, keep=False)

    if not cleanup.disableBuiltWithinLastNHoursPolicy:
        _fresh(nodes, kept, R, primary, now_us, cleanup.keepImagesBuiltWithinLastNHours)

    _unlinked(nodes, kept, R, primary, link_node[ok], cleanup.unlinkedImages)

    always = (kind >= K_UNKNOWN) & ~followers
    missing = always & (kind == K_MISSING)
    unknown = always & ~missing
    R.add(np.flatnonzero(missing), "manifest not in snapshot: kept", ALWAYS)
    ids = np.flatnonzero(unknown)
    R.add(ids, [f"unknown media type {nodes.media_type(i) or 'unknown'}: kept" for i in ids], ALWAYS)
    kept |= always

    _relatives(nodes, kept, R, followers)
    untagged = ~nodes.tagged & ~kept & (kind != K_MISSING)
    return _rows(nodes, kept, untagged, R)


def _commit_ids(commits) -> np.ndarray:
    """Which link values are a full or abbreviated (4+ hex digits, as git requires) commit id."""
    a = _strings(commits)
    if not len(a):
        return np.zeros(0, bool)
    return pc.match_substring_regex(a, _COMMIT_ID).fill_null(False).to_numpy(zero_copy_only=False)


def _followers(nodes: _Nodes, tag_subject_codes: np.ndarray) -> np.ndarray:
    """Nodes that belong to a subject (artifacts with `subject`, referrer indexes, tagged by subject)."""
    kind = nodes.kind
    fol = (kind == K_REFERRERS) | ((kind == K_ARTIFACT) & (nodes.subject_code >= 0))
    has = tag_subject_codes >= 0
    tn = nodes.tag_node[has]
    fol[tn] = True
    fill = nodes.subject_code[tn] < 0
    nodes.subject_code[tn[fill]] = tag_subject_codes[has][fill]
    nodes.subject[tn[fill]] = nodes.find(nodes.repo_code[tn[fill]], tag_subject_codes[has][fill])
    return fol


def _image_id_refs(image_ids: pd.Series, matcher: RegistryMatcher) -> pd.DataFrame:
    """(image_id, repository or None, digest) for each distinct pod status imageID."""
    rows = []
    for iid in pd.unique(image_ids.dropna()):
        d = digest_of_image_id(iid)
        if d is None:
            continue
        s = str(iid).split("://", 1)[-1]
        # parse the name alone: few distinct names (one per repository), so the matcher's cache hits
        ref = matcher.parse(s.rsplit("@", 1)[0]) if "@" in s else None
        rows.append((iid, ref.repository if ref else None, d))
    return pd.DataFrame(rows, columns=["image_id", "id_repository", "id_digest"], dtype=object)


def _age_texts(age_us: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """35m, 5h, 3d — as codes into the distinct formatted values."""
    minutes = np.maximum(age_us, 0) // (60 * US)
    key = np.where(minutes < 48 * 60, minutes, -(minutes // (24 * 60)) - 1)
    codes, uniq = pd.factorize(key)
    fmt = [format_duration(int(k) * 60 * US) if k >= 0 else f"{-(int(k) + 1)}d" for k in uniq]
    return codes, fmt


def _fresh(nodes: _Nodes, kept, R: _Reasons, primary, now_us: int, hours: float) -> None:
    window = int(hours * 3600 * US)
    have = primary & (nodes.created != NAT)
    fresh = have & (nodes.created > now_us - window)
    limit = format_duration(window)
    for ids, suffix, keep in ((np.flatnonzero(fresh), f" ago (< {limit})", True),
                              (np.flatnonzero(have & ~fresh), f" ago (not within {limit})", False)):
        if len(ids):
            codes, fmt = _age_texts(now_us - nodes.created[ids])
            R.add_coded(ids, codes, [f"built {f}{suffix}" for f in fmt], FRESH, keep=keep)
    kept[fresh] = True
    R.add(np.flatnonzero(primary & ~have), "build time unknown", FRESH, keep=False)


def _unlinked(nodes: _Nodes, kept, R: _Reasons, primary, link_nodes, mode: str) -> None:
    """Tagged images linked to no commit (their own, their platforms' or their index's)."""
    linked = np.zeros(nodes.n, bool)
    linked[link_nodes] = True
    parent, child, _ = nodes.edges
    family = linked.copy()
    family[parent[linked[child]]] = True
    family[child[linked[parent]]] = True
    ids = np.flatnonzero(nodes.tagged & primary & ~family)
    if mode == "keep":
        R.add(ids, "unlinked: no revision annotation, label or tag pattern links it to a commit", UNLINKED)
        kept[ids] = True
    else:
        R.add(ids, "unlinked (unlinkedImages: delete)", UNLINKED, keep=False)


def _relatives(nodes: _Nodes, kept, R: _Reasons, followers) -> None:
    """Whole indexes, their platforms and referrers go with what is kept."""
    parent, child, platform = nodes.edges
    subject = nodes.subject
    # An index with a platform kept by a rule is kept whole (nested indexes too).
    up = kept.copy()
    while True:
        e = np.flatnonzero(up[child] & ~up[parent])
        if not len(e):
            break
        R.add(parent[e], [f"index of kept platform {d}" + (f" ({p})" if isinstance(p, str) else "")
                          for d, p in zip(nodes.digests(child[e]).to_pylist(), platform[e])], RELATIVE)
        up[parent[e]] = True
    kept |= up
    while True:
        e = np.flatnonzero(kept[parent] & ~kept[child])
        f = np.flatnonzero(followers & (subject >= 0))
        f = f[kept[subject[f]] & ~kept[f]]
        if not len(e) and not len(f):
            break
        R.add(child[e], _texts("platform of kept index ", nodes.digests(parent[e])), RELATIVE)
        R.add(f, _texts("referrer of kept ", nodes.digests(subject[f])), RELATIVE)
        kept[child[e]] = True
        kept[f] = True
    orphans = np.flatnonzero(followers & (subject < 0))
    if len(orphans):
        codes = nodes.subject_code[orphans]
        names = nodes.DIG.take(pa.array(np.maximum(codes, 0))) if len(nodes.DIG) else pa.nulls(len(codes), pa.large_string())
        names = pc.if_else(pa.array(codes >= 0), names, pa.scalar("unknown", pa.large_string()))
        R.add(orphans, _texts("subject ", names, " not in snapshot: kept"), RELATIVE)
        kept[orphans] = True
    # why the rest go (notes only reach deleted nodes)
    gone = ~kept[child]
    R.add(child[gone], _texts("platform of deleted index ", nodes.digests(parent[gone])), RELATIVE, keep=False)
    f = np.flatnonzero(followers & (subject >= 0) & ~kept)
    R.add(f, _texts("referrer of deleted ", nodes.digests(subject[f])), RELATIVE, keep=False)


def _rank(dictionary: pa.Array) -> np.ndarray:
    """Sort rank of each dictionary entry (for ordering rows without sorting strings per row)."""
    order = pc.sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _rows(nodes: _Nodes, kept: np.ndarray, untagged: np.ndarray, R: _Reasons | None,
          problems: list[str] | None = None) -> pd.DataFrame:
    """One row per tag plus untagged relatives deleted with their subject, ordered by
    (repository, tag, digest), untagged rows last within their repository."""
    extra = np.flatnonzero(untagged)
    row_node = np.concatenate([nodes.tag_node, extra]).astype(np.int64)
    tag_code = np.concatenate([nodes.t_tag, np.full(len(extra), -1, np.int64)])
    repo_rank = _rank(nodes.REPO)[nodes.repo_code[row_node]] if len(row_node) else np.zeros(0, np.int64)
    tag_rank = np.where(tag_code >= 0, _rank(nodes.TAG)[np.maximum(tag_code, 0)], len(nodes.TAG)) \
        if len(nodes.TAG) else np.zeros(len(row_node), np.int64)
    dig_rank = np.zeros(len(row_node), np.int64)
    if len(extra):
        # untagged rows: ordered by digest string among themselves
        ex = np.arange(len(nodes.tag_node), len(row_node))
        d = nodes.digests(row_node[ex])
        dig_rank[ex[pc.sort_indices(d).to_numpy()]] = np.arange(len(ex))
    order = np.lexsort((dig_rank, tag_rank, repo_rank))
    row_node, tag_code = row_node[order], tag_code[order]
    if problems is not None:
        reasons = pa.ListArray.from_arrays(pa.array(np.arange(len(row_node) + 1) * len(problems), pa.int32()),
                                           pa.array(problems * len(row_node), pa.string()))
    else:
        reasons = R.build(kept, row_node)
    kind = np.asarray(KINDS, dtype=object)[np.where(nodes.kind == K_MISSING, K_UNKNOWN, nodes.kind)[row_node]]
    created = nodes.created[row_node]
    table = pa.table({
        "repository": nodes.REPO.take(pa.array(nodes.repo_code[row_node])).cast(pa.string()),
        "tag": (nodes.TAG.take(pa.array(np.maximum(tag_code, 0), mask=tag_code < 0)).cast(pa.string())
                if len(nodes.TAG) else pa.nulls(len(row_node), pa.string())),
        "digest": nodes.digests(row_node).cast(pa.string()),
        "kind": pa.array(kind, pa.string()),
        "action": pa.array(np.where(kept[row_node], "keep", "delete"), pa.string()),
        "reasons": reasons,
        "size": pa.array(nodes.size[row_node], pa.int64()),
        "created": pa.array(np.where(created == NAT, 0, created), pa.int64(), mask=created == NAT).cast(PLAN.field("created").type),
    }, schema=PLAN)
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
