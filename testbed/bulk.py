"""Push many images at once: blobs uploaded once and mounted elsewhere, manifests PUT in parallel.

The registry's CPU is the limit, not the client's: thousands of tags take seconds on tmpfs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Sequence

import httpx

from tasks.oci.manifest import sha256_digest
from testbed.push import (DEFAULT_LAYER, PushedManifest, build_image, complete_upload, expect_status, push_blob,
                          put_manifest)



@dataclass
class ImageSpec:
    """One image for `push_images`: the arguments of `push_image`, plus more tags for the same manifest."""

    repo: str
    tag: str | None
    layers: Sequence[bytes] = (DEFAULT_LAYER,)
    config: Mapping | None = None
    annotations: Mapping[str, str] | None = None
    media_type: str = "oci"
    extra_tags: Sequence[str] = ()


def _parallel(fn: Callable, items: Sequence, workers: int) -> list:
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def _mount_or_upload(client: httpx.Client, repo: str, data: bytes, source: str) -> None:
    """Cross-repository mount (one request) of a blob already in `source`; upload if refused."""
    digest = sha256_digest(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": source})
    if r.status_code == 201:
        return
    complete_upload(client, expect_status(r, f"mount {digest} into {repo}", (202,)), repo, data)


def push_images(client: httpx.Client, specs: Iterable[ImageSpec], *, workers: int = 8) -> list[PushedManifest]:
    """Push many images in parallel; returns their digests in order.

    Every distinct blob is uploaded once and mounted into the other repositories that need it, and
    manifests are PUT by `workers` threads: the registry's CPU is the limit, not the client's.
    """
    specs = list(specs)
    built = [build_image(s.layers, s.config, s.annotations, s.media_type) for s in specs]
    needs: dict[str, tuple[bytes, list[str]]] = {}
    for spec, (blobs, _, _) in zip(specs, built):
        for blob in blobs:
            data, repos = needs.setdefault(sha256_digest(blob), (blob, []))
            if spec.repo not in repos:
                repos.append(spec.repo)
    _parallel(lambda item: push_blob(client, item[1][0], item[0], check_exists=False),
              [(data, repos) for data, repos in needs.values()], workers)
    _parallel(lambda item: _mount_or_upload(client, *item),
              [(repo, data, repos[0]) for data, repos in needs.values() for repo in repos[1:]], workers)

    def put(i: int) -> PushedManifest:
        spec, (_, body, manifest_type) = specs[i], built[i]
        return put_manifest(client, spec.repo, spec.tag or sha256_digest(body), body, manifest_type)

    digests = _parallel(put, range(len(specs)), workers)
    # More tags on a manifest only once it exists, so no two writers store the same manifest blob.
    _parallel(lambda job: put_manifest(client, *job),
              [(spec.repo, extra, built[i][1], built[i][2])
               for i, spec in enumerate(specs) for extra in spec.extra_tags], workers)
    return digests


def push_tags(client: httpx.Client, repo: str, tags: Sequence[str], *, distinct: bool = True,
              created: datetime | str | Callable[[str], datetime | str] | None = None,
              labels: Callable[[str], Mapping[str, str]] | Mapping[str, str] | None = None,
              annotations: Callable[[str], Mapping[str, str]] | Mapping[str, str] | None = None,
              layers: Sequence[bytes] = (DEFAULT_LAYER,), media_type: str = "oci",
              workers: int = 8) -> dict[str, PushedManifest]:
    """Push `tags` into `repo` fast; returns tag → digest.

    `distinct=True` gives every tag its own manifest (a `dev.regsweep.testbed.tag` annotation, so
    configs are shared unless `created`/`labels` differ per tag: one PUT per tag); `distinct=False`
    points every tag at one manifest. `created`, `labels` and `annotations` may be callables of the tag.
    """
    return push_repositories(client, {repo: tags}, distinct=distinct, created=created, labels=labels,
                             annotations=annotations, layers=layers, media_type=media_type,
                             workers=workers)[repo]


def push_repositories(client: httpx.Client, tags_by_repo: Mapping[str, Sequence[str]], *, distinct: bool = True,
                      created: datetime | str | Callable[[str], datetime | str] | None = None,
                      labels: Callable[[str], Mapping[str, str]] | Mapping[str, str] | None = None,
                      annotations: Callable[[str], Mapping[str, str]] | Mapping[str, str] | None = None,
                      layers: Sequence[bytes] = (DEFAULT_LAYER,), media_type: str = "oci",
                      workers: int = 8) -> dict[str, dict[str, PushedManifest]]:
    """`push_tags` over many repositories at once: {repo: [tags]} → {repo: {tag: digest}}."""

    def value(v, tag):
        return v(tag) if callable(v) else v

    def spec(repo: str, tag: str, extra: Sequence[str] = ()) -> ImageSpec:
        config: dict[str, Any] = {"config": {"Labels": dict(value(labels, tag) or {})}}
        when = value(created, tag)
        if when is not None:
            config["created"] = when
        tag_annotations = {"dev.regsweep.testbed.tag": tag} if distinct else {}
        tag_annotations.update(value(annotations, tag) or {})
        return ImageSpec(repo, tag, layers, config, tag_annotations or None, media_type, extra)

    specs, order = [], []
    for repo, tags in tags_by_repo.items():
        tags = list(tags)
        if not tags:
            continue
        if distinct:
            specs += [spec(repo, t) for t in tags]
            order += [(repo, [t]) for t in tags]
        else:
            specs.append(spec(repo, tags[0], tags[1:]))
            order.append((repo, tags))
    digests = push_images(client, specs, workers=workers)
    out: dict[str, dict[str, PushedManifest]] = {repo: {} for repo in tags_by_repo}
    for (repo, tags), digest in zip(order, digests):
        out[repo].update(dict.fromkeys(tags, digest))
    return out
