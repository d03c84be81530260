"""Image references as the plan reads them, and the texts that say where one was found.

Rules 1 (in use, by workloads and keep lists), 2 (Helm) and 2b (seen in use or in Helm by earlier
snapshots) keep what image references name. `references` reads them once for all three — and for tasks/plan/batches.py, which
must send each workload and Helm row to the batch holding the repository it names — the same way:
by tag and by digest, a pod's `imageID` too, and a reference into another host by name (fail
closed). Which row a reading came from travels in a passthrough column of the caller's choice.

`workload_names`, `helm_revision_names` and `keep_list_names` (tasks/snapshot/places.py, imported
here) are the one spelling of a workload, of a Helm revision and of a keep-list line, for the
plan's reasons (tasks/plan/evaluate.py), for the sightings earlier snapshots recorded
(tasks/plan/history_rules.py) and for the snapshot's images missing from the registry.
"""

from __future__ import annotations

import pandas as pd

from tasks.oci.reference import RegistryMatcher, digest_of_image_id, match_images, other_host_images
# The one spelling of where a snapshot names an image lives with the snapshot, whose list of images
# missing from the registry (tasks/snapshot/missing.py) names places as the plan's reasons do.
from tasks.snapshot.places import (CONTAINER_TYPES, helm_revision_names, keep_list_names,  # noqa: F401
                                   workload_names)

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
