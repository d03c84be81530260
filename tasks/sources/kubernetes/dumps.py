"""Offline cluster input: `kubectl get ... -o json` dumps read in place of a live cluster.

For air-gapped sites, audits of a cluster regsweep cannot reach, and the demo. The workload
source reads `kubernetes.dumps` (`kubectl get pods,deploy,rs,sts,ds,job,cronjob,rc -A -o json`,
plus any workload-bearing custom resources, matched by API group and kind) and the Helm source `helm.dumps` (`kubectl get secrets,configmaps -A -l owner=helm -o json`);
the objects then go through the same rules as listed ones. A dump that cannot be read whole
(missing, truncated, not kubectl's JSON) fails its source like a failed list call: the snapshot
is incomplete and nothing is deleted on its strength. A dump is only as fresh as its writer
made it, which includes the sweep's "fresh" cluster re-check: it re-reads the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from tasks.common.errors import ConfigError, SourceError

if TYPE_CHECKING:
    from tasks.config.models import DumpFile, RegsweepConfig

try:  # orjson (installed with Prefect) parses large dumps several times faster
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

#: How to make each kind of dump, for messages.
WORKLOADS_COMMAND = "kubectl get pods,deploy,rs,sts,ds,job,cronjob,rc -A -o json"
HELM_COMMAND = "kubectl get secrets,configmaps -A -l owner=helm -o json"


def dump_context(dump: "DumpFile") -> str:
    """The context name recorded for a dump's objects: the configured one, else the file's stem."""
    return dump.context or Path(dump.file).name.split(".", 1)[0]


def read_items(path: str, command: str, error: Callable[[str], SourceError]) -> list[dict]:
    """The objects of one dump: a `List` (kubectl's output for several kinds), a `<Kind>List`
    or a single object. Anything else raises `error(one line naming the file)`."""
    hint = f"expected the output of `{command}`"
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as e:
        raise error(f"cannot read dump {path}: {e.strerror or e}") from None
    try:
        doc = _loads(data)
    except ValueError as e:
        raise error(f"dump {path} is not valid JSON, truncated or garbled? ({str(e).splitlines()[0]}); {hint}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        raise error(f"dump {path} is not a Kubernetes object or list; {hint}")
    kind = doc["kind"]
    if not kind.endswith("List"):
        return [doc]
    items = doc.get("items")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise error(f"dump {path}: `items` is not a list of objects; {hint}")
    # A typed list (PodList, CronWorkflowList) may omit each item's kind and apiVersion, as the API server does.
    item_kind = kind.removesuffix("List") or None
    for i, item in enumerate(items):
        if item_kind and "kind" not in item:
            item["kind"] = item_kind
        if item_kind and "apiVersion" not in item and isinstance(doc.get("apiVersion"), str):
            item["apiVersion"] = doc["apiVersion"]
        if not isinstance(item.get("kind"), str) or not isinstance(item.get("metadata") or {}, dict):
            raise error(f"dump {path}: item {i} has no kind or a malformed metadata; {hint}")
    return items


def objects_by_kind(dumps: list["DumpFile"], kinds: set[str], namespaces: list[str], command: str,
                    error: Callable[..., SourceError]) -> Iterator[tuple[str, str, list[dict]]]:
    """(context, kind, objects) per dump and wanted kind, objects filtered to `namespaces` (all when empty).

    `error(message, context=...)` builds the source's own error type.
    """
    wanted_ns = set(namespaces)
    for dump in dumps:
        context = dump_context(dump)
        items = read_items(dump.file, command, lambda msg: error(msg, context=context))
        grouped: dict[str, list[dict]] = {k: [] for k in kinds}
        for obj in items:
            if obj["kind"] in grouped and (not wanted_ns or (obj.get("metadata") or {}).get("namespace") in wanted_ns):
                grouped[obj["kind"]].append(obj)
        for kind, objs in grouped.items():
            yield context, kind, objs


def preflight(config: "RegsweepConfig", selected: dict[str, bool]) -> None:
    """ConfigError now (exit 2, naming the key) for a dump file that does not exist, and the
    kubeconfig checks for whichever of the two sources still reads a live cluster."""
    live = False
    for source, section in (("kubernetes", config.kubernetes), ("helm", config.helm)):
        if not selected.get(source):
            continue
        if not section.dumps:
            live = True
        for i, d in enumerate(section.dumps):
            if not os.path.exists(os.path.expanduser(d.file)):
                raise ConfigError(f"{source}.dumps[{i}].file", f"{d.file} does not exist")
    if live:
        from tasks.sources.kubernetes.client import preflight as kube_preflight

        kube_preflight(config.kubernetes)
