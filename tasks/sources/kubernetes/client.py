"""The Kubernetes client layer both cluster sources use: connecting, paginated lists, list units.

Lists go through the real `kubernetes` client with `_preload_content=False` and are parsed as
plain JSON: building the typed models costs far more than the HTTP itself. Lists are paginated
(limit/continue); an expired continue token (410) restarts that list, a bounded number of times,
because a list stitched from two snapshots could miss objects. Anything else that stops a list
from completing (403, 5xx, timeouts, unreachable) is a `ClusterError` naming context, namespace
and kind: the snapshot is then incomplete and nothing is deleted on its strength. Custom
resources are listed the same way (CustomObjectsApi), once API discovery (`served_custom_kinds`,
one per context) says the cluster serves them; a discovery that fails is a `ClusterError` too.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import urllib3
from kubernetes import client as k8s
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException, list_kube_config_contexts, load_kube_config
from kubernetes.config.incluster_config import InClusterConfigLoader
from urllib3.util.retry import Retry

from tasks.common.errors import ClusterError, ConfigError
from tasks.common.notes import in_context, retried
from tasks.common.progress import reporter
from tasks.common.redact import remember

if TYPE_CHECKING:
    from tasks.config.models import KubernetesConfig

try:  # orjson (already installed with Prefect) parses large lists several times faster
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

IN_CLUSTER = "in-cluster"
MAX_LIST_RESTARTS = 3
BODY_ATTEMPTS = 3       # reads of a page whose answer was cut short
RETRY_AFTER_CAP = 60.0  # seconds; an API server asking for longer fails the list instead of stalling it

log = logging.getLogger("regsweep.kubernetes")


class _Retry(Retry):
    """urllib3's retries, each one logged and counted (tasks/common/notes.py), Retry-After capped."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        new = super().increment(method, url, response, error, _pool, _stacktrace)  # raises when used up
        why = f"HTTP {response.status}" if response is not None and response.status else type(error).__name__
        host = f"{_pool.host}:{_pool.port}" if _pool is not None else "the API server"
        retried(log, f"kubernetes {host}: {method} {(url or '').split('?')[0]} failed ({why}); trying again")
        return new

    def get_retry_after(self, response):
        after = super().get_retry_after(response)
        return None if after is None else min(after, RETRY_AFTER_CAP)


