"""Talking to registries: one HTTP layer, one status→error map, auth, and a backend per native API.

- `errors`: which HTTP status (and AWS error code) means which typed error and whether it is
  retried — decided here and nowhere else.
- `auth`: credentials by name, Basic and token auth as one `httpx.Auth`, sent only to the
  registry's own origin.
- `distribution`: `RegistryClient`, the OCI Distribution API (catalog, tags, manifests, blobs,
  referrers, deletes) over the shared transport.
- `capabilities`: what a registry lets regsweep do (`probe_registry`), asked before any approval.
- `backends/`: `open_backend(config)` — Distribution, ECR, GitLab, Harbor, GitHub, Docker Hub.

No Prefect tasks: the snapshot and sweep stages call these from theirs. docs/registries.md.
"""
