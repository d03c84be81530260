"""A small Kubernetes API server on loopback for the real `kubernetes` client, and kubeconfigs for it.

No kube-apiserver can run here and kmock's list ignores limit/continue/labelSelector, so this
server speaks just the list part of the API with the real shapes: `kind: PodList`, `apiVersion`,
`metadata: {resourceVersion, continue, remainingItemCount}`, objects ordered by namespace/name
as etcd keys are, equality label selectors, Status objects for errors. Faults are scripted per
resource (and namespace): 403, 5xx, 410 Expired on the Nth continued request, slow answers.
Custom resources are served as installed CRDs are (`serve`): in `/apis` and `/apis/GROUP/VERSION`
discovery and through the same list endpoints.

Objects are serialised once when added and pages are joined from those bytes, so the server
stays fast enough for benchmarks to measure the client, not the server. The objects themselves
are built with testbed/kube.py; tests start servers through the `kube_env` fixture
(tests/support/kube.py), benchmarks directly.
"""

from __future__ import annotations

import base64
import bisect
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qs, urlsplit

import yaml

from testbed.loopback import Handler, LoopbackServer

#: plural → (API prefix, kind)
RESOURCES: dict[str, tuple[str, str]] = {
    "pods": ("/api/v1", "Pod"),
    "replicationcontrollers": ("/api/v1", "ReplicationController"),
    "secrets": ("/api/v1", "Secret"),
    "configmaps": ("/api/v1", "ConfigMap"),
    "deployments": ("/apis/apps/v1", "Deployment"),
    "replicasets": ("/apis/apps/v1", "ReplicaSet"),
    "statefulsets": ("/apis/apps/v1", "StatefulSet"),
    "daemonsets": ("/apis/apps/v1", "DaemonSet"),
    "jobs": ("/apis/batch/v1", "Job"),
    "cronjobs": ("/apis/batch/v1", "CronJob"),
}
PLURAL_OF_KIND = {kind: plural for plural, (_, kind) in RESOURCES.items()}


def _status(code: int, reason: str, message: str, **extra: Any) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": extra.pop("metadata", {}), "status": "Failure",
            "message": message, "reason": reason, "code": code, **extra}


@dataclass
class _Fault:
    plural: str
    namespace: str | None       # None: the cluster-wide list; "*": every list of the resource
    status: int
    reason: str
    message: str
    times: int | None = None    # None: forever
    delay: float = 0.0
    on_continue: int | None = None   # fault only the Nth request that carries a continue token


@dataclass
class _Entry:
    key: str                 # namespace/name: the apiserver's (etcd) order
    labels: dict[str, str]
    data: bytes


def _parse_selector(sel: str) -> list[tuple[str, str, str | None]]:
    """Equality-based label selectors: k=v, k==v, k!=v, k, !k. Set-based ones are refused."""
    out = []
    for term in filter(None, (t.strip() for t in sel.split(","))):
        if " in " in term or " notin " in term or "(" in term:
            raise ValueError(f"set-based selector not supported by the test server: {term}")
        if "!=" in term:
            k, v = term.split("!=", 1)
            out.append((k.strip(), "!=", v.strip()))
        elif "==" in term:
            k, v = term.split("==", 1)
            out.append((k.strip(), "=", v.strip()))
        elif "=" in term:
            k, v = term.split("=", 1)
            out.append((k.strip(), "=", v.strip()))
        elif term.startswith("!"):
            out.append((term[1:].strip(), "!", None))
        else:
            out.append((term, "exists", None))
    return out


def _selected(labels: dict[str, str], terms) -> bool:
    for k, op, v in terms:
        if op == "=" and labels.get(k) != v:
            return False
        if op == "!=" and labels.get(k) == v:
            return False
        if op == "exists" and k not in labels:
            return False
        if op == "!" and k in labels:
            return False
    return True


