"""Image references as the plan reads them, and the texts that say where one was found.

Rules 1 (in use), 2 (Helm) and 2b (seen in use or in Helm by earlier snapshots) keep what image
references name. `references` reads them once for all three — and for tasks/plan/batches.py, which
must send each workload and Helm row to the batch holding the repository it names — the same way:
by tag and by digest, a pod's `imageID` too, and a reference into another host by name (fail
closed). Which row a reading came from travels in a passthrough column of the caller's choice.

`workload_names` and `helm_revision_names` are the one spelling of a workload and of a Helm
revision, for the plan's reasons (tasks/plan/evaluate.py) and for the sightings earlier snapshots
recorded (tasks/plan/history_rules.py).
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.oci.reference import RegistryMatcher, digest_of_image_id, match_images, other_host_images

#: How a workload's container list (WORKLOADS `container_type`) is named in texts; any other
#: value is a "container".
CONTAINER_TYPES = {"containers": "container", "initContainers": "init container",
                   "ephemeralContainers": "ephemeral container"}

#: The columns of `references` besides the passthrough one.
REFERENCE_COLUMNS = ["repository", "tag", "digest", "host"]


def references(frame: pd.DataFrame, matcher: RegistryMatcher, *, carry: str, image: str = "image",
               with_ids: bool = False) -> pd.DataFrame:
    """(repository, tag, digest, host, <carry>) per thing an image reference can keep: by tag,
    by digest, and with `with_ids` by the digest in a pod's `image_id` as well.

    `host` is the other host of a reference into another host, read by name (it may still mean
    this registry, spelled in a way the configuration does not list: its same-named repository's
    image is kept rather than guessed away); None for a reference into this registry.
    `carry` names a column of `frame` passed through unchanged: which row a reading came from.
    Invalid references and ones naming no repository give no rows.
    """
    images = frame[image].dropna()
    parsed = pd.concat([match_images(images, matcher).assign(host=None), other_host_images(images, matcher)],
                       ignore_index=True).astype(object)
    readings = pd.DataFrame({"image": frame[image].to_numpy(dtype=object), carry: frame[carry].to_numpy(dtype=object),
                             **({"image_id": frame["image_id"].to_numpy(dtype=object)} if with_ids else {})})
    # with imageIDs, a reference no repository matches may still name a digest by its imageID
    readings = readings.merge(parsed, on="image", how="left" if with_ids else "inner")
    out = [readings.loc[readings["repository"].notna(), [*REFERENCE_COLUMNS, carry]]]
    if with_ids and readings["image_id"].notna().any():
        by_id = readings.merge(_image_id_refs(readings["image_id"], matcher), on="image_id", how="inner")
        # the digest a pod runs, under the repository of its image and of its imageID
        for repository in (by_id["repository"], by_id["id_repository"]):
            out.append(pd.DataFrame({"repository": repository, "tag": None, "digest": by_id["id_digest"],
                                     "host": by_id["host"], carry: by_id[carry]}))
    found = pd.concat(out, ignore_index=True).astype(object)
    return found[found["repository"].notna()].reset_index(drop=True)


def note_other_hosts(refs: pd.DataFrame, text: str, matcher: RegistryMatcher) -> pd.DataFrame:
    """`refs` (from `references`) with its `text` column saying, for a reference into another
    host, why it keeps an image here (`…, by name: host docker.io is not <url> (add it …)`)."""
    other = refs["host"].notna().to_numpy()
    if not other.any():
        return refs
    refs = refs.copy()
    refs.loc[other, text] = (refs.loc[other, text].astype(str) + ", by name: host " + refs.loc[other, "host"].astype(str)
                             + f" is not {matcher.registry_url} (add it to registry.aliases if it is)")
    return refs


def _image_id_refs(image_ids: pd.Series, matcher: RegistryMatcher) -> pd.DataFrame:
    """(image_id, repository or None, digest) for each distinct pod status imageID."""
    rows = []
    for iid in pd.unique(image_ids.dropna()):
        d = digest_of_image_id(iid)
        if d is None:
            continue
        s = str(iid).split("://", 1)[-1]
        # parse the name alone: few distinct names (one per repository), so the matcher's cache hits
        ref = matcher.parse(s.rsplit("@", 1)[0]) if "@" in s else None
        rows.append((iid, ref.repository if ref else None, d))
    return pd.DataFrame(rows, columns=["image_id", "id_repository", "id_digest"], dtype=object)


# ------------------------------------------------------------------ where a reference was found

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
