"""True bytes, end to end: the BLOBS table, the plan's three figures, the approval form, and what
Distribution's own garbage collector frees on disk after the sweep.

Every figure is checked against what the test pushed: a base layer every image in two
repositories shares, a layer one deleted image shares with a kept image in another repository, a
layer two deleted images share, a multi-platform index and a signed image. Each test pushes into
a registry of its own, so that garbage collection frees nothing another test left behind.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tasks.config.models import load_config
from tasks.oci.manifest import fallback_tag, sha256_digest
from tasks.store.store import Store, new_id
from tasks.sweep.approval import render
from tasks.sweep.execute import delete_targets
from tasks.sweep.loading import prepare
from tasks.common.units import human_bytes
from testbed import get_manifest, push_artifact, push_image, push_index
from tests.support.sweeps import OLD, make_plan, take_snapshot
from tests.support.registry import fresh_registry  # noqa: F401 (fixtures)
from tests.support.sweeps import sweep  # noqa: F401 (fixtures)
from tests.support.configs import SWEEP, config

COSIGN = "application/vnd.dev.cosign.artifact.sig.v1+json"
# Layers of distinct sizes, so that a wrong sum cannot come out right by accident.
BASE = b"B" * 40_000          # every image of app/api and app/web (kept `new` included)
CROSS = b"X" * 7_000          # app/api:old-1 (deleted) and app/tools:keep (kept)
COMMON = b"C" * 2_000         # app/api:old-2 and app/web:old-3, both deleted: freed once
A1, A2 = b"1" * 5_000, b"2" * 3_000
P_AMD, P_ARM = b"a" * 4_000, b"r" * 4_500
SIGNED = b"S" * 2_500
NEW, TOOLS = b"N" * 1_000, b"T" * 1_500

_builds = iter(range(10**9))


def _push(c, repo, tag, layers, built, arch="amd64"):
    return push_image(c, repo, tag, layers=layers,
                      config={"created": built, "architecture": arch, "config": {"Labels": {"build": str(next(_builds))}}})


def blobs_of(body: bytes) -> dict[str, tuple[str, int]]:
    """What a manifest the test pushed stores: its body, its config and its layers (digest -> kind, size)."""
    m = json.loads(body)
    out = {sha256_digest(body): ("manifest", len(body))}
    for kind, descs in (("config", [m["config"]] if "config" in m else []), ("layer", m.get("layers", []))):
        for d in descs:
            out.setdefault(d["digest"], (kind, d["size"]))
    return out


class World:
    """What the test pushed: every manifest's body, which of them the plan must delete, the config."""

    def __init__(self, reg, tmp_path: Path):
        c = self.client = reg.client()
        now = datetime.now(timezone.utc)
        api, web, tools = "app/api", "app/web", "app/tools"
        self.bodies: dict[tuple[str, str], bytes] = {}
        self.deleted: set[tuple[str, str]] = set()
        self.images: dict[tuple[str, str], int] = {}   # deleted image -> its image size (an index: with platforms)

        def keep(repo, d):
            self.bodies[(repo, str(d))] = d.body
            return d

        def gone(repo, d, image_size=None):
            keep(repo, d)
            self.deleted.add((repo, str(d)))
            if image_size is not None:
                self.images[(repo, str(d))] = image_size
            return d

        def size(d):
            return sum(s for _, s in blobs_of(d.body).values())

        for repo, tag, layers in ((api, "old-1", [BASE, CROSS, A1]), (api, "old-2", [BASE, A2, COMMON]),
                                  (web, "old-3", [BASE, COMMON])):
            d = _push(c, repo, tag, layers, OLD)
            gone(repo, d, size(d))
        keep(api, _push(c, api, "new", [BASE, NEW], now))
        keep(tools, _push(c, tools, "keep", [CROSS, TOOLS], now))
        kids = [gone(web, _push(c, web, None, [BASE, layer], OLD, arch), None) for layer, arch in
                ((P_AMD, "amd64"), (P_ARM, "arm64"))]
        index = push_index(c, web, "multi", [(k, {"architecture": k_arch, "os": "linux"})
                                              for k, k_arch in zip(kids, ("amd64", "arm64"))])
        gone(web, index, index.size + sum(size(k) for k in kids))
        signed = _push(c, web, "signed", [SIGNED], OLD)
        gone(web, signed, size(signed))
        sig = push_artifact(c, web, subject=signed, artifact_type=COSIGN)
        gone(web, sig, size(sig))
        body = get_manifest(c, web, fallback_tag(signed))[0]
        referrers = sha256_digest(body)
        self.bodies[(web, referrers)] = body
        self.deleted.add((web, referrers))
        self.images[(web, referrers)] = len(body)
        self.signed, self.index, self.kids = signed, index, kids
        self.shared = {sha256_digest(BASE), sha256_digest(CROSS)}

        self.config_path = config(SWEEP, url=reg.url, repositories=["app/*"], write=tmp_path / "regsweep.yaml")
        self.cfg = load_config(self.config_path)
        self.store = Store(self.cfg.store)

    def blob_rows(self) -> set[tuple]:
        return {(repo, d, blob, kind, size) for (repo, d), body in self.bodies.items()
                for blob, (kind, size) in blobs_of(body).items()}

    def blob_sizes(self, keys) -> dict[str, int]:
        return {blob: size for k in keys for blob, (_, size) in blobs_of(self.bodies[k]).items()}

    def reclaimable(self) -> dict[str, int]:
        """Blobs the deleted manifests use and no kept one does, each once."""
        kept = self.blob_sizes(set(self.bodies) - self.deleted)
        return {b: s for b, s in self.blob_sizes(self.deleted).items() if b not in kept}


