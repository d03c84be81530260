"""The snapshot's manifests as integer nodes: every (repository, digest) with its manifest facts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.plan.codes import NAT, encode, encode_digests, first_unique, to_us

KINDS = ["image", "index", "artifact", "referrers-index", "unknown", "missing"]
K_IMAGE, K_INDEX, K_ARTIFACT, K_REFERRERS, K_UNKNOWN, K_MISSING = range(len(KINDS))


@dataclass(frozen=True)
class Columns:
    """One table's references as codes into the snapshot's dictionaries (-1: null)."""

    repository: np.ndarray
    digest: np.ndarray
    tag: np.ndarray | None = None      # None: the table names no tags


@dataclass(frozen=True)
class Encoded:
    """What the evaluation's tables name, as codes, by role."""

    tags: Columns                      # the live tags, row for row
    links: Columns                     # the LINKS rows (their commits: Nodes.links_commit)
    rule_refs: dict[int, Columns]      # per reference rule (in use, Helm, seen): what its references name
    subject_tags: np.ndarray           # per tag, the digest code of the subject its name gives; -1 for none


class Nodes:
    """Every (repository, digest) of the snapshot as an integer id, with its manifest facts.

    Repositories, digests and tags are dictionary-encoded once (one hash pass per domain over
    every table: `repository_names`, `digest_names`, `tag_names` are the distinct values, codes
    index them); a node is the int64 key repo_code * n_digests + digest_code, ids in key order.
    """

    def __init__(self, tables: dict, tags: pd.DataFrame, rule_refs: dict[int, pd.DataFrame], subject_tags):
        """`tags`: the live tags; `rule_refs`: per reference rule, the (repository, digest, tag)
        its references name; `subject_tags`: per tag, the subject digest its name gives."""
        man = _frame(tables.get("manifests"), ("repository", "digest", "media_type", "kind", "size", "created", "subject",
                                                "problem"))
        ch = _frame(tables.get("children"), ("repository", "index_digest", "child_digest", "platform"))
        lk = _frame(tables.get("links"), ("repository", "digest", "commit"))
        refs = list(rule_refs.values())
        (t_dig, m_dig, m_subj, c_idx, c_child, l_dig, *r_dig, subj), self.digest_names = encode_digests(
            tags["digest"], man["digest"], man["subject"], ch["index_digest"], ch["child_digest"], lk["digest"],
            *(r["digest"] for r in refs), subject_tags)
        (t_repo, m_repo, c_repo, l_repo, *r_repo), self.repository_names = encode(
            tags["repository"], man["repository"], ch["repository"], lk["repository"], *(r["repository"] for r in refs))
        (t_tag, *r_tag), self.tag_names = encode(tags["tag"], *(r["tag"] for r in refs))
        self.encoded = Encoded(Columns(t_repo, t_dig, t_tag), Columns(l_repo, l_dig),
                               {order: Columns(*codes) for order, codes in zip(rule_refs, zip(r_repo, r_dig, r_tag))},
                               subj)
        self.links_commit = lk["commit"]
        self.n_digests = nd = max(len(self.digest_names), 1)
        mkey = m_repo * nd + m_dig
        tkey = t_repo * nd + t_dig
        self.keys = first_unique(np.sort(np.concatenate([mkey, tkey]), kind="stable"))
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
        self.manifest_row = np.full(n, -1, np.int64)   # the node's row in MANIFESTS; -1 for none
        self.manifest_row[m_node] = np.arange(len(mkey))
        self.size = np.zeros(n, np.int64)
        self.size[m_node] = pd.to_numeric(man["size"]).fillna(0).to_numpy(np.int64)
        self.created = np.full(n, NAT, np.int64)
        self.pushed = np.full(n, NAT, np.int64)   # the registry's own push time (older snapshots: none)
        if len(mkey):
            self.created[m_node] = to_us(man["created"])
            if "pushed" in man:
                self.pushed[m_node] = to_us(man["pushed"])
        # why build time / revision could not be read (None: fine); snapshots before the column had none
        self.problem = np.full(n, None, object)
        if "problem" in man.columns and len(mkey):
            self.problem[m_node] = man["problem"].astype(object).where(man["problem"].notna(), None).to_numpy()
        self.subject_code = np.full(n, -1, np.int64)
        has = m_subj >= 0
        self.subject_code[m_node[has]] = m_subj[has]
        self.subject = np.full(n, -1, np.int64)   # the subject's node (same repository); -1 absent
        self.subject[m_node[has]] = self.find(m_repo[has], m_subj[has])
        self.tag_node = self.find(t_repo, t_dig)
        self.tagged = np.zeros(n, bool)
        self.tagged[self.tag_node] = True
        self._man = man
        parent, child = self.find(c_repo, c_idx), self.find(c_repo, c_child)
        ok = (parent >= 0) & (child >= 0)
        platform = ch["platform"].astype(object).where(ch["platform"].notna(), None).to_numpy()
        self.edges = (parent[ok], child[ok], platform[ok])
        # (repository, tag) → node, for references by tag
        self.n_tag_names = max(len(self.tag_names), 1)
        tk = t_repo * self.n_tag_names + t_tag
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
            key = rc[again] * self.n_digests + dc[again]
            pos = np.minimum(np.searchsorted(self.keys, key), self.n - 1)
            found = self.keys[pos] == key
            out[again[found]] = pos[found]
        return out

    def find_tag(self, repo_codes, tag_codes) -> tuple[np.ndarray, np.ndarray]:
        """Every node a (repository code, tag code) pair names, as (query index, node id) pairs.

        A pair may name several nodes: a tag the registry listed on two digests within one
        snapshot (it moved between two reads) has a row for each, and a reference by that tag
        must keep every one of them (fail closed). Queries that name none are left out."""
        rc, tc = np.asarray(repo_codes, np.int64), np.asarray(tag_codes, np.int64)
        key = np.where((rc >= 0) & (tc >= 0), rc * self.n_tag_names + tc, -1)
        lo = np.searchsorted(self._tag_keys, key, side="left")
        hi = np.searchsorted(self._tag_keys, key, side="right")
        count = np.where(key >= 0, hi - lo, 0)
        query = np.repeat(np.arange(len(key), dtype=np.int64), count)
        # positions lo, lo+1, ..., hi-1 of each query, flattened
        start = np.repeat(lo - (np.cumsum(count) - count), count)
        return query, self._tag_nodes[start + np.arange(len(query), dtype=np.int64)]

    def digests(self, ids) -> pa.Array:
        """The digests of nodes (large strings)."""
        return self.digest_names.take(pa.array(self.dig_code[np.asarray(ids, np.int64)]))

    def repositories(self, ids) -> pa.Array:
        """The repositories of nodes, as plan columns hold them (strings)."""
        return self.repository_names.take(pa.array(self.repo_code[np.asarray(ids, np.int64)])).cast(pa.string())

    def media_type(self, i: int) -> str | None:
        r = self.manifest_row[i]
        return None if r < 0 else self._man["media_type"].iloc[r]

    def artifact_type(self, i: int) -> str | None:
        """The manifest's artifact type (`artifactType`, else a config type no image has); None if not read."""
        r = self.manifest_row[i]
        if r < 0 or "artifact_type" not in self._man.columns:
            return None
        value = self._man["artifact_type"].iloc[r]
        return value if isinstance(value, str) else None


def _frame(df, columns) -> pd.DataFrame:
    return df if df is not None else pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
