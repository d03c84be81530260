"""Cluster and Helm extraction benchmark: regsweep against fetching the same pages raw, same run.

    .venv/bin/python benchmarks/bench_cluster.py [--workloads 5000] [--namespaces 200]
                                                 [--revisions 20000] [--runs 3] [--page-size 500]

A loopback Kubernetes API server (tests/support/kube.py) runs in its own process, holding
`--workloads` workloads over `--namespaces` namespaces (Deployments, their current and old
ReplicaSets, Pods with status imageIDs, StatefulSets, DaemonSets, Jobs, CronJobs) and
`--revisions` Helm release revisions stored by the Secret driver exactly as Helm encodes them.
Objects are serialised once and pages cached, so serving costs little.

Each regsweep run is a fresh process calling `tasks.sources.kubernetes.workloads.extract` / `tasks.sources.kubernetes.helm.extract`
through the real client and a real kubeconfig; it reports wall time and its peak RSS growth
over the baseline after imports (ru_maxrss). The peer fetches the very same pages (same
limit/continue/labelSelector) with plain httpx, reading bodies without parsing them: the
floor any client pays for the bytes. Prints medians of `--runs` runs and the ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REGISTRY = "registry.example.com"
_PAD = {"kubectl.kubernetes.io/last-applied-configuration": "x" * 600, "team": "payments",
        "deployment.kubernetes.io/revision": "12"}


# --- the cluster ---------------------------------------------------------------------------------

def _objects(workloads: int, namespaces: int, revisions: int):
    """Workloads and Helm release Secrets, shaped and sized like a real cluster's."""
    import yaml

    from testbed.kube import helm_release, helm_secret, manifest, pod, workload

    per_ns = max(1, workloads // namespaces)
    # a namespace's share: 3 Deployments each with 2 ReplicaSets (one old, 0 replicas) and a Pod,
    # then StatefulSet, DaemonSet, Jobs, CronJob, bare Pods to fill
    plan = (["Deployment", "ReplicaSet", "ReplicaSet", "Pod"] * 3 + ["StatefulSet", "Pod", "Job", "Job",
            "CronJob", "DaemonSet", "ReplicationController"])
    objs = []
    n = 0
    for ns_i in range(namespaces):
        ns = f"team-{ns_i:03d}"
        for i in range(per_ns):
            kind = plan[i % len(plan)]
            name = f"svc-{i:03d}"
            images = [f"{REGISTRY}/{ns}/{name}:v{i}-{ns_i}", f"{REGISTRY}/platform/envoy:1.{i % 7}"]
            init = [f"{REGISTRY}/platform/migrate:{i % 5}"]
            if kind == "Pod":
                o = pod(ns, f"{name}-7d9f8-x{i}", images, init=init,
                        image_ids={"c0": f"docker-pullable://{REGISTRY}/{ns}/{name}@sha256:{i:064x}",
                                   "c1": f"{REGISTRY}/platform/envoy@sha256:{i + 1:064x}"})
            elif kind == "Job":
                o = workload(kind, ns, f"{name}-{i}", images, init=init,
                             job_conditions=[("Complete", "True")] if i % 2 else [])
            else:
                o = workload(kind, ns, f"{name}-{i}", images, init=init, replicas=0 if i % 2 else 2)
            o["metadata"]["annotations"] = _PAD
            objs.append(o)
            n += 1
            if n >= workloads:
                break
    releases_per_ns = max(1, revisions // namespaces // 10)
    revs_per_release = max(1, revisions // (namespaces * releases_per_ns))
    static = [yaml.dump(d, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)) for d in [
              {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}},
              {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"},
               "spec": {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "app"}}},
              {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config"},
               "data": {"settings.yaml": "log: info\n" * 40}}]]
    dep = workload("Deployment", "@NS@", "@REL@", [f"{REGISTRY}/@NS@/@REL@:build-@REV@",
                                                   f"{REGISTRY}/platform/envoy:1.@E@"],
                   init=[f"{REGISTRY}/platform/migrate:@M@"])
    dep["spec"]["template"]["metadata"]["annotations"] = {"checksum/config": "@SUM@"}
    dep_template = yaml.dump(dep, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)
    count = 0
    for ns_i in range(namespaces):
        ns = f"team-{ns_i:03d}"
        for r in range(releases_per_ns):
            for rev in range(1, revs_per_release + 1):
                if count >= revisions:
                    break
                # rendered once as YAML, then only the per-revision values substituted (speed)
                dep = dep_template.replace("@NS@", ns).replace("@REL@", f"rel-{r}").replace(
                    "@REV@", str(rev)).replace("@E@", str(rev % 3)).replace("@M@", str(rev % 4)).replace(
                    "@SUM@", f"{rev:064x}")
                rel = helm_release(f"rel-{r}", ns, rev, manifest(*static, dep),
                                   status="deployed" if rev == revs_per_release else "superseded",
                                   chart=f"rel-{r}", chart_version=f"1.{rev}.0", app_version=f"{rev}")
                objs.append(helm_secret(rel))
                count += 1
    return objs


def _serve(conn, workloads: int, namespaces: int, revisions: int) -> None:
    from testbed.kubeapi import KubeServer

    t = time.monotonic()
    server = KubeServer()
    server.record_requests = False
    server.extend(_objects(workloads, namespaces, revisions))
    server.start()
    conn.send((server.url, time.monotonic() - t))
    conn.recv()  # until the parent is done
    server.stop()


# --- the peer: the same pages, read raw ----------------------------------------------------------

_CONTINUE = re.compile(rb'"continue":"([^"]+)"')


