"""Kubernetes objects as the API serves them, and Helm's storage-driver encoders.

For tests, benchmarks and `make demo` (served by testbed/kubeapi.py's KubeServer, or written as
dumps). The builders make objects in the API's shape; `kubectl_list` wraps them the way
`kubectl get A,B -A -o json` prints them, the offline input of tasks/sources/kubernetes/dumps.py.

The Helm encoders mirror helm/helm pkg/storage/driver: `encodeRelease` (util.go) is
json.Marshal → gzip (BestCompression) → base64.StdEncoding; the Secret driver stores that
string as `data.release` bytes, which the API server serialises as base64 again; the ConfigMap
driver stores the string itself. Labels: name, owner=helm, status, version (+ createdAt).
"""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any, Iterable

import yaml

_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


# --- object builders -----------------------------------------------------------------------------

def containers(images: Iterable[str] | dict[str, str], prefix: str = "c") -> list[dict]:
    """Container specs from images (a list: names c0, c1.. ; a dict: {name: image})."""
    items = images.items() if isinstance(images, dict) else ((f"{prefix}{i}", im) for i, im in enumerate(images))
    return [{"name": n, "image": im, "imagePullPolicy": "IfNotPresent", "resources": {}} for n, im in items]


def pod_spec(images, init: Iterable[str] = (), ephemeral: Iterable[str] = ()) -> dict:
    spec: dict[str, Any] = {"containers": containers(images), "restartPolicy": "Always"}
    if init:
        spec["initContainers"] = containers(init, "init")
    if ephemeral:
        spec["ephemeralContainers"] = containers(ephemeral, "debug")
    return spec


def _meta(namespace: str, name: str, labels: dict | None = None) -> dict:
    return {"name": name, "namespace": namespace, "labels": labels or {"app": name},
            "creationTimestamp": "2026-11-01T00:00:00Z"}


def pod(namespace: str, name: str, images, init=(), ephemeral=(), image_ids: dict[str, str] | None = None,
        phase: str = "Running") -> dict:
    """A Pod; `image_ids` maps container name → status imageID (containers, init, ephemeral alike)."""
    spec = pod_spec(images, init, ephemeral)
    image_ids = image_ids or {}
    status: dict[str, Any] = {"phase": phase}
    for key, field_ in (("containers", "containerStatuses"), ("initContainers", "initContainerStatuses"),
                        ("ephemeralContainers", "ephemeralContainerStatuses")):
        if key in spec:
            status[field_] = [{"name": c["name"], "image": c["image"], "imageID": image_ids.get(c["name"], ""),
                               "ready": True, "restartCount": 0} for c in spec[key]]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(namespace, name), "spec": spec, "status": status}


def workload(kind: str, namespace: str, name: str, images, init=(), ephemeral=(), replicas: int = 1,
             job_conditions: list[tuple[str, str]] | None = None) -> dict:
    """A Deployment, ReplicaSet, StatefulSet, DaemonSet, ReplicationController, Job or CronJob."""
    template = {"metadata": {"labels": {"app": name}}, "spec": pod_spec(images, init, ephemeral)}
    api = {"ReplicationController": "v1", "Job": "batch/v1", "CronJob": "batch/v1"}.get(kind, "apps/v1")
    obj: dict[str, Any] = {"apiVersion": api, "kind": kind, "metadata": _meta(namespace, name)}
    if kind == "CronJob":
        obj["spec"] = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}
    elif kind == "Job":
        obj["spec"] = {"template": template, "backoffLimit": 1}
        obj["status"] = {"conditions": [{"type": t, "status": s, "lastTransitionTime": "2026-11-01T00:05:00Z"}
                                        for t, s in (job_conditions or [])]}
    elif kind == "ReplicationController":
        obj["spec"] = {"replicas": replicas, "selector": {"app": name}, "template": template}
    else:
        obj["spec"] = {"selector": {"matchLabels": {"app": name}}, "template": template}
        if kind != "DaemonSet":
            obj["spec"]["replicas"] = replicas
    return obj


# --- Helm storage drivers ------------------------------------------------------------------------

def helm_release(name: str, namespace: str, revision: int, manifest: str, *, status: str = "deployed",
                 chart: str = "app", chart_version: str = "1.0.0", app_version: str | None = "1.0",
                 last_deployed: str = "2026-11-01T10:00:00.123456789Z", hooks: list[dict] | None = None) -> dict:
    """A release as Helm 3's `release.Release` marshals to JSON."""
    md: dict[str, Any] = {"name": chart, "version": chart_version, "apiVersion": "v2"}
    if app_version is not None:
        md["appVersion"] = app_version
    rel = {"name": name,
           "info": {"first_deployed": "2026-10-01T10:00:00Z", "last_deployed": last_deployed,
                    "deleted": "", "description": "Upgrade complete", "status": status},
           "chart": {"metadata": md, "lock": None, "templates": [], "values": {}, "schema": None, "files": []},
           "config": {}, "manifest": manifest, "version": revision, "namespace": namespace}
    if hooks:
        rel["hooks"] = hooks
    return rel


def encode_release(release: dict, compress: bool = True) -> str:
    """helm/helm pkg/storage/driver/util.go encodeRelease: base64(gzip(json)); `compress=False`
    is the pre-compression format decodeRelease still accepts (no gzip magic header)."""
    raw = json.dumps(release, separators=(",", ":")).encode()
    if compress:
        raw = gzip.compress(raw, compresslevel=9, mtime=0)
    return base64.b64encode(raw).decode()


def _helm_labels(release: dict) -> dict[str, str]:
    return {"name": release["name"], "owner": "helm", "status": release["info"]["status"],
            "version": str(release["version"]), "createdAt": "1790000000"}


def helm_secret(release: dict, *, compress: bool = True, payload: str | None = None) -> dict:
    """The Secret driver's object (secrets.go newSecretsObject); `payload` overrides data.release's string."""
    s = payload if payload is not None else encode_release(release, compress)
    return {"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
            "metadata": {"name": f"sh.helm.release.v1.{release['name']}.v{release['version']}",
                         "namespace": release["namespace"], "labels": _helm_labels(release)},
            # Secret.Data is []byte: the API server's JSON carries it base64-encoded once more.
            "data": {"release": base64.b64encode(s.encode()).decode()}}


def helm_configmap(release: dict, *, compress: bool = True, payload: str | None = None) -> dict:
    """The ConfigMap driver's object (cfgmaps.go newConfigMapsObject): data.release is the string."""
    s = payload if payload is not None else encode_release(release, compress)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{release['name']}.v{release['version']}",
                         "namespace": release["namespace"], "labels": _helm_labels(release)},
            "data": {"release": s}}


def manifest(*docs: dict | str) -> str:
    """A rendered multi-document manifest the way Helm stores it (`---\\n# Source: ...`)."""
    out = []
    for i, d in enumerate(docs):
        body = d if isinstance(d, str) else yaml.dump(d, Dumper=_DUMPER, sort_keys=False)
        out.append(f"---\n# Source: chart/templates/t{i}.yaml\n{body}")
    return "\n".join(out)


def kubectl_list(objs: Iterable[dict]) -> dict:
    """`kubectl get A,B -A -o json`'s output: a `List` of objects each carrying kind and apiVersion."""
    return {"apiVersion": "v1", "items": list(objs), "kind": "List", "metadata": {"resourceVersion": ""}}
