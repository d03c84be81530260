"""Peak memory of the Helm source facing a gzip bomb, beside the same cluster without one.

    .venv/bin/python benchmarks/bench_hostile_helm.py [--bomb-mb 2] [--releases 50] [--max-release-mb 64]

A loopback Kubernetes API server (tests/support/kube.py) holds `--releases` ordinary releases
stored by Helm's Secret driver; the hostile cluster holds one more: a release Secret whose
payload is a `--bomb-mb` MB gzip stream of zeros (about 1,000:1, so 2 MB is 2 GiB once
decompressed), which anyone allowed to create a Secret could store. Each run is a fresh process
that takes the snapshot's Helm part (`run_source("helm", ...)`, which records a failure instead
of raising) through the real client, and reports its peak RSS growth over the baseline after
imports (VmHWM after clear_refs), the source's status, and its error line.

The hostile run must fail the source naming the release and stay within a small multiple of
helm.maxReleaseBytes (`--max-release-mb`), not of the bomb's decompressed size.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 2**20
TOKEN = "bench-hostile-helm-token"


def gzip_bomb(compressed_mb: float) -> tuple[bytes, int]:
    """A valid gzip stream of about `compressed_mb` MB that decompresses to zeros, built in about
    a second: one deflated 64 MiB segment, made independent by a full flush, repeated."""
    chunk = bytes(64 * MIB)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)   # raw deflate: the gzip framing is written here
    segment = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    copies = max(1, round(compressed_mb * 1e6 / len(segment)))
    crc = 0
    for _ in range(copies):
        crc = zlib.crc32(chunk, crc)
    size = copies * len(chunk)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    body = segment * copies + b"\x03\x00"            # an empty final block ends the stream
    return header + body + crc.to_bytes(4, "little") + (size % 2**32).to_bytes(4, "little"), size


def objects(releases: int, bomb_mb: float | None) -> tuple[list[dict], int, int]:
    """The cluster's release Secrets, the bomb's gzip size and its decompressed size (0, 0: none)."""
    from testbed.kube import helm_release, helm_secret, manifest, workload

    objs = []
    for i in range(releases):
        m = manifest(workload("Deployment", f"team-{i % 10}", f"app-{i}", [f"registry.example.com/app-{i}:v{j}"
                                                                          for j in range(3)]),
                     {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"app-{i}"},
                      "spec": {"ports": [{"port": 80}]}})
        objs.append(helm_secret(helm_release(f"app-{i}", f"team-{i % 10}", 1, m)))
    bomb = b""
    if bomb_mb:
        bomb, decompressed = gzip_bomb(bomb_mb)
        objs.append(helm_secret(helm_release("bomb", "team-0", 1, ""), payload=base64.b64encode(bomb).decode()))
    return objs, len(bomb), (decompressed if bomb else 0)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(kubeconfig: str, max_release_mb: int) -> None:
    from datetime import datetime, timezone

    from tasks.config.models import parse_config
    from tasks.snapshot.take import run_source
    from tasks.sources.kubernetes import client as kube

    store = tempfile.mkdtemp()
    cfg = parse_config({"store": store, "registry": {"url": "https://registry.example.com"},
                        "kubernetes": {"kubeconfig": kubeconfig, "timeout": 120},
                        "helm": {"maxReleaseBytes": max_release_mb * MIB}})
    # Paid once per process, as in bench_cluster.py: imports and the client's lazily loaded API.
    for cl in kube.connect(cfg.kubernetes):
        for kind in (kube.SECRETS, kube.CONFIGMAPS):
            kube._get_page(cl, kind, None, limit=1)
        cl.close()
    staging = Path(store) / "staging"
    staging.mkdir()
    with open("/proc/self/clear_refs", "w") as f:   # VmHWM from here on is this run's peak
        f.write("5")
    base = _status_kb("VmRSS")
    started = time.perf_counter()
    st = run_source("helm", cfg, str(staging), datetime.now(timezone.utc))
    seconds = time.perf_counter() - started
    peak = _status_kb("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_mb": max(0, peak - base) / 1024, "status": st.status,
                      "rows": st.rows, "error": st.error}))


def run_child(kubeconfig: str, max_release_mb: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--child", "--kubeconfig", kubeconfig,
                          "--max-release-mb", str(max_release_mb)], capture_output=True, text=True, timeout=900, env=env)
    if out.returncode != 0:
        raise SystemExit(f"run failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bomb-mb", type=float, default=2.0, help="compressed size of the gzip bomb (MB)")
    ap.add_argument("--releases", type=int, default=50, help="ordinary releases in both clusters")
    ap.add_argument("--max-release-mb", type=int, default=64, help="helm.maxReleaseBytes, in MiB")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--kubeconfig")
    a = ap.parse_args()
    if a.child:
        return child(a.kubeconfig, a.max_release_mb)

    from testbed.kubeapi import KubeServer, write_kubeconfig

    print(f"helm.maxReleaseBytes {a.max_release_mb} MiB; {a.releases} ordinary releases in each cluster")
    with tempfile.TemporaryDirectory() as tmp:
        for label, bomb in (("normal", None), ("gzip bomb", a.bomb_mb)):
            objs, gz, decompressed = objects(a.releases, bomb)
            server = KubeServer(token=TOKEN).start()
            try:
                server.add(*objs)
                kubeconfig = str(write_kubeconfig(Path(tmp) / f"kubeconfig-{label.replace(' ', '-')}",
                                                  {"bench": (server.url, TOKEN)}))
                r = run_child(kubeconfig, a.max_release_mb)
            finally:
                server.stop()
            what = (f"+ a {gz / 1e6:.1f} MB gzip stream, {decompressed / 2**30:.1f} GiB decompressed, "
                    f"{len(json.dumps(objs[-1])) / 1e6:.1f} MB as a Secret") if bomb else "only"
            print(f"{label:9s} ({what}): helm source {r['status']:6s} rows {r['rows']:4d}  "
                  f"peak RSS +{r['peak_mb']:6.1f} MB  {r['seconds']:5.2f}s")
            if r["error"]:
                print(f"          error: {r['error']}")


if __name__ == "__main__":
    main()