@dataclass(frozen=True)
class Kind:
    """One listable resource: its client API class, list methods and where its pod spec sits."""

    kind: str
    plural: str
    api: str
    list_all: str
    list_namespaced: str
    pod_spec: tuple[str, ...] = ()
    group: str | None = None       # a custom resource: listed through CustomObjectsApi
    version: str | None = None
    namespaced: bool = True

    @property
    def resource(self) -> str:
        """Its name in messages: `pods`, `cronworkflows.argoproj.io` (as kubectl spells it)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def custom_kind(group: str, version: str, plural: str, kind: str, namespaced: bool = True) -> Kind:
    """A custom resource the cluster serves, listed like the built-in kinds (pagination, 410 restarts)."""
    return Kind(kind, plural, "CustomObjectsApi", "list_cluster_custom_object", "list_namespaced_custom_object",
                group=group, version=version, namespaced=namespaced)


SECRETS = Kind("Secret", "secrets", "CoreV1Api", "list_secret_for_all_namespaces", "list_namespaced_secret")
CONFIGMAPS = Kind("ConfigMap", "configmaps", "CoreV1Api", "list_config_map_for_all_namespaces",
                  "list_namespaced_config_map")


# --- connecting ------------------------------------------------------------------------------------

@dataclass
class Cluster:
    """An API client for one kubeconfig context (or the in-cluster service account)."""

    context: str
    api: "ApiClient"
    timeout: float
    page_size: int

    def close(self) -> None:
        self.api.close()


def kubeconfig_path(k: "KubernetesConfig") -> str | None:
    """The kubeconfig to use: the configured one, $KUBECONFIG, ~/.kube/config; None for in-cluster."""
    if k.kubeconfig:
        return os.path.expanduser(k.kubeconfig)
    env = os.environ.get("KUBECONFIG")
    if env:
        return env  # may list several files; the client merges them as kubectl does
    default = os.path.expanduser("~/.kube/config")
    return default if os.path.exists(default) else None


def connect(k: "KubernetesConfig") -> list[Cluster]:
    """One client per configured context (default: the current one), or in-cluster config."""
    def client(cfg: Configuration, context: str) -> Cluster:
        # A refused connection twice, a reset or slow answer once, and a throttled or briefly
        # unavailable API server (429, 502-504, honouring Retry-After) three times; any other
        # status is handled (410) or fails the source. Lists are GETs: safe to send again.
        for value in (cfg.api_key or {}).values():   # the bearer token: masked in every message
            remember(str(value).removeprefix("Bearer "))
        cfg.retries = _Retry(total=6, connect=2, read=1, status=3, redirect=0, other=0, backoff_factor=0.25,
                             backoff_max=8, status_forcelist=(429, 502, 503, 504), allowed_methods=frozenset({"GET"}),
                             respect_retry_after_header=True, raise_on_status=False)
        return Cluster(context, ApiClient(configuration=cfg), k.timeout, k.pageSize)

    path = kubeconfig_path(k)
    if path is None:
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise ClusterError("no kubeconfig (kubernetes.kubeconfig, $KUBECONFIG, ~/.kube/config) "
                               "and not running inside a cluster")
        if k.contexts and k.contexts != [IN_CLUSTER]:
            raise ClusterError(f"contexts {k.contexts} need a kubeconfig; inside a cluster only "
                               f"{IN_CLUSTER!r} is available", context=k.contexts[0])
        cfg = Configuration()
        try:
            # The loader's own file parameters: the mounted service account, or another directory.
            InClusterConfigLoader(token_filename=os.path.join(k.serviceAccount, "token"),
                                  cert_filename=os.path.join(k.serviceAccount, "ca.crt")).load_and_set(cfg)
        except ConfigException as e:
            raise ClusterError(f"in-cluster configuration: {e}", context=IN_CLUSTER) from None
        return [client(cfg, IN_CLUSTER)]

    if k.kubeconfig and not os.path.exists(path):
        raise ClusterError(f"kubeconfig {k.kubeconfig} does not exist")
    try:
        contexts, current = list_kube_config_contexts(path)
    except (ConfigException, OSError, ValueError) as e:
        raise ClusterError(f"cannot read kubeconfig {path}: {e}") from None
    names = [c["name"] for c in contexts or ()]
    chosen = list(k.contexts) or ([current["name"]] if current else [])
    if not chosen:
        raise ClusterError(f"kubeconfig {path} has no current-context; set kubernetes.contexts")
    clusters = []
    for ctx in chosen:
        if ctx not in names:
            raise ClusterError(f"no context {ctx!r} in kubeconfig {path} (has: {', '.join(names) or 'none'})",
                               context=ctx)
        cfg = Configuration()
        try:
            load_kube_config(config_file=path, context=ctx, client_configuration=cfg, persist_config=False)
        except (ConfigException, OSError, ValueError) as e:
            raise ClusterError(f"cannot load kubeconfig {path}: {e}", context=ctx) from None
        clusters.append(client(cfg, ctx))
    return clusters


def preflight(k: "KubernetesConfig") -> None:
    """ConfigError now for a kubeconfig or context that cannot work (a typo, a missing file).

    Such a mistake is the user's to fix (exit 2, naming the key), like wrong registry credentials;
    anything that might pass on a later try (a cluster down, a credential plugin failing) is left
    to the snapshot, which records it and is published as incomplete.
    """
    path = kubeconfig_path(k)
    if path is None:
        return  # in-cluster, or nothing at all: the source says which
    if k.kubeconfig and not os.path.exists(path):
        raise ConfigError("kubernetes.kubeconfig", f"{k.kubeconfig} does not exist")
    try:
        contexts, _ = list_kube_config_contexts(path)
    except (ConfigException, OSError, ValueError) as e:
        raise ConfigError("kubernetes.kubeconfig", f"cannot read {path}: {e}") from None
    names = [c["name"] for c in contexts or ()]
    for ctx in k.contexts:
        if ctx not in names:
            raise ConfigError("kubernetes.contexts",
                              f"no context {ctx!r} in kubeconfig {path} (has: {', '.join(names) or 'none'})")


# --- listing ---------------------------------------------------------------------------------------

class _Expired(Exception):
    pass


def _status_message(body: str | bytes | None) -> str:
    try:
        msg = _loads(body or b"{}").get("message")
    except (ValueError, AttributeError):
        msg = None
    return f": {msg}" if msg else ""


def _read_body(request: Callable[[], Any], cluster: Cluster, doing: str) -> bytes:
    """The bytes of one answer `request()` asks for. A body cut short (the connection dropped
    mid-answer, after urllib3's own retries are past) is asked for again, at most twice more, each
    time logged and counted; `doing` says what for, in that note."""
    for attempt in range(1, BODY_ATTEMPTS + 1):
        resp = request()
        try:
            return resp.data
        except urllib3.exceptions.ProtocolError as e:
            if attempt == BODY_ATTEMPTS:
                raise
            retried(log, f"kubernetes (context {cluster.context}): {doing}: answer cut short ({e}); trying again")
        finally:
            resp.release_conn()
    raise AssertionError("unreachable")  # pragma: no cover


def _read_page(api: Any, kind: Kind, namespace: str | None, cluster: Cluster, params: dict[str, Any]) -> bytes:
    """One list page's bytes (`_read_body`)."""
    if kind.group is not None:   # CustomObjectsApi: (group, version, [namespace,] plural)
        args = (kind.group, kind.version, kind.plural) if namespace is None else \
            (kind.group, kind.version, namespace, kind.plural)
    else:
        args = () if namespace is None else (namespace,)
    method = getattr(api, kind.list_all if namespace is None else kind.list_namespaced)
    return _read_body(lambda: method(*args, _preload_content=False, _request_timeout=cluster.timeout, **params),
                      cluster, f"listing {kind.resource} {f'in namespace {namespace}' if namespace else 'cluster-wide'}")


def _get_page(cluster: Cluster, kind: Kind, namespace: str | None, **params: Any) -> dict:
    """One list request; raises ClusterError, or _Expired for a 410 on a continue token."""
    api = getattr(k8s, kind.api)(cluster.api)
    where = {"context": cluster.context, "namespace": namespace, "kind": kind.kind}
    scope = f"in namespace {namespace}" if namespace else "cluster-wide"
    try:
        data = _read_page(api, kind, namespace, cluster, params)
    except ApiException as e:
        if e.status == 410 and params.get("_continue"):
            raise _Expired() from None
        if e.status in (401, 403):
            what = "forbidden" if e.status == 403 else "unauthorized"
            raise ClusterError(f"listing {kind.resource} {scope} is {what} (HTTP {e.status}){_status_message(e.body)}",
                               **where) from None
        raise ClusterError(f"listing {kind.resource} {scope} failed: HTTP {e.status} {e.reason or ''}".rstrip()
                           + _status_message(e.body), **where) from None
    except urllib3.exceptions.HTTPError as e:
        reason = getattr(e, "reason", None) or e
        # NewConnectionError subclasses ConnectTimeoutError in urllib3: refused is not slow
        if isinstance(reason, urllib3.exceptions.TimeoutError) and \
                not isinstance(reason, urllib3.exceptions.NewConnectionError):
            raise ClusterError(f"listing {kind.resource} {scope} timed out after {cluster.timeout:g}s", **where) from None
        raise ClusterError(f"listing {kind.resource} {scope} failed: {type(reason).__name__}: {reason}", **where) from None
    except OSError as e:
        raise ClusterError(f"listing {kind.resource} {scope} failed: {e}", **where) from None
    try:
        doc = _loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("items") or [], list):
            raise ValueError("not a list")
    except ValueError as e:
        raise ClusterError(f"listing {kind.resource} {scope}: malformed response ({e})", **where) from None
    return doc