@pytest.fixture
def pushed(fresh_registry, tmp_path):
    reg = fresh_registry()
    w = World(reg, tmp_path)
    w.registry = reg
    yield w
    w.client.close()


def _on_disk(reg) -> dict[str, int]:
    """Every blob Distribution stores (manifest bodies included): digest -> size of its data file."""
    root = reg.storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {f"sha256:{p.parent.name}": p.stat().st_size for p in root.glob("*/*/data")}


def test_blobs_table_and_the_plans_three_figures_match_what_was_pushed(pushed):
    sid = take_snapshot(pushed.cfg)
    rows = pushed.store.snapshots.table(sid, "blobs")
    got = {(r["repository"], r["digest"], r["blob"], r["kind"], r["size"]) for r in rows.to_pylist()}
    assert rows.num_rows == len(got)                       # each (manifest, blob) once
    assert got == pushed.blob_rows()
    index_rows = [r for r in got if r[1] == pushed.index]
    assert index_rows == [("app/web", pushed.index, pushed.index, "manifest", pushed.index.size)]  # an index: its body
    # the registry stores each of these blobs with exactly the size recorded
    disk = _on_disk(pushed.registry)
    assert {r[2]: r[4] for r in got} == {b: disk[b] for b in {r[2] for r in got}}

    plan_id = make_plan(pushed.cfg, sid)
    meta = pushed.store.plans.meta(plan_id)
    plan = pushed.store.plans.table(plan_id).to_pandas()
    dele = plan[plan["action"] == "delete"]
    assert set(zip(dele["repository"], dele["digest"])) == pushed.deleted   # the policy did what the test means

    unique = pushed.blob_sizes(pushed.bodies)
    assert meta["unique_bytes"] == sum(unique.values())
    freed = pushed.reclaimable()
    assert meta["bytes_reclaimable"] == sum(freed.values()) and meta["blobs_reclaimable"] == len(freed)
    # spelled out: the shared base layer and the layer a kept image elsewhere uses stay; the layer
    # two deleted images share is freed once
    assert not pushed.shared & set(freed)
    assert freed[sha256_digest(COMMON)] == len(COMMON)
    layers = [A1, A2, COMMON, P_AMD, P_ARM, SIGNED]
    assert sum(len(x) for x in layers) < meta["bytes_reclaimable"] < sum(len(x) for x in layers) + 10_000
    assert meta["image_bytes_deleted"] == sum(pushed.images.values())
    assert meta["image_bytes_deleted"] > meta["bytes_reclaimable"] + 5 * len(BASE)   # BASE in 5 deleted images
    per = meta["repositories"]
    assert sum(v["bytes_reclaimable"] for v in per.values()) == meta["bytes_reclaimable"]
    assert per["app/tools"]["bytes_reclaimable"] == 0 and per["app/tools"]["image_bytes_deleted"] == 0
    assert sum(v["image_bytes_deleted"] for v in per.values()) == meta["image_bytes_deleted"]

    # a resumed sweep: what the rest frees, once the first part is gone, completes the total
    from tasks.snapshot.footprint import Footprint

    fp, ordered = Footprint.load(pushed.store, sid), sorted(pushed.deleted)
    first, rest = ordered[:4], ordered[4:]
    split = [fp.reclaimable(*zip(*first)).total, fp.reclaimable(*zip(*rest), gone=first).total]
    assert sum(split) == meta["bytes_reclaimable"] and all(split)

    # the approval form: the same two figures, by the same function, each saying what it counts
    intent = prepare(pushed.cfg, pushed.store, plan_id)
    assert intent.bytes_reclaimable == meta["bytes_reclaimable"] and intent.bytes == meta["image_bytes_deleted"]
    text = render(intent)
    head = text.split("### ")[0]
    assert f"freed by garbage collection: **{human_bytes(meta['bytes_reclaimable'])}**" in head
    assert f"image sizes added up: {human_bytes(meta['image_bytes_deleted'])}, a layer shared" in head
    assert f"({human_bytes(meta['bytes_reclaimable'])} freed by garbage collection)" in head


