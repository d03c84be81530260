"""`regsweep restore`: a sweep undone until the registry's garbage collector runs.

Images are pushed to a Distribution registry of the test's own, planned and swept by the real
flow; `regsweep restore` (the installed command) must then bring back exactly what went (tags and
digests, an index with its platform manifests), leave a tag re-pushed meanwhile where it is, and,
after `docker-registry garbage-collect`, say per item that a blob is gone and restore nothing.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tasks.config.models import load_config
from testbed import push_image, push_index
from tests.support.registry import fresh_registry  # noqa: F401 (fixtures)
from tests.support.sweeps import OLD, make_plan, resolves_to, survivors, take_snapshot
from tests.support.sweeps import sweep  # noqa: F401 (fixtures)
from tests.support.configs import SWEEP, config

REPO = "app/web"
_builds = iter(range(10**9))


def _push(c, tag, built, layer: bytes, arch="amd64"):
    return push_image(c, REPO, tag, layers=[layer],
                      config={"created": built, "architecture": arch,
                              "config": {"Labels": {"build": str(next(_builds))}}})


class World:
    """Two old images, an old two-platform index (all deleted by the plan) and a new image (kept)."""

    def __init__(self, reg, tmp_path):
        c = self.client = reg.client()
        self.registry = reg
        now = datetime.now(timezone.utc)
        self.old1 = _push(c, "old-1", OLD, b"1" * 3000)
        self.old2 = _push(c, "old-2", OLD, b"2" * 3000)
        self.kids = [_push(c, None, OLD, layer, arch) for layer, arch in ((b"a" * 2000, "amd64"), (b"r" * 2000, "arm64"))]
        self.index = push_index(c, REPO, "multi", [(k, {"architecture": a, "os": "linux"})
                                                  for k, a in zip(self.kids, ("amd64", "arm64"))])
        self.new = _push(c, "new", now, b"n" * 1000)
        self.config_path = config(SWEEP, url=reg.url, repositories=["app/*"], write=tmp_path / "regsweep.yaml")
        self.cfg = load_config(self.config_path)
        self.before = survivors(c, REPO)

    def deleted_tags(self) -> dict[str, str]:
        return {"old-1": str(self.old1), "old-2": str(self.old2), "multi": str(self.index)}


@pytest.fixture
def swept(fresh_registry, tmp_path, sweep):
    w = World(fresh_registry(), tmp_path)
    w.plan_id = make_plan(w.cfg, take_snapshot(w.cfg))
    report = sweep(w.cfg, w.plan_id, approve=True)
    assert report["deleted"] == 5 and report["failed"] == 0     # 2 images, the index and its 2 platforms
    assert survivors(w.client, REPO) == {"new": str(w.new)}
    for d in (w.old1, w.old2, w.index, *w.kids):
        assert resolves_to(w.client, REPO, str(d)) is None
    yield w
    w.client.close()


def _restore(run_cli, w, *args):
    return run_cli("restore", "--config", w.config_path, "--sweep", w.plan_id, *args)


def test_restore_brings_back_exactly_the_deleted_tags_and_digests_an_index_with_its_platforms(swept, run_cli):
    w = swept
    r = _restore(run_cli, w)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == (f"restore of sweep {w.plan_id} in {w.cfg.registry.url}: restored 5 manifests and 3 tags, "
                         "0 already there")
    # pulled again by tag and by digest: the very manifests that were deleted, nothing else
    assert survivors(w.client, REPO) == w.before
    for d in (w.old1, w.old2, w.index, *w.kids):
        assert resolves_to(w.client, REPO, str(d)) == str(d)
        assert f"restored {REPO}@{d}" in lines
    for tag, digest in w.deleted_tags().items():
        assert resolves_to(w.client, REPO, tag) == digest
        assert f"restored {REPO}:{tag}" in lines
    # the platform manifests were uploaded before the index that lists them
    assert max(lines.index(f"restored {REPO}@{k}") for k in w.kids) < lines.index(f"restored {REPO}@{w.index}")

    again = _restore(run_cli, w)   # nothing left to do, and said so
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1].endswith("restored 0 manifests and 0 tags, 8 already there")


def test_restore_of_one_tag_brings_back_that_image_only(swept, run_cli):
    w = swept
    r = _restore(run_cli, w, "--repository", REPO, "--tag", "multi")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].endswith("restored 3 manifests and 1 tags, 0 already there")
    assert resolves_to(w.client, REPO, "multi") == str(w.index)
    assert all(resolves_to(w.client, REPO, str(k)) == str(k) for k in w.kids)
    assert resolves_to(w.client, REPO, "old-1") is None and resolves_to(w.client, REPO, str(w.old1)) is None

    unknown = _restore(run_cli, w, "--tag", "never-was")
    assert unknown.returncode == 2
    assert "--sweep" in unknown.stderr and "never-was" in unknown.stderr


def test_a_tag_pushed_again_since_the_sweep_is_not_overwritten(swept, run_cli):
    w = swept
    moved = _push(w.client, "old-1", datetime.now(timezone.utc), b"m" * 1000)
    r = _restore(run_cli, w)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.strip().splitlines()
    assert f"not restored {REPO}:old-1: tag old-1 now points at {moved}: not overwritten" in lines
    assert lines[-1].endswith("1 not restored (see the lines above)")
    assert resolves_to(w.client, REPO, "old-1") == str(moved)          # the tag stays where it moved
    assert resolves_to(w.client, REPO, str(w.old1)) == str(w.old1)     # its old manifest is back by digest
    assert resolves_to(w.client, REPO, "old-2") == str(w.old2)
    assert resolves_to(w.client, REPO, "multi") == str(w.index)


def test_after_garbage_collection_restore_says_the_blobs_are_gone_and_restores_nothing(swept, run_cli):
    w = swept
    w.registry.garbage_collect()
    r = _restore(run_cli, w)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.strip().splitlines()
    for d in (w.old1, w.old2, *w.kids):
        line = next(x for x in lines if x.startswith(f"cannot restore {REPO}@{d}: "))
        assert "is gone (garbage-collected)" in line and line.endswith("nothing of it restored")
    index_line = next(x for x in lines if x.startswith(f"cannot restore {REPO}@{w.index}: "))
    assert "nothing of it restored" in index_line
    assert lines[-1].endswith("restored 0 manifests and 0 tags, 0 already there, 5 not restored (see the lines above)")
    assert survivors(w.client, REPO) == {"new": str(w.new)}
    for d in (w.old1, w.old2, w.index, *w.kids):
        assert resolves_to(w.client, REPO, str(d)) is None


def test_the_approval_form_and_the_sweep_report_state_the_window(fresh_registry, tmp_path):
    from tasks.store.store import Store
    from tasks.sweep.approval import render
    from tasks.sweep.execute import delete_targets
    from tasks.sweep.loading import prepare

    w = World(fresh_registry(), tmp_path)
    plan_id = make_plan(w.cfg, take_snapshot(w.cfg))
    store = Store(w.cfg.store)
    window = (f"Undo: deleted manifests and tags can be restored with `regsweep restore --sweep {plan_id}` "
              "until the registry's garbage collector runs")
    assert window in render(prepare(w.cfg, store, plan_id))
    report = delete_targets(w.cfg, store, prepare(w.cfg, store, plan_id))
    assert report.deleted == 5
    assert window in report.markdown()
    w.client.close()