def _read_discovery(cluster: Cluster, group: str | None, version: str | None, what: str) -> bytes:
    """One discovery document's bytes (`_read_body`): `/apis`, or `/apis/GROUP/VERSION`."""
    if group is None:
        api = k8s.ApisApi(cluster.api)
        return _read_body(lambda: api.get_api_versions(_preload_content=False, _request_timeout=cluster.timeout),
                          cluster, f"discovery of {what}")
    api = k8s.CustomObjectsApi(cluster.api)
    return _read_body(lambda: api.get_api_resources(group, version, _preload_content=False,
                                                    _request_timeout=cluster.timeout), cluster, f"discovery of {what}")


def _discover(cluster: Cluster, group: str | None = None, version: str | None = None) -> dict:
    """One discovery document: `/apis` (ApisApi) or, with a group and version, `/apis/GROUP/VERSION`
    (CustomObjectsApi). Any failure is a ClusterError: a resource the cluster may serve but whose
    presence cannot be read fails the source closed."""
    where = {"context": cluster.context}
    what = f"{group}/{version}" if group else "API groups"
    try:
        data = _read_discovery(cluster, group, version, what)
    except ApiException as e:
        raise ClusterError(f"discovery of {what} failed: HTTP {e.status} {e.reason or ''}".rstrip()
                           + _status_message(e.body), **where) from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise ClusterError(f"discovery of {what} failed: {type(reason).__name__}: {reason}", **where) from None
    try:
        doc = _loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except ValueError as e:
        raise ClusterError(f"discovery of {what}: malformed response ({e})", **where) from None
    return doc