def test_garbage_collection_frees_on_disk_exactly_the_plans_reclaimable_bytes(pushed, sweep):
    plan_id = make_plan(pushed.cfg, take_snapshot(pushed.cfg))
    meta = pushed.store.plans.meta(plan_id)
    report = sweep(pushed.cfg, plan_id, approve=True)
    assert report["deleted"] == len(pushed.deleted) and report["failed"] == 0
    assert report["bytes_reclaimable"] == meta["bytes_reclaimable"]
    assert report["image_bytes"] == meta["image_bytes_deleted"]
    assert f"{human_bytes(meta['bytes_reclaimable'])} freed by garbage collection" in report["summary"]

    before = _on_disk(pushed.registry)
    pushed.registry.garbage_collect()
    after = _on_disk(pushed.registry)
    freed = {b: s for b, s in before.items() if b not in after}
    assert not set(after) - set(before)
    assert set(freed) == set(pushed.reclaimable())            # the very blobs, not just the total
    assert sum(freed.values()) == meta["bytes_reclaimable"]
    # what stays is served: the kept images still pull, base layer included
    for repo, tag in (("app/api", "new"), ("app/tools", "keep")):
        assert get_manifest(pushed.client, repo, tag) is not None
    assert pushed.client.head(f"/v2/app/api/blobs/{sha256_digest(BASE)}").status_code == 200


def test_a_snapshot_without_a_blobs_table_gives_unknown_reclaimable_and_nothing_breaks(pushed, run_cli):
    sid = take_snapshot(pushed.cfg)
    # an old snapshot: the same tables but no blobs.parquet, as regsweep wrote before it recorded blobs
    root = Path(pushed.store.path("snapshots"))
    old_sid = new_id()
    shutil.copytree(root / sid, root / old_sid)
    blobs = root / old_sid / "blobs.parquet"
    shutil.rmtree(blobs) if blobs.is_dir() else blobs.unlink()
    meta_path = root / old_sid / "snapshot.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "id": old_sid}))

    res = run_cli("plan", "-c", pushed.config_path, "--snapshot", old_sid)
    assert res.returncode == 0, res.stderr
    plan_id = res.stdout.strip().splitlines()[-1]
    assert "reclaimable unknown" in res.stderr and "warning" not in res.stderr
    meta = pushed.store.plans.meta(plan_id)
    assert meta["complete"] is True and meta["snapshot_id"] == old_sid
    assert meta["bytes_reclaimable"] is None and meta["unique_bytes"] is None and meta["blobs_reclaimable"] is None
    assert meta["image_bytes_deleted"] == sum(pushed.images.values())
    assert all(v["bytes_reclaimable"] is None for v in meta["repositories"].values())

    intent = prepare(pushed.cfg, pushed.store, plan_id)
    assert intent.bytes_reclaimable is None and len(intent.targets) == len(pushed.deleted)
    head = render(intent).split("### ")[0]
    assert "freed by garbage collection: **unknown**" in head
    assert f"image sizes added up: {human_bytes(meta['image_bytes_deleted'])}" in head


def test_a_blobs_table_unreadable_after_the_deletions_leaves_the_figure_unknown_not_the_report(pushed):
    """The deletions have happened: a store that cannot give the blobs now costs the byte figure
    (unknown, with a warning), never the report of what was deleted."""
    plan_id = make_plan(pushed.cfg, take_snapshot(pushed.cfg))
    intent = prepare(pushed.cfg, pushed.store, plan_id)
    assert intent.bytes_reclaimable is not None
    blobs = Path(pushed.store.path("snapshots", intent.snapshot_id, "blobs.parquet"))
    blobs.write_bytes(b"not parquet")
    report = delete_targets(pushed.cfg, pushed.store, intent)
    assert report.deleted == len(pushed.deleted) and report.failed == 0
    assert report.bytes_reclaimable is None
    assert "unknown freed by garbage collection" in report.summary()
    assert any("reclaimable bytes unknown" in m and "blobs.parquet" in m for m in report.notes["warnings"]["messages"])
    for repo, tag in (("app/api", "new"), ("app/tools", "keep")):
        assert get_manifest(pushed.client, repo, tag) is not None
