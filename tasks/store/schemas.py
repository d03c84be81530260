"""The Parquet tables of snapshots and plans, one explicit pyarrow schema each.

These schemas are the contract between the extractors (which write them), the evaluation
(which joins them) and anyone reading the store with pandas, DuckDB or Spark. Timestamps are
UTC, microsecond precision. Digests are `sha256:<hex>` strings.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")


def from_rows(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    """Build a table from row tuples in schema order, column by column (no per-row dicts)."""
    cols = list(zip(*rows)) if rows else [() for _ in schema.names]
    return pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(cols, schema)], schema=schema)


def _text(*names: str) -> list[pa.Field]:
    """String columns that are never null."""
    return [pa.field(n, pa.string(), nullable=False) for n in names]


# --- registry source -------------------------------------------------------------------------

#: One row per (repository, tag). `gone` marks a tag listed but deleted before it could be read.
TAGS = pa.schema([
    *_text("repository", "tag"),
    pa.field("digest", pa.string()),            # null when gone
    pa.field("gone", pa.bool_(), nullable=False),
])

#: One row per (repository, digest): every manifest reached from a tag, an index or a referrer.
#: kind: image | index | artifact | referrers-index | unknown
MANIFESTS = pa.schema([
    *_text("repository", "digest", "media_type", "kind"),
    pa.field("artifact_type", pa.string()),
    pa.field("size", pa.int64(), nullable=False),      # manifest + config + layers; index: + children
    pa.field("created", TS),                           # build time (annotation, else config), if trustworthy
    pa.field("revision", pa.string()),                 # org.opencontainers.image.revision
    pa.field("subject", pa.string()),                  # digest this artifact refers to (signature, SBOM, fallback index)
    pa.field("pushed", TS),                            # the registry's own push time, where its API reports one
    pa.field("last_pulled", TS),                       # the registry's last pull, where reported: information only, never a rule
    # why build time / revision could not be read (config blob 404, unparsable manifest or config,
    # a platform manifest missing); null when fine. Such an image counts as fresh: it is kept.
    pa.field("problem", pa.string()),
])

#: Index → platform manifest edges.
CHILDREN = pa.schema([
    *_text("repository", "index_digest", "child_digest"),
    pa.field("platform", pa.string()),                 # os/arch[/variant]
])

#: Digest → commit links. source: annotation | label | tag-pattern. commit may be abbreviated.
LINKS = pa.schema(_text("repository", "digest", "commit", "source"))

#: What each manifest stores: its own body (kind manifest, blob = digest), its config and its layers,
#: one row per distinct blob. Shared base layers appear under every manifest that uses them; count
#: each blob digest once for what the registry really stores (tasks/snapshot/footprint.py).
BLOBS = pa.schema([
    *_text("repository", "digest", "blob", "kind"),   # kind: manifest | config | layer
    pa.field("size", pa.int64(), nullable=False),
])

# --- kubernetes source -----------------------------------------------------------------------

#: One row per image reference in a workload. container_type: containers | initContainers |
#: ephemeralContainers. image_id: resolved digest from pod status, if known. finished: a Job
#: whose Complete or Failed condition is True (its images are not "in use").
WORKLOADS = pa.schema([
    *_text("context", "namespace", "kind", "name", "container", "container_type", "image"),
    pa.field("image_id", pa.string()),
    pa.field("finished", pa.bool_(), nullable=False),
])

# --- helm source -----------------------------------------------------------------------------

#: One row per (release revision, image referenced by its rendered manifest). driver: secret | configmap.
HELM = pa.schema([
    *_text("context", "namespace", "release"),
    pa.field("revision", pa.int32(), nullable=False),
    pa.field("status", pa.string()),
    pa.field("chart", pa.string()),
    pa.field("app_version", pa.string()),
    pa.field("last_deployed", TS),
    *_text("driver", "image"),
])

# --- keep-list source (tasks/sources/keeplists.py) ------------------------------------------

#: One row per image reference on a keep list (`keep.lists`): the list as configured (an absolute
#: path or an fsspec URL), the line it is on (1-based) and the reference as written there.
KEEP_LIST = pa.schema([
    *_text("file"),
    pa.field("line", pa.int32(), nullable=False),
    *_text("image"),
])

# --- git source ------------------------------------------------------------------------------

#: Branches and tags. kind: branch | tag. date: branch head committer date, annotated tag's
#: tagger date, lightweight tag's commit date.
GIT_REFS = pa.schema([
    *_text("name", "kind", "commit"),
    pa.field("date", TS, nullable=False),
    pa.field("annotated", pa.bool_(), nullable=False),
])

#: The commit graph reachable from those refs.
GIT_COMMITS = pa.schema([
    *_text("commit"),
    pa.field("committed", TS, nullable=False),
    pa.field("parents", pa.list_(pa.string()), nullable=False),
])

#: Tables no keep rule reads (byte figures only): the plan's evaluation does not load them, and a
#: snapshot taken before regsweep wrote them is still complete (its byte figures are unknown).
INFORMATIONAL = frozenset({"blobs"})

#: Which tables each source writes.
SOURCE_TABLES: dict[str, dict[str, pa.Schema]] = {
    "registry": {"tags": TAGS, "manifests": MANIFESTS, "children": CHILDREN, "links": LINKS, "blobs": BLOBS},
    "kubernetes": {"workloads": WORKLOADS},
    "helm": {"helm": HELM},
    "git": {"git_refs": GIT_REFS, "git_commits": GIT_COMMITS},
    "keeplist": {"keep_list": KEEP_LIST},
}

# --- after every source (tasks/snapshot/missing.py) ------------------------------------------------

#: Images in use that the registry does not have: one row per place (a workload container, a Helm
#: revision, a keep-list line) naming, in this registry (its host or an alias), a tag or digest the
#: registry source did not list. source: kubernetes | helm | keeplist. where: the workload
#: (`context/namespace/Kind/name <type> container`), the Helm revision (`context/namespace/release
#: revision N (status)`) or `file:line`. Written when the registry source completed, from the
#: sources that completed; informational: no keep rule reads it.
MISSING = pa.schema([
    *_text("source", "where", "image", "repository"),
    pa.field("tag", pa.string()),                      # the tag the reference names; null when it names a digest only
    pa.field("digest", pa.string()),                   # the digest it names, if any (then the tag is not pulled)
    *_text("why"),
])

# --- history (tasks/plan/history_rules.py): what earlier snapshots saw, derived from them at plan time ---------

#: Image references earlier snapshots saw, each at its latest sighting within the window.
#: source: kubernetes (a workload, not a finished Job) | helm (a stored revision); text: the plan's reason.
SEEN_IN_USE = pa.schema([
    *_text("image"),
    pa.field("image_id", pa.string()),                 # pod status imageID, if that snapshot knew it
    *_text("source"),
    pa.field("seen_at", TS, nullable=False),           # that snapshot's created_at
    *_text("snapshot", "text"),
])

#: The first snapshot that listed each (repository, digest) with no trustworthy build time.
FIRST_SEEN = pa.schema([
    *_text("repository", "digest"),
    pa.field("first_seen", TS, nullable=False),        # that snapshot's created_at
    *_text("snapshot"),
])

#: The store's cache of FIRST_SEEN (`cache/first-seen.parquet`), per registry (`registry_key`);
#: the schema metadata `snapshots` lists the snapshot ids folded in.
FIRST_SEEN_CACHE = pa.schema([*_text("registry"), *FIRST_SEEN])

# --- plan ------------------------------------------------------------------------------------

#: One row per (repository, tag) of the snapshot (plus untagged relatives that go with a
#: deleted subject). action: keep | delete. reasons: every rule that kept it, or why none did.
PLAN = pa.schema([
    *_text("repository"),
    pa.field("tag", pa.string()),                      # null for an untagged relative
    *_text("digest", "kind", "action"),
    pa.field("reasons", pa.list_(pa.string()), nullable=False),
    pa.field("size", pa.int64(), nullable=False),
    pa.field("created", TS),
])

#: Append-only sweep journal. event: planned | started | done | skipped | failed
JOURNAL = pa.schema([
    pa.field("time", TS, nullable=False),
    *_text("plan_id", "repository"),
    pa.field("target", pa.string(), nullable=False),   # digest or tag being deleted
    *_text("event"),
    pa.field("detail", pa.string()),
])

#: What `regsweep restore` needs of each target a sweep is about to delete (`restore/<plan id>/`,
#: tasks/sweep/restore.py), written durable before its DELETE: the manifest as the registry served
#: it, the tags it carried, and the digests (same repository) deleted before it. target: the digest,
#: or the tag of a lone-tag deletion. No secret is ever in it: manifests are public content.
RESTORE = pa.schema([
    pa.field("time", TS, nullable=False),
    *_text("plan_id", "repository", "target", "digest", "media_type"),
    pa.field("body", pa.binary(), nullable=False),
    pa.field("tags", pa.list_(pa.string()), nullable=False),
    pa.field("parents", pa.list_(pa.string()), nullable=False),
])

# --- history (store caches, tasks/history/growth.py and tasks/history/whatif.py) ------------------------------

#: A snapshot's growth summary: one row per repository, and one with a null repository for the
#: whole registry (its unique bytes count a blob two repositories share once). unique_bytes is
#: null for a snapshot taken before regsweep recorded blobs.
HISTORY_SUMMARY = pa.schema([
    pa.field("repository", pa.string()),
    pa.field("tags", pa.int64(), nullable=False),
    pa.field("manifests", pa.int64(), nullable=False),
    pa.field("image_bytes", pa.int64(), nullable=False),
    pa.field("unique_bytes", pa.int64()),
])

#: Tags added, removed and moved (same tag, another digest) per repository between two snapshots.
HISTORY_DIFF = pa.schema([
    *_text("repository"),
    pa.field("added", pa.int64(), nullable=False),
    pa.field("removed", pa.int64(), nullable=False),
    pa.field("moved", pa.int64(), nullable=False),
])

#: Images a snapshot's in-use and Helm rules kept, with the first text that kept each.
NEEDED = pa.schema(_text("repository", "digest", "why"))
