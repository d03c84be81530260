"""The registry testbed: a real Docker Distribution server on loopback and helpers that fill it.

Tests, benchmarks and `make demo` run Debian's `docker-registry` through `LocalRegistry` and push
into it through the registry's own HTTP API, so what regsweep reads is exactly what a registry
serves. Not part of the product (not in the wheel): it is imported from a repository checkout.

    server.py   LocalRegistry: start, configure (TLS, htpasswd, token auth), garbage-collect, stop
    client.py   a synchronous httpx.Client over an async one, for pushes that authenticate
    push.py     push blobs, images, indexes, artifacts and referrers fallback tags; read manifests
    bulk.py     push thousands of tags fast (blobs once, manifests in parallel)
    demo.py     seed_demo: the sample registry of `make demo`
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
