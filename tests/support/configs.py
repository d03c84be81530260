"""The one way tests build a regsweep configuration: a dict as the YAML file holds it, written to
that file when a test needs one (the CLI, `load_config`, a deployment).

    config(*presets, store=, url=, repositories=, kubeconfig=, write=, **sections)
    SWEEP         the sweep tests' settings: git off, a 2 h fresh window, unlinked images deleted,
                  no cluster unless a kubeconfig is given, Helm off, two deletions at a time

    cfg = parse_config(config(url=registry.url, repositories=[repo], store=tmp_path / "store"))
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))

Presets and sections merge key by key (a nested mapping extends the one before it; any other
value replaces it), so `config(SWEEP, sweep={"maxPlanAge": "24h"})` keeps SWEEP's concurrency.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Mapping, overload

import yaml

#: The sweep tests' configuration around one registry and repository.
SWEEP: Mapping[str, Any] = {
    "registry": {"concurrency": 4},
    "cleanup": {"disableKubernetesBasedPolicy": True, "disableGitHistoryBasedPolicy": True,
                "keepImagesBuiltWithinLastNHours": 2, "unlinkedImages": "delete"},
    "helm": {"enabled": False},
    "sweep": {"concurrency": 2},
}


def merge(base: dict, extra: Mapping) -> dict:
    """`extra` merged into `base` key by key (nested mappings merge, other values replace); `base`."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
    return base


@overload
def config(*presets: Mapping[str, Any], store: str | Path | None = ..., url: str | None = ...,
           repositories: Iterable[str] | None = ..., kubeconfig: str | Path | None = ...,
           write: None = ..., **sections: Any) -> dict: ...


@overload
def config(*presets: Mapping[str, Any], store: str | Path | None = ..., url: str | None = ...,
           repositories: Iterable[str] | None = ..., kubeconfig: str | Path | None = ...,
           write: str | Path, **sections: Any) -> Path: ...


def config(*presets: Mapping[str, Any], store: str | Path | None = None, url: str | None = None,
           repositories: Iterable[str] | None = None, kubeconfig: str | Path | None = None,
           write: str | Path | None = None, **sections: Any) -> dict | Path:
    """A regsweep configuration: `presets` merged in order, then the shorthands, then `sections`
    (top-level keys such as cleanup=, git=, helm=, link=, sweep=, registry=).

    `store` and `url`/`repositories` (registry.url, registry.repositories) are the keys nearly every
    test sets. `kubeconfig` reads the clusters of that file and turns the Kubernetes-based policy
    on. With `write` (a directory, where `regsweep.yaml` is written, or a file path) the
    configuration is written as YAML and that file's path is returned instead of the dict; its
    store, unless given, is the directory `store` beside the file.
    """
    data: dict[str, Any] = {}
    for preset in presets:
        merge(data, preset)
    if store is not None:
        data["store"] = str(store)
    registry: dict[str, Any] = {}
    if url is not None:
        registry["url"] = url
    if repositories is not None:
        registry["repositories"] = list(repositories)
    merge(data, {"registry": registry} if registry else {})
    if kubeconfig is not None:
        merge(data, {"kubernetes": {"kubeconfig": str(kubeconfig)},
                     "cleanup": {"disableKubernetesBasedPolicy": False}})
    merge(data, sections)
    if write is None:
        return data
    path = Path(write)
    if path.is_dir():
        path = path / "regsweep.yaml"
    data.setdefault("store", str(path.parent / "store"))
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
