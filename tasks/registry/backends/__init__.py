"""Registry backends: listing and deletion through the API a registry is best served by (`registry.api`).

Every backend has one interface (tasks/registry/backends/base.py): list repositories, list tags with their
digests and whatever times the API reports, resolve a tag, delete a manifest or a lone tag, and
answer the capability probe. `distribution` (the default) does all of it through the OCI
Distribution API; the native ones (`ecr`, `gitlab`, `harbor`, `github`, `dockerhub`) list and
delete through their own APIs. Manifests, configs and referrers are read through the
Distribution API in every case (`Backend.oci`), since the keep rules need their content.
"""

from __future__ import annotations

import importlib

from tasks.registry.backends.base import PROBE_DIGEST, Backend, TagInfo
from tasks.config.models import RegistryConfig
from tasks.registry.transport import Bounds, RetryPolicy

_MODULES = {"distribution": ("tasks.registry.backends.base", "Backend"), "ecr": ("tasks.registry.backends.ecr", "EcrBackend"),
            "gitlab": ("tasks.registry.backends.gitlab", "GitLabBackend"), "harbor": ("tasks.registry.backends.harbor", "HarborBackend"),
            "github": ("tasks.registry.backends.github", "GitHubBackend"),
            "dockerhub": ("tasks.registry.backends.dockerhub", "DockerHubBackend")}


def backend_class(api: str) -> type[Backend]:
    module, name = _MODULES[api]
    return getattr(importlib.import_module(module), name)


def open_backend(config: RegistryConfig, retry: RetryPolicy | None = None, bounds: Bounds | None = None) -> Backend:
    """The backend `config.api` selects; use as `async with open_backend(cfg) as backend:`."""
    return backend_class(config.api)(config, retry, bounds)


__all__ = ["PROBE_DIGEST", "Backend", "TagInfo", "backend_class", "open_backend"]
