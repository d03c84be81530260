"""Where a snapshot names an image: the one spelling of a workload container, a Helm revision and a
keep-list line, per row of WORKLOADS, HELM and KEEP_LIST.

The plan's reasons (tasks/plan/evaluate.py, "in use: prod/shop/Deployment/web container app"),
the sightings of earlier snapshots (tasks/plan/history_rules.py) and the snapshot's images missing
from the registry (tasks/snapshot/missing.py) all name places with these functions.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: How a workload's container list (WORKLOADS `container_type`) is named in texts; any other
#: value is a "container".
CONTAINER_TYPES = {"containers": "container", "initContainers": "init container",
                   "ephemeralContainers": "ephemeral container"}


def workload_names(workloads: pa.Table | pd.DataFrame) -> pa.Array | pa.ChunkedArray:
    """`context/namespace/Kind/name <container type> container` per WORKLOADS row."""
    col = lambda name: _strings(workloads[name])  # noqa: E731
    return _join(col("context"), "/", col("namespace"), "/", col("kind"), "/", col("name"), " ",
                 _container_types(col("container_type")), " ", col("container"))


def helm_revision_names(helm: pa.Table | pd.DataFrame, *, status: bool) -> pa.Array | pa.ChunkedArray:
    """`context/namespace/release revision N` per HELM row; with `status`, then ` (deployed)`
    (`unknown` where none was recorded).

    The plan's Helm rule (2) names the status: what the revision is in the snapshot being
    planned. A sighting recorded by an earlier snapshot (tasks/plan/history_rules.py) leaves it
    out, deliberately: a status read then is stale now (the revision deployed a week ago is
    superseded today), and the seen rule keeps an image whatever its revision's status, as
    rule 2 does — so a sighting names the revision only, and its status is not read.
    """
    names = _join(_strings(helm["context"]), "/", _strings(helm["namespace"]), "/", _strings(helm["release"]),
                  " revision ", _strings(helm["revision"]))
    if not status:
        return names
    return _join(names, " (", pc.fill_null(_strings(helm["status"]), "unknown"), ")")


def _container_types(container_type) -> pa.Array | pa.ChunkedArray:
    label = pa.scalar("container")   # any other list, or none recorded
    for key, text in CONTAINER_TYPES.items():
        label = pc.if_else(pc.fill_null(pc.equal(container_type, key), False), text, label)
    return label


def _strings(col) -> pa.Array | pa.ChunkedArray:
    """A pandas or Arrow column as Arrow strings (numbers written out, as `str` writes them)."""
    if isinstance(col, pd.Series):
        col = pa.array(col, from_pandas=True)
    return pc.cast(col, pa.string())


def _join(*parts) -> pa.Array | pa.ChunkedArray:
    return pc.binary_join_element_wise(*parts, "")


def keep_list_names(keep_list: pa.Table | pd.DataFrame) -> pa.Array | pa.ChunkedArray:
    """`file:line` per KEEP_LIST row: where a keep list names an image."""
    return _join(_strings(keep_list["file"]), ":", _strings(keep_list["line"]))