def fetch_raw(url: str, lists: list[tuple[str, dict]], page_size: int) -> tuple[float, int]:
    """Fetch every page of every list with httpx, bodies read but not parsed; (seconds, bytes)."""
    import httpx

    started, total = time.perf_counter(), 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for path, extra in lists:
            params = {"limit": str(page_size), **extra}
            while True:
                body = client.get(path, params=params).content
                total += len(body)
                m = _CONTINUE.search(body, 0, 400)  # the token sits in the list metadata, before items
                if not m:
                    break
                params = {**params, "continue": m.group(1).decode()}
    return time.perf_counter() - started, total


def peer_lists() -> dict[str, list[tuple[str, dict]]]:
    from tasks.sources.kubernetes.workloads import WORKLOAD_KINDS
    from testbed.kubeapi import RESOURCES

    workloads = [(f"{RESOURCES[k.plural][0]}/{k.plural}", {}) for k in WORKLOAD_KINDS]
    helm = [("/api/v1/secrets", {"labelSelector": "owner=helm"}), ("/api/v1/configmaps", {"labelSelector": "owner=helm"})]
    return {"kubernetes": workloads, "helm": helm}


# --- one regsweep run (child process) ------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(source: str, kubeconfig: str, page_size: int) -> None:
    from datetime import datetime, timezone

    from tasks.sources.kubernetes import workloads as cluster

    from tasks.sources.kubernetes import helm

    from tasks.sources.kubernetes import client as kube
    from tasks.config.models import parse_config
    from tasks.store.schemas import HELM, WORKLOADS, from_rows
    from tasks.store.store import Store

    cfg = parse_config({"store": tempfile.mkdtemp(), "registry": {"url": f"https://{REGISTRY}"},
                        "kubernetes": {"kubeconfig": kubeconfig, "pageSize": page_size, "timeout": 60}})
    # Warm up what is paid once per process (imports, the client's per-method validators):
    # one single-item page of each list, and an empty table.
    module = cluster if source == "kubernetes" else helm
    kinds = cluster.WORKLOAD_KINDS if source == "kubernetes" else (kube.SECRETS, kube.CONFIGMAPS)
    for cl in kube.connect(cfg.kubernetes):
        for kind in kinds:
            kube._get_page(cl, kind, None, limit=1)
        cl.close()
    from_rows([], WORKLOADS if source == "kubernetes" else HELM)
    # Reset the peak-RSS mark (Linux: clear_refs 5), so VmHWM is the peak of the run alone.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kb("VmRSS")
    started = time.perf_counter()
    tables = module.extract(cfg, Store(cfg.store), datetime.now(timezone.utc))
    seconds = time.perf_counter() - started
    peak = _status_kb("VmHWM")
    table = next(iter(tables.values()))
    print(json.dumps({"seconds": seconds, "peak_mb": max(0, peak - base) / 1024, "rows": table.num_rows}))


def child_env(root: Path) -> dict[str, str]:
    """Children may cache bytecode in a private temporary prefix, so that a
    PYTHONDONTWRITEBYTECODE environment does not make each one recompile every import."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(root)
    env["PYTHONPYCACHEPREFIX"] = _PYCACHE
    return env


_PYCACHE = tempfile.mkdtemp(prefix="bench-cluster-pycache-")


def run_child(source: str, kubeconfig: str, page_size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", source, "--kubeconfig", kubeconfig,
                          "--page-size", str(page_size)], capture_output=True, text=True, timeout=300,
                         env=child_env(ROOT))
    if out.returncode != 0:
        raise SystemExit(f"{source} run failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", type=int, default=5000)
    ap.add_argument("--namespaces", type=int, default=200)
    ap.add_argument("--revisions", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--page-size", type=int, default=500)
    ap.add_argument("--child")
    ap.add_argument("--kubeconfig")
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.kubeconfig, a.page_size)

    from testbed.kubeapi import write_kubeconfig

    parent, child_conn = mp.get_context("fork").Pipe()
    proc = mp.get_context("fork").Process(target=_serve, args=(child_conn, a.workloads, a.namespaces, a.revisions),
                                          daemon=True)
    proc.start()
    url, gen_s = parent.recv()
    print(f"cluster: {a.workloads} workloads in {a.namespaces} namespaces, {a.revisions} Helm revisions "
          f"(generated in {gen_s:.1f}s), page size {a.page_size}, {a.runs} runs")
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = str(write_kubeconfig(Path(tmp) / "kubeconfig", {"bench": (url, "bench-token")}))
        lists = peer_lists()
        for source in ("kubernetes", "helm"):
            fetch_raw(url, lists[source], a.page_size)  # warm the server's page cache
            peer = [fetch_raw(url, lists[source], a.page_size) for _ in range(a.runs)]
            ours = [run_child(source, kubeconfig, a.page_size) for _ in range(a.runs)]
            p_s = statistics.median(s for s, _ in peer)
            o_s = statistics.median(r["seconds"] for r in ours)
            mem = statistics.median(r["peak_mb"] for r in ours)
            mb = peer[0][1] / 1e6
            print(f"{source:10s} regsweep {o_s:6.2f}s  rows {ours[0]['rows']:6d}  peak RSS +{mem:6.1f} MB   | "
                  f"raw httpx fetch of the same pages {p_s:5.2f}s ({mb:.1f} MB)  | ratio {o_s / p_s:5.1f}x")
    parent.send("done")
    proc.join(10)
    shutil.rmtree(_PYCACHE, ignore_errors=True)


if __name__ == "__main__":
    main()