def served_custom_kinds(cluster: Cluster, wanted: list[tuple[str, str | None, str]]) -> list[Kind]:
    """Which of `wanted` (group, version or None for any, plural) the cluster serves, as Kinds.

    One discovery per context: `/apis` for the groups and their versions, then `/apis/GROUP/VERSION`
    for each version that may hold a wanted resource (the preferred version first; with no version
    given, the first that serves the plural is listed). Resources not served are skipped; a
    discovery that fails is a ClusterError.
    """
    groups = {}
    for g in _discover(cluster).get("groups") or ():
        if isinstance(g, dict) and g.get("name"):
            versions = [v.get("version") for v in g.get("versions") or () if isinstance(v, dict) and v.get("version")]
            preferred = (g.get("preferredVersion") or {}).get("version")
            groups[g["name"]] = ([preferred] if preferred in versions else []) + [v for v in versions if v != preferred]
    lists: dict[tuple[str, str], dict[str, dict]] = {}

    def resources(group: str, version: str) -> dict[str, dict]:
        if (group, version) not in lists:
            doc = _discover(cluster, group, version)
            lists[(group, version)] = {r["name"]: r for r in doc.get("resources") or ()
                                       if isinstance(r, dict) and isinstance(r.get("name"), str)}
        return lists[(group, version)]

    kinds: list[Kind] = []
    seen: set[tuple[str, str]] = set()
    for group, version, plural in wanted:
        if (group, plural) in seen:
            continue
        for v in groups.get(group, ()):
            if version is not None and v != version:
                continue
            r = resources(group, v).get(plural)
            if r is not None and "list" in (r.get("verbs") or ["list"]):
                kinds.append(custom_kind(group, v, plural, str(r.get("kind") or plural), bool(r.get("namespaced", True))))
                seen.add((group, plural))
                break
    return kinds


def list_objects(cluster: Cluster, kind: Kind, namespace: str | None, consume: Callable[[list[dict]], list],
                 *, label_selector: str | None = None) -> list:
    """Page through one list and return `consume(items)` results of every page, concatenated.

    `namespace` None lists cluster-wide. On an expired continue token the list starts over (the
    partial results are dropped, so nothing is counted twice), at most MAX_LIST_RESTARTS times.
    """
    for _attempt in range(MAX_LIST_RESTARTS + 1):
        out: list = []
        token: str | None = None
        try:
            while True:
                params: dict[str, Any] = {"limit": cluster.page_size}
                if token:
                    params["_continue"] = token
                if label_selector:
                    params["label_selector"] = label_selector
                doc = _get_page(cluster, kind, namespace, **params)
                out.extend(consume(doc.get("items") or []))
                token = (doc.get("metadata") or {}).get("continue")
                if not token:
                    return out
        except _Expired:
            continue
    raise ClusterError(f"listing {kind.resource} kept expiring: restarted {MAX_LIST_RESTARTS} times without "
                       f"finishing (cluster too busy for pageSize {cluster.page_size}?)",
                       context=cluster.context, namespace=namespace, kind=kind.kind)


def run_units(units: list[Callable[[], list]], progress_key: str | None = None, workers: int = 4) -> list[list]:
    """Run list units on a few threads (network waits overlap); the first failure cancels the rest."""
    if not units:
        return []
    results: list[list | None] = [None] * len(units)
    rep = reporter()

    def run(i: int) -> None:
        results[i] = units[i]()
        if progress_key:
            rep.advance(progress_key)

    with ThreadPoolExecutor(max_workers=min(workers, len(units)), thread_name_prefix="kube-list") as pool:
        # in_context: what a unit notes (warnings, retries) counts for the source that runs it
        futures = [pool.submit(in_context(lambda i=i: run(i))) for i in range(len(units))]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            for f in pending:
                f.cancel()
            raise failed[0].exception()
    return results  # type: ignore[return-value]


def scopes(k: "KubernetesConfig") -> list[str | None]:
    """Namespaces to list: None (one cluster-wide list) or each configured namespace."""
    return list(dict.fromkeys(k.namespaces)) if k.namespaces else [None]


def list_everywhere(k: "KubernetesConfig", units_of: Callable[[Cluster, str | None], list[Callable[[], list]]],
                    progress_key: str, description: str, workers: int = 4,
                    then: tuple[Callable[[Cluster, str | None], list[Callable[[], list]]], str, str] | None = None,
                    ) -> tuple[list[list], int]:
    """Run `units_of(cluster, namespace)` in every configured context and scope.

    Returns each unit's results, in order, and how many contexts were listed; `description`
    may name that count as `{contexts}`. With `then` = (units_of, progress_key, description),
    a second round of units, built only once the first round has completed (the custom
    resources, whose discovery is not asked of a cluster the first round found unreachable),
    and their results follow. The clients are closed whatever happens.
    """
    clusters = connect(k)
    try:
        results = []
        for make, key, text in ((units_of, progress_key, description), *((then,) if then else ())):
            units = [u for cl in clusters for ns in scopes(k) for u in make(cl, ns)]
            reporter().start(key, text.format(contexts=len(clusters)), len(units))
            results += run_units(units, key, workers)
        return results, len(clusters)
    finally:
        for cl in clusters:
            cl.close()
