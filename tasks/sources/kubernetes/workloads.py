"""Kubernetes source: every image a workload references, in every configured context and namespace.

The lists themselves (connecting, pagination, failures as `ClusterError`) are tasks/sources/kubernetes/client.py's,
shared with the Helm source; this module knows the workload kinds and which rows they yield.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from tasks.sources.kubernetes.client import Kind, list_everywhere, list_objects, served_custom_kinds
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

#: Well-known workload-bearing custom resources, (group, plural, kind), scanned wherever the
#: cluster serves them (any version; discovery picks the preferred one) and skipped elsewhere.
CUSTOM_RESOURCES = (
    ("argoproj.io", "workflows", "Workflow"),
    ("argoproj.io", "cronworkflows", "CronWorkflow"),
    ("argoproj.io", "workflowtemplates", "WorkflowTemplate"),
    ("argoproj.io", "clusterworkflowtemplates", "ClusterWorkflowTemplate"),
    ("argoproj.io", "rollouts", "Rollout"),
    ("tekton.dev", "tasks", "Task"),
    ("tekton.dev", "clustertasks", "ClusterTask"),
    ("tekton.dev", "pipelines", "Pipeline"),
    ("tekton.dev", "taskruns", "TaskRun"),
    ("tekton.dev", "pipelineruns", "PipelineRun"),
    ("keda.sh", "scaledjobs", "ScaledJob"),
    ("serving.knative.dev", "services", "Service"),
    ("serving.knative.dev", "configurations", "Configuration"),
    ("serving.knative.dev", "revisions", "Revision"),
    ("apps.openshift.io", "deploymentconfigs", "DeploymentConfig"),
    ("sparkoperator.k8s.io", "sparkapplications", "SparkApplication"),
    ("sparkoperator.k8s.io", "scheduledsparkapplications", "ScheduledSparkApplication"),
)
#: The container_type of a custom resource's rows; the container column holds where in its spec.
CUSTOM_CONTAINER_TYPE = "container"


def wanted_custom_resources(k: "KubernetesConfig") -> list[tuple[str, str | None, str]]:
    """(group, version or None for any, plural): the well-known ones, then the configured ones."""
    return [(g, None, p) for g, p, _ in CUSTOM_RESOURCES] + [(r.group, r.version, r.resource) for r in k.resources]


def _images_under(value: Any, path: str, under_image: bool, out: list[tuple[str, str]]) -> None:
    """(path, string) for every string under a key named `image` anywhere in `value`."""
    if isinstance(value, dict):
        for key, v in value.items():
            _images_under(v, f"{path}.{key}" if path else str(key), under_image or key == "image", out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _images_under(v, f"{path}[{i}]", under_image, out)
    elif under_image and isinstance(value, str) and value.strip():
        out.append((path, value.strip()))


def _custom_rows_of(kind: str, context: str) -> Callable[[list[dict]], list[tuple]]:
    """WORKLOADS rows of a custom resource's objects: every string under an `image` key in the
    spec (a wider net only keeps more), the container column saying where (`templates[0].container.image`)."""
    def consume(items: list[dict]) -> list[tuple]:
        rows = []
        for obj in items:
            md = obj.get("metadata") or {}
            found: list[tuple[str, str]] = []
            _images_under(obj.get("spec"), "", False, found)
            rows.extend((context, md.get("namespace") or "", kind, md.get("name") or "", where,
                         CUSTOM_CONTAINER_TYPE, image, None, False) for where, image in found)
        return rows

    return consume


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


def _dumped_custom_kind(k: "KubernetesConfig") -> Callable[[dict], str | None]:
    """The kind under which a dumped object is a custom resource to scan, else None: by group and
    kind (a configured resource without `kind`: any kind of its group named like its plural)."""
    known = {(g, kind) for g, _, kind in CUSTOM_RESOURCES} | {(r.group, r.kind) for r in k.resources if r.kind}
    loose = {(r.group, r.resource.lower()) for r in k.resources if not r.kind}

    def plurals(kind: str) -> set[str]:
        low = kind.lower()
        return {low, low + "s", low + "es", low[:-1] + "ies" if low.endswith("y") else low + "s"}

    def match(obj: dict) -> str | None:
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(api_version, str) or "/" not in api_version or not isinstance(kind, str):
            return None
        group = api_version.split("/", 1)[0]
        if (group, kind) in known or any((group, p) in loose for p in plurals(kind)):
            return kind
        return None

    return match


def scan_dumps(k: "KubernetesConfig") -> list[tuple]:
    """The same rows from `kubernetes.dumps` (tasks/sources/kubernetes/dumps.py), custom resources
    included (matched by group and kind); a malformed dump is a ClusterError."""
    from tasks.common.errors import ClusterError
    from tasks.sources.kubernetes.dumps import WORKLOADS_COMMAND, dump_context, read_items

    kinds = {kind.kind: kind for kind in WORKLOAD_KINDS}
    custom, wanted_ns, rows = _dumped_custom_kind(k), set(k.namespaces), []
    for dump in k.dumps:
        context = dump_context(dump)
        items = read_items(dump.file, WORKLOADS_COMMAND, lambda msg: ClusterError(msg, context=context))
        builtin: dict[str, list[dict]] = {name: [] for name in kinds}
        for obj in items:
            if wanted_ns and (obj.get("metadata") or {}).get("namespace") not in wanted_ns:
                continue
            cr = custom(obj)
            if cr:
                rows.extend(_custom_rows_of(cr, context)([obj]))
            elif obj["kind"] in builtin:
                builtin[obj["kind"]].append(obj)
        for name, objs in builtin.items():
            rows.extend(_rows_of(kinds[name], context)(objs))
    reporter().finish("kubernetes", f"Kubernetes: {len(rows)} container images in {len(k.dumps)} dump(s)")
    return rows


def scan(k: "KubernetesConfig") -> list[tuple]:
    """Every (context, namespace, kind, name, container, container_type, image, image_id, finished)."""
    if k.dumps:
        return scan_dumps(k)

    wanted = wanted_custom_resources(k)
    custom: dict[int, list[Kind]] = {}   # one discovery per context

    def units_of(cl, ns) -> list[Callable[[], list]]:
        return [lambda kind=kind: list_objects(cl, kind, ns, _rows_of(kind, cl.context)) for kind in WORKLOAD_KINDS]

    def custom_units_of(cl, ns) -> list[Callable[[], list]]:
        if id(cl) not in custom:
            custom[id(cl)] = served_custom_kinds(cl, wanted)
        # a cluster-scoped resource (ClusterWorkflowTemplate) lives in no namespace: listed only
        # when all namespaces are scanned, as a dump's objects are filtered
        return [lambda kind=kind: list_objects(cl, kind, ns, _custom_rows_of(kind.kind, cl.context))
                for kind in custom[id(cl)] if kind.namespaced or ns is None]

    results, contexts = list_everywhere(k, units_of, "kubernetes",
                                        "Listing workloads in {contexts} Kubernetes context(s)",
                                        then=(custom_units_of, "kubernetes-custom",
                                              "Listing workload-bearing custom resources in {contexts} context(s)"))
    rows = [r for part in results for r in part]
    served = sum(len(kinds) for kinds in custom.values())
    reporter().finish("kubernetes-custom", f"Kubernetes: {served} custom resource(s) served")
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
