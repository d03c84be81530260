"""Kubernetes source: every image a workload references, in every configured context and namespace.

The lists themselves (connecting, pagination, failures as `ClusterError`) are tasks/sources/kubernetes/client.py's,
shared with the Helm source; this module knows the workload kinds and which rows they yield.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from tasks.sources.kubernetes.client import Kind, list_everywhere, list_objects
from tasks.common.progress import reporter
from tasks.oci.reference import digest_of_image_id

if TYPE_CHECKING:
    import pandas
    import pyarrow as pa

    from tasks.config.models import KubernetesConfig, RegsweepConfig
    from tasks.store.store import Store

CONTAINER_TYPES = ("containers", "initContainers", "ephemeralContainers")
_STATUS_FIELDS = {"containers": "containerStatuses", "initContainers": "initContainerStatuses",
                  "ephemeralContainers": "ephemeralContainerStatuses"}

WORKLOAD_KINDS = (
    Kind("Pod", "pods", "CoreV1Api", "list_pod_for_all_namespaces", "list_namespaced_pod", ("spec",)),
    Kind("ReplicationController", "replicationcontrollers", "CoreV1Api",
         "list_replication_controller_for_all_namespaces", "list_namespaced_replication_controller",
         ("spec", "template", "spec")),
    Kind("Deployment", "deployments", "AppsV1Api", "list_deployment_for_all_namespaces",
         "list_namespaced_deployment", ("spec", "template", "spec")),
    Kind("ReplicaSet", "replicasets", "AppsV1Api", "list_replica_set_for_all_namespaces",
         "list_namespaced_replica_set", ("spec", "template", "spec")),
    Kind("StatefulSet", "statefulsets", "AppsV1Api", "list_stateful_set_for_all_namespaces",
         "list_namespaced_stateful_set", ("spec", "template", "spec")),
    Kind("DaemonSet", "daemonsets", "AppsV1Api", "list_daemon_set_for_all_namespaces",
         "list_namespaced_daemon_set", ("spec", "template", "spec")),
    Kind("Job", "jobs", "BatchV1Api", "list_job_for_all_namespaces", "list_namespaced_job",
         ("spec", "template", "spec")),
    Kind("CronJob", "cronjobs", "BatchV1Api", "list_cron_job_for_all_namespaces", "list_namespaced_cron_job",
         ("spec", "jobTemplate", "spec", "template", "spec")),
)


def _job_finished(obj: dict) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return True
    return False


def _rows_of(kind: Kind, context: str) -> Callable[[list[dict]], list[tuple]]:
    is_pod, is_job = kind.kind == "Pod", kind.kind == "Job"

    def consume(items: list[dict]) -> list[tuple]:
        rows = []
        for obj in items:
            md = obj.get("metadata") or {}
            ns, name = md.get("namespace") or "", md.get("name") or ""
            spec: Any = obj
            for key in kind.pod_spec:
                spec = spec.get(key) if isinstance(spec, dict) else None
            if not isinstance(spec, dict):
                continue
            finished = is_job and _job_finished(obj)
            status = (obj.get("status") or {}) if is_pod else {}
            for ctype in CONTAINER_TYPES:
                ids = {}
                if is_pod:
                    ids = {s.get("name"): s.get("imageID") for s in status.get(_STATUS_FIELDS[ctype]) or ()}
                for c in spec.get(ctype) or ():
                    image = c.get("image")
                    if not image:
                        continue
                    cname = c.get("name") or ""
                    rows.append((context, ns, kind.kind, name, cname, ctype, image,
                                 digest_of_image_id(ids.get(cname)) if ids else None, finished))
        return rows

    return consume


def scan_dumps(k: "KubernetesConfig") -> list[tuple]:
    """The same rows from `kubernetes.dumps` (tasks/sources/kubernetes/dumps.py); a malformed dump is a ClusterError."""
    from tasks.common.errors import ClusterError
    from tasks.sources.kubernetes.dumps import WORKLOADS_COMMAND, objects_by_kind

    kinds = {kind.kind: kind for kind in WORKLOAD_KINDS}
    rows = [r for context, name, objs in objects_by_kind(k.dumps, set(kinds), k.namespaces, WORKLOADS_COMMAND,
                                                           ClusterError)
            for r in _rows_of(kinds[name], context)(objs)]
    reporter().finish("kubernetes", f"Kubernetes: {len(rows)} container images in {len(k.dumps)} dump(s)")
    return rows


def scan(k: "KubernetesConfig") -> list[tuple]:
    """Every (context, namespace, kind, name, container, container_type, image, image_id, finished)."""
    if k.dumps:
        return scan_dumps(k)

    def units_of(cl, ns) -> list[Callable[[], list]]:
        return [lambda kind=kind: list_objects(cl, kind, ns, _rows_of(kind, cl.context)) for kind in WORKLOAD_KINDS]

    results, contexts = list_everywhere(k, units_of, "kubernetes",
                                        "Listing workloads in {contexts} Kubernetes context(s)")
    rows = [r for part in results for r in part]
    reporter().finish("kubernetes", f"Kubernetes: {len(rows)} container images in {contexts} context(s)")
    return rows


def workloads_table(k: "KubernetesConfig") -> "pa.Table":
    """A fresh scan as a WORKLOADS table."""
    from tasks.store.schemas import WORKLOADS, from_rows

    return from_rows(scan(k), WORKLOADS)


def extract(config: "RegsweepConfig", store: "Store", now: datetime) -> dict[str, "pa.Table"]:
    """The `workloads` table of a snapshot (schema WORKLOADS)."""
    return {"workloads": workloads_table(config.kubernetes)}


def scan_in_use(k: "KubernetesConfig") -> "pandas.DataFrame":
    """A fresh scan for the sweep's last check: the same rows, finished Jobs dropped."""
    df = workloads_table(k).to_pandas()
    return df[~df["finished"]].reset_index(drop=True)
