"""The four sources of truth, each read into Arrow tables for one snapshot.

Every source module exposes `extract(config, store, now) -> {table name: pyarrow.Table}` and
raises a `SourceError` when it could not read everything (fail closed):

- `registry`: the registry scan (tags, manifests, children, links, blobs), with `blobcache` keeping
  manifests and configs by digest between scans, and `preflight` / `probe_capabilities`;
- `kubernetes/`: the cluster's workloads (`workloads`) and Helm release history (`helm`), live
  through `client` or from `kubectl get -o json` dumps (`dumps`);
- `git`: references and commits of the repository whose history decides what developers need.

Modules are not re-exported here: the snapshot stage imports only the sources a run enables (the
kubernetes client is slow to import and must be imported on one thread). No Prefect tasks: the
snapshot stage runs one task per source (tasks/snapshot/tasks.py).
"""
