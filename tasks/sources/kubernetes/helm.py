"""Helm source: every image in every stored release revision (the rollback targets).

Helm 3 stores one object per revision, labelled `owner=helm`, with `data.release` holding
helm/helm pkg/storage/driver/util.go `encodeRelease`: base64(gzip(json(release))).
- Secret driver (`type: helm.sh/release.v1`, `sh.helm.release.v1.<name>.v<rev>`): Secret data
  is bytes, so the API returns that base64 string base64-encoded once more.
- ConfigMap driver (`<name>.v<rev>`): `data.release` is the string itself.
Like Helm's `decodeRelease`, a payload without the gzip magic header is read uncompressed.

Images are taken from the release `manifest` and its hooks' manifests (rollbacks run hooks):
every mapping anywhere, in any kind including custom resources, whose `containers`,
`initContainers` or `ephemeralContainers` key holds a list of mappings with an `image`, and
every other `image` key with a text value (operators' fields, e.g. a Prometheus's
`spec.image`), except in a ConfigMap's or Secret's top-level data.
A revision that cannot be decoded is a `HelmError`: its images are unknown, so the snapshot
must be incomplete rather than silently missing a rollback target. Listing the objects is
tasks/sources/kubernetes/client.py's, as for the workload source.

Anyone who may create a Secret can store a "release", so decoding is bounded: the payload is
decompressed in a stream and refused past `helm.maxReleaseBytes` (a gzip bomb), and YAML merge
keys are resolved once per mapping, refused when they refer to themselves or would expand past
MAX_MERGE_EXPANSION entries (a merge-key "billion laughs"). Such a revision, like one that
exhausts the interpreter's recursion or memory, is a one-line HelmError naming it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import yaml

from tasks.common.errors import HelmError
from tasks.sources.kubernetes.client import CONFIGMAPS, SECRETS, Cluster, list_everywhere, list_objects
from tasks.common.progress import reporter
from tasks.common.units import parse_time

if TYPE_CHECKING:
    import pyarrow as pa

    from tasks.config.models import HelmConfig, KubernetesConfig, RegsweepConfig
    from tasks.store.store import Store

try:
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover
    from json import loads as _json_loads

try:
    from yaml.cyaml import CParser as _Parser
except ImportError:  # pragma: no cover  (PyYAML built without libyaml)
    class _Parser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer):
        def __init__(self, stream):
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)


class _Composer(_Parser, yaml.resolver.BaseResolver):
    """Composes nodes, resolving only merge keys: which type a scalar has does not matter here."""

    def __init__(self, stream):
        _Parser.__init__(self, stream)
        yaml.resolver.BaseResolver.__init__(self)


_Composer.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
_YAML_LOADER = _Composer
_MERGE_TAG = "tag:yaml.org,2002:merge"
GZIP_MAGIC = b"\x1f\x8b\x08"
SECRET_TYPE = "helm.sh/release.v1"
OWNER_SELECTOR = "owner=helm"
CONTAINER_KEYS = frozenset(("containers", "initContainers", "ephemeralContainers"))
_DATA_KEYS = frozenset(("data", "stringData", "binaryData"))
_DOC_SPLIT = re.compile(r"^---(?=[ \t]|\r?$)", re.M)
_SECRET_NAME = re.compile(r"^sh\.helm\.release\.v1\.(?P<name>.+)\.v(?P<rev>\d+)$")
_CM_NAME = re.compile(r"^(?P<name>.+)\.v(?P<rev>\d+)$")
#: helm.maxReleaseBytes's default: no chart's release record comes near it.
DEFAULT_MAX_RELEASE_BYTES = 64 * 2**20
#: Key/value pairs YAML merge keys may produce in one release, counted as a loader that expands
#: them would build them: real charts use a handful; 30 doubling merges in 1 KB would make 2^30.
MAX_MERGE_EXPANSION = 100_000
#: Merge keys within merge keys: real charts nest a few; deeper is refused, not recursed into.
MAX_MERGE_DEPTH = 64


@dataclass
class Stored:
    """One stored revision before decoding."""

    context: str
    namespace: str
    release: str
    revision: int | None
    driver: str          # secret | configmap
    object_name: str
    payload: str | None
    status: str | None = None   # Helm's `status` label (deployed, superseded, failed, ...)


# --- decoding -----------------------------------------------------------------------------------

class _Undecodable(Exception):
    pass


def decode_payload(payload: str, driver: str, max_bytes: int = DEFAULT_MAX_RELEASE_BYTES) -> dict:
    """The release JSON from an object's `data.release` as the API returns it; more than
    `max_bytes` of (decompressed) release JSON is refused, without ever holding more."""
    try:
        text = payload
        if driver == "secret":  # Secret data is bytes: the API wraps Helm's string in base64
            text = base64.b64decode(_compact(payload), validate=True).decode("ascii")
        raw = base64.b64decode(_compact(text), validate=True)
        del text
        raw = _gunzip(raw, max_bytes) if raw[:3] == GZIP_MAGIC else raw
        if len(raw) > max_bytes:
            raise _TooLarge(max_bytes)
        rel = _json_loads(raw)
    except (binascii.Error, UnicodeDecodeError) as e:
        raise _Undecodable(f"not base64 ({e})") from None
    except (OSError, EOFError, zlib.error) as e:
        raise _Undecodable(f"corrupt gzip data ({e})") from None
    except ValueError as e:
        raise _Undecodable(f"not release JSON ({e})") from None
    if not isinstance(rel, dict):
        raise _Undecodable("not a release object")
    return rel


class _TooLarge(_Undecodable):
    def __init__(self, max_bytes: int):
        super().__init__(f"larger than {_size(max_bytes)} once decompressed (helm.maxReleaseBytes); "
                         "a release this large is not Helm's: check who created this object")


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n:,} bytes"


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    """gzip members decompressed in a stream (as Go's gzip reader, which Helm uses, reads them),
    raising _TooLarge as soon as the output would pass `max_bytes`: a bomb never gets to
    allocate more than the cap."""
    out: list[bytes] = []
    total = 0
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = d.decompress(data, max_bytes - total + 1)
        total += len(chunk)
        if total > max_bytes:
            del chunk, out   # not kept alive by the traceback
            raise _TooLarge(max_bytes)
        out.append(chunk)
        if not d.eof:
            raise _Undecodable("corrupt gzip data (the stream ends before its end marker)")
        data = d.unused_data
        if data and data[:2] != GZIP_MAGIC[:2]:
            raise _Undecodable("corrupt gzip data (trailing bytes after the compressed release)")
    return out[0] if len(out) == 1 else b"".join(out)


def _compact(s: str) -> str:
    # Go's base64 decoder skips line breaks; Python's strict mode does not.
    return s.replace("\n", "").replace("\r", "") if "\n" in s or "\r" in s else s


class ManifestImages:
    """Images referenced in rendered manifests, each distinct document parsed once."""

    def __init__(self) -> None:
        self._cache: dict[bytes, tuple[str, ...]] = {}

    def __call__(self, manifest: str, budget: "MergeBudget | None" = None) -> list[str]:
        """Images of every document of `manifest`; merge keys spend `budget` (one release's,
        shared by its manifest and its hooks'; a fresh one when None). Raises _Unreadable."""
        budget = budget if budget is not None else MergeBudget()
        out: list[str] = []
        for doc in _DOC_SPLIT.split(manifest):
            if "image" not in doc:
                continue  # no `image` key can hide in a document that never spells it
            key = hashlib.blake2b(doc.encode(), digest_size=16).digest()
            images = self._cache.get(key)
            if images is None:
                found: list[str] = []
                # Walking the composed node graph (built in C by libyaml) is about twice as
                # fast as constructing Python objects, and tolerates unknown tags.
                for root in yaml.compose_all(doc, Loader=_YAML_LOADER):
                    _walk(root, found, _Merges(budget))
                images = self._cache[key] = tuple(found)
            out.extend(images)
        return out


class _Unreadable(Exception):
    """A manifest that is valid YAML but that regsweep refuses to expand."""


class MergeBudget:
    """How many more key/value pairs YAML merge keys may produce (MAX_MERGE_EXPANSION per release)."""

    def __init__(self, limit: int = MAX_MERGE_EXPANSION):
        self.left = limit
        self.limit = limit

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise _Unreadable(f"YAML merge keys (<<) expand to more than {self.limit:,} entries")


class _Merges:
    """Merge keys (`<<: *anchor`) of one composed document, resolved once per mapping.

    A mapping's pairs are its own plus those of each mapping merged into it, each distinct
    (key node, value node) pair once, so that merges of merges cost what the document holds,
    not what expanding them would build; what expanding them would build is still what the
    budget is charged, so a document no YAML loader could expand is refused rather than read.
    A mapping merged into itself, directly or not, is refused.
    """

    def __init__(self, budget: MergeBudget):
        self._budget = budget
        self._done: dict[int, tuple[tuple[yaml.Node, yaml.Node], ...]] = {}
        self._expanded: dict[int, int] = {}   # pairs expanding the mapping's merges would build
        self._open: set[int] = set()

    def pairs(self, node: yaml.MappingNode, depth: int = 0) -> tuple[tuple[yaml.Node, yaml.Node], ...] | list:
        """The mapping's key/value pairs with merge keys resolved."""
        if not any(isinstance(k, yaml.ScalarNode) and k.tag == _MERGE_TAG for k, _ in node.value):
            return node.value   # the common case: nothing to resolve, nothing to copy
        done = self._done.get(id(node))
        if done is not None:
            return done
        if id(node) in self._open:
            raise _Unreadable("a YAML merge key (<<) merges a mapping into itself")
        if depth >= MAX_MERGE_DEPTH:
            raise _Unreadable(f"YAML merge keys (<<) nested more than {MAX_MERGE_DEPTH} deep")
        self._open.add(id(node))
        try:
            out: list[tuple[yaml.Node, yaml.Node]] = []
            seen: set[tuple[int, int]] = set()
            expanded = 0
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag == _MERGE_TAG:
                    sources = [m for m in (v.value if isinstance(v, yaml.SequenceNode) else [v])
                               if isinstance(m, yaml.MappingNode)]
                    for m in sources:
                        merged = self.pairs(m, depth + 1)
                        expanded += self._expanded.get(id(m), len(merged))
                        for p in merged:
                            if (id(p[0]), id(p[1])) not in seen:
                                seen.add((id(p[0]), id(p[1])))
                                out.append(p)
                else:
                    expanded += 1
                    if (id(k), id(v)) not in seen:
                        seen.add((id(k), id(v)))
                        out.append((k, v))
            self._budget.spend(expanded)
            self._expanded[id(node)] = expanded
            done = self._done[id(node)] = tuple(out)
            return done
        finally:
            self._open.discard(id(node))


def _walk(root: yaml.Node, out: list[str], merges: _Merges) -> None:
    stack, seen = [root], set()
    while stack:
        n = stack.pop()
        if id(n) in seen:  # aliases share nodes
            continue
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            for k, v in merges.pairs(n):
                if isinstance(v, yaml.ScalarNode):
                    # Operators' own fields (a Prometheus's `spec.image`): rollback targets too.
                    # A ConfigMap's or Secret's top-level data is text, not a reference.
                    if n is not root and isinstance(k, yaml.ScalarNode) and k.value == "image" and v.value:
                        out.append(v.value)
                    continue
                if n is root and isinstance(k, yaml.ScalarNode) and k.value in _DATA_KEYS:
                    continue
                if isinstance(k, yaml.ScalarNode) and k.value in CONTAINER_KEYS and isinstance(v, yaml.SequenceNode):
                    for c in v.value:
                        if isinstance(c, yaml.MappingNode):
                            for ck, cv in merges.pairs(c):
                                if isinstance(ck, yaml.ScalarNode) and ck.value == "image" \
                                        and isinstance(cv, yaml.ScalarNode) and cv.value:
                                    out.append(cv.value)
                stack.append(v)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(x for x in n.value if not isinstance(x, yaml.ScalarNode))


def _timestamp(value: Any) -> datetime | None:
    ts = parse_time(value)
    return None if ts is None or ts.year <= 1 else ts  # Go's zero time means "never"


def release_rows(s: Stored, images_of: ManifestImages, max_bytes: int = DEFAULT_MAX_RELEASE_BYTES) -> list[tuple]:
    """HELM rows of one stored revision; raises HelmError when it cannot be read.

    Whatever a hostile or broken record does to the decoder (too large, merge keys that expand
    without end, nesting that exhausts the interpreter's recursion or memory) ends here as one
    HelmError naming the release and revision, never as another exception."""
    def fail(msg: str) -> HelmError:
        what = f"{s.driver} {_one_line(s.object_name)}"
        if s.revision is not None and not s.object_name.endswith(f".v{s.revision}"):
            what += f" (revision {s.revision})"
        return HelmError(f"{what}: {msg}", context=s.context, namespace=_one_line(s.namespace),
                         release=_one_line(s.release))

    if not s.payload:
        raise fail("no release data")
    if not isinstance(s.payload, str):
        raise fail("release data is not text")
    # The HelmError is raised after the except clause, so it carries no chain back to the
    # decoder's frames: those may hold up to helm.maxReleaseBytes of text, freed at once.
    try:
        return _rows(s, images_of, max_bytes)
    except _Refused as e:
        problem = str(e)
    except _Undecodable as e:
        problem = f"cannot decode stored release: {e}"
    except _Unreadable as e:
        problem = f"rendered manifest refused: {e}"
    except (yaml.YAMLError, ValueError) as e:
        problem = f"rendered manifest is not valid YAML: {_first_line(e)}"
    except RecursionError:
        problem = "nested too deeply to read (Python's recursion limit)"
    except MemoryError:
        problem = "ran out of memory decoding it"
    except Exception as e:   # any other surprise in this record is still this record's failure
        problem = f"cannot read it: unexpected {type(e).__name__}: {_first_line(e)}"
    raise fail(problem)


class _Refused(Exception):
    """A release record that decodes but cannot be used; the message says why."""


def _first_line(e: BaseException) -> str:
    lines = str(e).splitlines()
    return lines[0] if lines else type(e).__name__


def _one_line(text: str) -> str:
    # Names come from the object (or a dump file): one line, whatever they hold.
    return re.sub(r"[\x00-\x1f\x7f]", "?", text) if text else text


def _rows(s: Stored, images_of: ManifestImages, max_bytes: int) -> list[tuple]:
    rel = decode_payload(s.payload, s.driver, max_bytes)
    info = rel.get("info") if isinstance(rel.get("info"), dict) else {}
    chart_md = (rel.get("chart") or {}).get("metadata") if isinstance(rel.get("chart"), dict) else None
    chart_md = chart_md if isinstance(chart_md, dict) else {}
    revision = rel.get("version") if isinstance(rel.get("version"), int) else s.revision
    if revision is None:
        raise _Refused("release has no revision number")
    manifests = [rel.get("manifest") or ""]
    manifests += [h.get("manifest") or "" for h in rel.get("hooks") or () if isinstance(h, dict)]
    images: list[str] = []
    budget = MergeBudget()   # one per release, shared by its manifest and its hooks'
    for m in manifests:
        if not isinstance(m, str):
            raise ValueError("manifest is not a string")
        images.extend(images_of(m, budget))
    name, version = chart_md.get("name"), chart_md.get("version")
    chart = f"{name}-{version}" if name and version else (name or None)
    status = info.get("status") if isinstance(info.get("status"), str) else None
    app_version = chart_md.get("appVersion")
    app_version = str(app_version) if app_version not in (None, "") else None
    last = _timestamp(info.get("last_deployed"))
    release = rel.get("name") if isinstance(rel.get("name"), str) and rel.get("name") else s.release
    return [(s.context, s.namespace, release, int(revision), status, chart, app_version, last, s.driver, image)
            for image in dict.fromkeys(images)]


# --- listing ------------------------------------------------------------------------------------

def _stored(context: str, driver: str, obj: dict) -> Stored | None:
    md = obj.get("metadata") or {}
    if driver == "secret" and obj.get("type") != SECRET_TYPE:
        return None  # labelled owner=helm but not a release record
    labels = md.get("labels") or {}
    oname = md.get("name") or ""
    m = (_SECRET_NAME if driver == "secret" else _CM_NAME).match(oname)
    release = labels.get("name") or (m["name"] if m else oname)
    rev_label = labels.get("version")
    revision = int(rev_label) if rev_label and rev_label.isdigit() else (int(m["rev"]) if m else None)
    payload = (obj.get("data") or {}).get("release")
    return Stored(context, md.get("namespace") or "", release, revision, driver, oname, payload, labels.get("status"))


def newest(stored: list[Stored], keep: int) -> list[Stored]:
    """The newest `keep` revisions of each release (0: all), plus its last deployed one.

    Like Helm's own `--history-max`, which never prunes the last deployed release: after failed
    upgrades it is the rollback target. Unnumbered revisions, and revisions without a status
    label (any of them could be the deployed one), are always kept.
    """
    if keep <= 0:
        return stored
    groups: dict[tuple, list[Stored]] = defaultdict(list)
    out = []
    for s in stored:
        if s.revision is None:
            out.append(s)
        else:
            groups[(s.context, s.namespace, s.release, s.driver)].append(s)
    for revs in groups.values():
        revs = sorted(revs, key=lambda s: s.revision, reverse=True)
        out.extend(revs[:keep])
        deployed = next((s for s in revs if s.status == "deployed"), None)
        out.extend(s for s in revs[keep:] if s is deployed or not s.status)
    return out


DRIVERS = {"Secret": "secret", "ConfigMap": "configmap"}


def stored_in_dumps(k: "KubernetesConfig", helm: "HelmConfig") -> list[Stored]:
    """Stored revisions from `helm.dumps` (tasks/sources/kubernetes/dumps.py), with the live list's own selector
    applied (a dump of every Secret holds non-Helm ones too); a malformed dump is a HelmError."""
    from tasks.sources.kubernetes.dumps import HELM_COMMAND, objects_by_kind

    out = []
    for context, kind, objs in objects_by_kind(helm.dumps, set(DRIVERS), k.namespaces, HELM_COMMAND, HelmError):
        for obj in objs:
            if ((obj.get("metadata") or {}).get("labels") or {}).get("owner") == "helm":
                s = _stored(context, DRIVERS[kind], obj)
                if s is not None:
                    out.append(s)
    return out


def scan(k: "KubernetesConfig", helm: "HelmConfig") -> list[tuple]:
    """HELM rows for every stored revision in every scanned context and namespace."""
    keep, cap = helm.keepRevisions, helm.maxReleaseBytes
    images_of = ManifestImages()
    if helm.dumps:
        rows = [r for s in newest(stored_in_dumps(k, helm), keep) for r in release_rows(s, images_of, cap)]
        reporter().finish("helm", f"Helm: {len(rows)} images from {len(helm.dumps)} dump(s)")
        return rows

    def unit(cl: Cluster, ns: str | None, kind, driver: str):
        def consume(items: list[dict]) -> list:
            found = [s for s in (_stored(cl.context, driver, o) for o in items) if s is not None]
            if keep:
                return found  # decoded once the newest revisions are known
            return [r for s in found for r in release_rows(s, images_of, cap)]
        return lambda: list_objects(cl, kind, ns, consume, label_selector=OWNER_SELECTOR)

    def units_of(cl: Cluster, ns: str | None) -> list:
        return [unit(cl, ns, kind, driver) for kind, driver in ((SECRETS, "secret"), (CONFIGMAPS, "configmap"))]

    # Decoding is CPU-bound: more threads than two only add contention.
    parts, _ = list_everywhere(k, units_of, "helm", "Reading Helm release history in {contexts} context(s)", workers=2)
    flat = [x for p in parts for x in p]
    rows = [r for s in newest(flat, keep) for r in release_rows(s, images_of, cap)] if keep else flat
    revisions = len({r[:4] + (r[8],) for r in rows})
    reporter().finish("helm", f"Helm: {len(rows)} images in {revisions} release revisions")
    return rows


def extract(config: "RegsweepConfig", store: "Store", now: datetime) -> dict[str, "pa.Table"]:
    """The `helm` table of a snapshot (schema HELM)."""
    from tasks.store.schemas import HELM, from_rows

    return {"helm": from_rows(scan(config.kubernetes, config.helm), HELM)}