class KubeServer(LoopbackServer):
    """The list API of one cluster, on a free 127.0.0.1 port (over TLS when started with `tls`)."""

    def __init__(self, token: str | None = None):
        self.token = token
        # plural → (API prefix, kind): the built-in resources, then custom ones served by `serve`
        self.resources: dict[str, tuple[str, str]] = dict(RESOURCES)
        self.plural_of_kind: dict[str, str] = dict(PLURAL_OF_KIND)
        self.cluster_scoped: set[str] = set()
        self._preferred: dict[str, str] = {}   # group → its preferred version, for custom groups
        self._objects: dict[str, dict[str, list[_Entry]]] = {p: {} for p in RESOURCES}
        self._sorted: dict[str, list[_Entry] | None] = {p: None for p in RESOURCES}
        self._rv = 1000
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._continued: dict[str, int] = {}
        self._page_cache: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []             # lists (and unknown paths)
        self.discovery_requests: list[tuple[str, dict[str, str]]] = []   # /apis, /apis/GROUP/VERSION
        self.record_requests = True

    # -- custom resources -----------------------------------------------------------------------
    def serve(self, group: str, version: str, plural: str, kind: str, *, namespaced: bool = True,
              preferred: bool = True) -> None:
        """Serve a custom resource (as an installed CRD does): in `/apis` discovery (its group,
        `version` the preferred one unless `preferred` is False), in `/apis/GROUP/VERSION` and
        through the list endpoints. Objects of it are then added by `kind`."""
        if plural in self.resources:
            raise ValueError(f"{plural} is served already")
        with self._lock:
            self.resources[plural] = (f"/apis/{group}/{version}", kind)
            self.plural_of_kind[kind] = plural
            self._objects[plural], self._sorted[plural] = {}, None
            if not namespaced:
                self.cluster_scoped.add(plural)
            if preferred or group not in self._preferred:
                self._preferred[group] = version

    def _groups(self) -> dict[str, list[str]]:
        """group → versions served, built-in groups included."""
        out: dict[str, list[str]] = {}
        for prefix, _ in self.resources.values():
            if prefix.startswith("/apis/"):
                group, version = prefix.removeprefix("/apis/").split("/")
                if version not in out.setdefault(group, []):
                    out[group].append(version)
        return out

    def discovery(self, parts: list[str]) -> tuple[int, bytes] | None:
        """`/apis` (APIGroupList) and `/apis/GROUP/VERSION` (APIResourceList); None for other paths."""
        groups = self._groups()
        preferred = self._preferred
        if parts == ["apis"]:
            doc = {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{preferred.get(g, vs[0])}",
                                      "version": preferred.get(g, vs[0])}}
                for g, vs in groups.items()]}
            return 200, json.dumps(doc).encode()
        if len(parts) == 3 and parts[0] == "apis":
            group, version = parts[1], parts[2]
            if version not in groups.get(group, ()):
                return 404, json.dumps(_status(404, "NotFound", "the server could not find the requested resource")).encode()
            fault = self._fault_for(f"/apis/{group}/{version}", None, False)
            if fault is not None and fault.status != 200:
                return fault.status, json.dumps(_status(fault.status, fault.reason, fault.message)).encode()
            doc = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}", "resources": [
                {"name": plural, "singularName": "", "namespaced": plural not in self.cluster_scoped, "kind": kind,
                 "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]}
                for plural, (prefix, kind) in self.resources.items() if prefix == f"/apis/{group}/{version}"]}
            return 200, json.dumps(doc).encode()
        return None

    # -- objects --------------------------------------------------------------------------------
    def add(self, *objs: dict) -> None:
        """Store objects (dicts in API shape); `kind` picks the resource."""
        with self._lock:
            for obj in objs:
                plural = self.plural_of_kind[obj["kind"]]
                md = obj.setdefault("metadata", {})
                ns = "" if plural in self.cluster_scoped else md.setdefault("namespace", "default")
                self._rv += 1
                md.setdefault("resourceVersion", str(self._rv))
                md.setdefault("uid", f"uid-{self._rv}")
                entry = _Entry(f"{ns}/{md['name']}", dict(md.get("labels") or {}),
                               json.dumps(obj, separators=(",", ":")).encode())
                self._objects[plural].setdefault(ns, []).append(entry)
                self._sorted[plural] = None
            self._page_cache.clear()

    def extend(self, objs: Iterable[dict]) -> None:
        self.add(*objs)

    def remove(self, kind: str, namespace: str, name: str) -> None:
        """Delete an object, as `kubectl delete` would (a workload scaled down and removed)."""
        plural = self.plural_of_kind[kind]
        with self._lock:
            entries = self._objects[plural].get(namespace, [])
            kept = [e for e in entries if e.key != f"{namespace}/{name}"]
            if len(kept) == len(entries):
                raise KeyError(f"no {kind} {namespace}/{name}")
            self._objects[plural][namespace] = kept
            self._sorted[plural] = None
            self._rv += 1
            self._page_cache.clear()

    def _all(self, plural: str, namespace: str | None) -> list[_Entry]:
        if namespace is not None:
            entries = self._objects[plural].get(namespace, [])
            entries.sort(key=lambda e: e.key)
            return entries
        if self._sorted[plural] is None:
            self._sorted[plural] = sorted((e for lst in self._objects[plural].values() for e in lst),
                                          key=lambda e: e.key)
        return self._sorted[plural]

    # -- faults ---------------------------------------------------------------------------------
    def forbid(self, plural: str, namespace: str | None = None) -> None:
        """403 for listing `plural` in `namespace` (None: the cluster-wide list; "*": everywhere)."""
        where = f'in the namespace "{namespace}"' if namespace not in (None, "*") else "at the cluster scope"
        group = self.resources[plural][0].removeprefix("/apis/").removeprefix("/api/").split("/")[0]
        group = "" if group == "v1" else group
        self._faults.append(_Fault(plural, namespace, 403, "Forbidden",
                                   f'{plural} is forbidden: User "system:serviceaccount:ci:regsweep" cannot list '
                                   f'resource "{plural}" in API group "{group}" {where}',
                                   ))

    def fail_discovery(self, group: str, version: str, status: int = 503) -> None:
        """Answer `status` to the discovery of `/apis/GROUP/VERSION` (an aggregated API down)."""
        self._faults.append(_Fault(f"/apis/{group}/{version}", None, status, "ServiceUnavailable",
                                   "the server is currently unable to handle the request"))

    def fail(self, plural: str, status: int = 500, namespace: str | None = "*", times: int | None = None) -> None:
        """Answer `status` (500: InternalError, 503: ServiceUnavailable) for `times` requests."""
        reason = {500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}.get(status, "InternalError")
        self._faults.append(_Fault(plural, namespace, status, reason,
                                   "Internal error occurred: etcdserver: request timed out", times=times))

    def expire_continue(self, plural: str, nth: int = 1, times: int = 1) -> None:
        """410 Expired for the `nth` request of `plural` carrying a continue token (then `times`-1 more)."""
        self._faults.append(_Fault(plural, "*", 410, "Expired",
                                   "The provided continue parameter is too old to display a consistent list "
                                   "result. You can start a new list without the continue parameter.",
                                   times=times, on_continue=nth))

    def slow(self, plural: str, seconds: float, namespace: str | None = "*") -> None:
        """Wait `seconds` before answering lists of `plural` (client timeouts)."""
        self._faults.append(_Fault(plural, namespace, 200, "", "", delay=seconds))

    def _fault_for(self, plural: str, namespace: str | None, continued: bool) -> _Fault | None:
        if continued:
            self._continued[plural] = self._continued.get(plural, 0) + 1
        for f in self._faults:
            if f.plural != plural or (f.namespace != "*" and f.namespace != namespace):
                continue
            if f.on_continue is not None and (not continued or self._continued[plural] < f.on_continue):
                continue
            if f.times is not None:
                if f.times <= 0:
                    continue
                f.times -= 1
            return f
        return None

    # -- listing --------------------------------------------------------------------------------
    def list_page(self, plural: str, namespace: str | None, query: dict[str, str]) -> tuple[int, bytes]:
        prefix, kind = self.resources[plural]
        try:
            terms = _parse_selector(query.get("labelSelector", ""))
        except ValueError as e:
            return 400, json.dumps(_status(400, "BadRequest", str(e))).encode()
        if query.get("fieldSelector"):
            return 400, json.dumps(_status(400, "BadRequest", "fieldSelector not supported by the test server")).encode()
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        after = ""
        if token:
            try:
                after = json.loads(base64.urlsafe_b64decode(token.encode()))["start"]
            except (ValueError, KeyError):
                return 400, json.dumps(_status(400, "BadRequest", "continue key is not valid")).encode()
        with self._lock:
            entries = self._all(plural, namespace)
            rv = str(self._rv)
        if terms:
            entries = [e for e in entries if _selected(e.labels, terms)]
        start = 0
        if after:
            keys = [e.key for e in entries]
            start = bisect.bisect_right(keys, after)
        page = entries[start:start + limit] if limit > 0 else entries[start:]
        md: dict[str, Any] = {"resourceVersion": rv}
        end = start + len(page)
        if limit > 0 and end < len(entries):
            md["continue"] = base64.urlsafe_b64encode(
                json.dumps({"v": "meta.k8s.io/v1", "rv": int(rv), "start": page[-1].key}).encode()).decode()
            md["remainingItemCount"] = len(entries) - end
        api_version = prefix.removeprefix("/apis/").removeprefix("/api/")
        head = json.dumps({"kind": f"{kind}List", "apiVersion": api_version, "metadata": md}, separators=(",", ":"))
        body = head[:-1].encode() + b',"items":[' + b",".join(e.data for e in page) + b"]}"
        return 200, body

    def handle(self, path: str, query: dict[str, str], auth: str | None) -> tuple[int, bytes, float]:
        """Status, body and delay for one GET."""
        parts = path.strip("/").split("/")
        if self.record_requests:   # list requests and discovery requests apart
            is_discovery = parts == ["apis"] or (len(parts) == 3 and parts[0] == "apis")
            (self.discovery_requests if is_discovery else self.requests).append((path, query))
        # The scheme is case-insensitive, as the API server's bearer-token authenticator reads it
        # (the client's in-cluster loader sends "bearer <token>").
        scheme, _, credential = (auth or "").partition(" ")
        if self.token is not None and (scheme.lower() != "bearer" or credential != self.token):
            return 401, json.dumps(_status(401, "Unauthorized", "Unauthorized")).encode(), 0.0
        found = self.discovery(parts)
        if found is not None:
            return (*found, 0.0)
        # /api/v1/[namespaces/{ns}/]{plural}  or  /apis/{group}/{version}/[namespaces/{ns}/]{plural}
        base = 2 if parts[0] == "api" else 3
        rest = parts[base:]
        namespace = None
        if len(rest) == 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if len(rest) != 1 or rest[0] not in self.resources or "/" + "/".join(parts[:base]) != self.resources[rest[0]][0] \
                or (namespace is not None and rest[0] in self.cluster_scoped):
            return 404, json.dumps(_status(404, "NotFound", "the server could not find the requested resource")).encode(), 0.0
        plural = rest[0]
        fault = self._fault_for(plural, namespace, bool(query.get("continue")))
        delay = 0.0
        if fault is not None:
            if fault.status != 200:
                return fault.status, json.dumps(_status(fault.status, fault.reason, fault.message,
                                                        details={"kind": plural})).encode(), 0.0
            delay = fault.delay
        cache_key = path + "?" + json.dumps(query, sort_keys=True)
        body = self._page_cache.get(cache_key)
        if body is None:
            status, body = self.list_page(plural, namespace, query)
            if status != 200:
                return status, body, delay
            self._page_cache[cache_key] = body
        return 200, body, delay

    # -- serving --------------------------------------------------------------------------------
    # start(tls=None), stop(), port, host and url come from LoopbackServer.

    class handler(Handler):
        def do_GET(self):
            u = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
            status, body, delay = self.owner.handle(u.path, query, self.headers.get("Authorization"))
            if delay:
                time.sleep(delay)
            try:
                # send_response, not reply(): the API server's answers carry Date and Server too.
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def list_requests(self, plural: str) -> list[dict[str, str]]:
        """The query parameters of every list request of `plural` so far, in order."""
        return [q for p, q in self.requests if p.endswith("/" + plural)]


# --- kubeconfig ----------------------------------------------------------------------------------

def write_kubeconfig(path: Path, contexts: dict[str, tuple[str, str | None]], current: str | None = None,
                     cluster_names: dict[str, str] | None = None) -> Path:
    """A real kubeconfig: one cluster + token user per context ({context: (server URL, token)})."""
    cluster_names = cluster_names or {}
    cfg: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "preferences": {},
                           "clusters": [], "users": [], "contexts": [],
                           "current-context": current or next(iter(contexts))}
    for ctx, (server, token) in contexts.items():
        cluster = cluster_names.get(ctx, f"cluster-{ctx}")
        cfg["clusters"].append({"name": cluster, "cluster": {"server": server}})
        user = {"name": f"user-{ctx}", "user": {"token": token} if token else {}}
        cfg["users"].append(user)
        cfg["contexts"].append({"name": ctx, "context": {"cluster": cluster, "user": f"user-{ctx}",
                                                        "namespace": "default"}})
    path.write_text(yaml.safe_dump(cfg))
    return path
