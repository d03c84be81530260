"""Kubernetes as a source: workloads in use and Helm release history, live or from dumps.

- `client`: connecting (kubeconfig contexts, in-cluster), listing with pagination and 410 restarts,
  running per-context units; `preflight`.
- `workloads`: images every workload kind references, workload-bearing custom resources included
  (`extract`, `scan_in_use` for the sweep's re-check).
- `helm`: Helm release Secrets and ConfigMaps decoded (base64 → gzip → JSON manifest), bounded.
- `dumps`: `kubectl get ... -o json` files as offline input.

Not re-exported: importing the kubernetes client costs about a second. No Prefect tasks.
"""
