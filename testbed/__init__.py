"""The testbed: every server regsweep is run against on loopback, and helpers that fill them.

Tests, benchmarks and `make demo` run Debian's `docker-registry` through `LocalRegistry` and push
into it through the registry's own HTTP API, so what regsweep reads is exactly what a registry
serves; the real `kubernetes` client reads a loopback API server the same way. Not part of the
product (not in the wheel): it is imported from a repository checkout.

    loopback.py LoopbackServer, Loopback, Handler, free_port: what every loopback server shares
    server.py   LocalRegistry: start, configure (TLS, htpasswd, token auth), garbage-collect, stop
    client.py   a synchronous httpx.Client over an async one, for pushes that authenticate
    push.py     push blobs, images, indexes, artifacts and referrers fallback tags; read manifests
    bulk.py     push thousands of tags fast (blobs once, manifests in parallel)
    kube.py     Kubernetes objects and Helm release storage as the API serves them
    kubeapi.py  KubeServer: the Kubernetes list API on loopback; write_kubeconfig
    prefect.py  a Prefect server and process worker on loopback; deployments; flow-run helpers
    demo.py     the sample world of `make demo` (git history, registry images, cluster dumps)
    rundemo.py  `make demo` itself: `python -m testbed.rundemo [--until-paused]`
"""

from testbed.bulk import ImageSpec, push_images, push_repositories, push_tags
from testbed.demo import seed_demo
from testbed.push import (DEFAULT_LAYER, DOCKER_LAYER, MANIFEST_ACCEPT, OCI_LAYER, PushedManifest, PushError,
                          get_manifest, push_artifact, push_blob, push_image, push_index, push_raw_manifest,
                          push_referrers_fallback, tag_manifest)
from testbed.server import LocalRegistry, LocalRegistryError, TokenAuth, write_htpasswd

__all__ = [
    "LocalRegistry", "LocalRegistryError", "TokenAuth", "write_htpasswd",
    "PushError", "PushedManifest", "DEFAULT_LAYER", "OCI_LAYER", "DOCKER_LAYER", "MANIFEST_ACCEPT",
    "push_blob", "push_image", "push_index", "push_artifact", "push_raw_manifest", "push_referrers_fallback",
    "tag_manifest", "get_manifest", "ImageSpec", "push_images", "push_tags", "push_repositories", "seed_demo",
]
