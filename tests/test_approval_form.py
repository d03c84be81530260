"""The approval form's text, from a real plan of a real registry: what goes, why, and how old the plan is."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from tasks.config.models import load_config
from tasks.store.store import Store
from tasks.sweep.approval import reason_class, render
from tasks.sweep.loading import prepare
from testbed import push_artifact, push_image, push_index
from tests.support.configs import SWEEP, config
from tests.support.sweeps import fresh, plan_of
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)

COSIGN = "application/vnd.dev.cosign.artifact.sig.v1+json"


def _image(c, repo, tag, built, size=1, arch="amd64"):
    return push_image(c, repo, tag, layers=[bytes([size % 256]) * (size * 1000)],
                      config={"created": built, "architecture": arch, "config": {"Labels": {"t": f"{tag}{arch}"}}})


def test_the_form_says_per_repository_what_goes_and_why(registry, registry_client, unique_repo, tmp_path):
    c = registry_client
    api, web = f"{unique_repo}/api", f"{unique_repo}/web"
    y2023, y2024 = datetime(2023, 3, 1, tzinfo=timezone.utc), datetime(2024, 1, 1, tzinfo=timezone.utc)
    _image(c, api, "old-big", y2024, size=50)
    signed = _image(c, api, "oldest", y2023, size=5)
    push_artifact(c, api, subject=signed, artifact_type=COSIGN)
    fresh(c, api, "new")
    children = [(_image(c, web, None, y2024, size=3, arch=a), {"architecture": a, "os": "linux"}) for a in ("amd64", "arm64")]
    push_index(c, web, "multi", children)
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[f"{unique_repo}/*"], write=tmp_path))
    plan = plan_of(cfg)
    intent = prepare(cfg, Store(cfg.store), plan)

    text = render(intent, plan_link="http://ui/artifacts/artifact/1", deletions_link="http://ui/artifacts/artifact/2",
                  now=datetime.now(timezone.utc) + timedelta(hours=3))
    head = text.split(f"### {api}")[0]
    api_part = text.split(f"### {api}")[1].split(f"### {web}")[0]
    web_part = text.split(f"### {web}")[1]

    assert f"## Approve deleting {len(intent.targets)} items from {registry.url}?" in head
    assert "in 2 repositories" in head
    assert f"- plan `{plan}`, made 3h ago" in head and f"- from snapshot `{intent.snapshot_id}`, taken 3h ago" in head
    assert "[the plan's summary](http://ui/artifacts/artifact/1)" in head
    assert "[its largest deletions with digests](http://ui/artifacts/artifact/2)" in head
    assert "Every item:" not in head   # relatives go for another reason than the images they belong to
    assert "Rejecting deletes nothing." in head

    # api: the images, the signature and its referrers index that go with the signed one.
    assert "2 manifests" not in api_part and "4 manifests, 3 tags" in api_part
    assert "- **2** × built more than 2h ago" in api_part
    assert "- **2** × referrer of deleted (goes with it)" in api_part
    assert "- largest: `old-big`, 50." in api_part
    assert re.search(r"- oldest: `oldest`, built \d+ days ago", api_part)
    assert "- `oldest`: image, " in api_part and "(with 1 signature or other artifact, 1 referrers index)" in api_part
    assert "`new`" not in api_part   # fresh: kept
    # web: the index, with its platform manifests folded under it.
    assert "3 manifests, 1 tags" in web_part and "- **2** × platform of deleted index (goes with it)" in web_part
    assert "- `multi`: index, " in web_part and "(with 2 platform manifests)" in web_part
    assert web_part.count("\n- `") == 1


@pytest.mark.unit
def test_reason_classes_fold_away_per_item_details():
    assert reason_class("built 38d ago (not within 2h)") == "built more than 2h ago"
    assert reason_class("platform of deleted index sha256:" + "a" * 64) == "platform of deleted index (goes with it)"
    assert reason_class("git: commit 1a2b3c4 reached only by unselected references (branch x)") == \
        "git: its commit is reached only by unselected references (branch x)"
    assert reason_class("in no stored Helm revision") == "in no stored Helm revision"
