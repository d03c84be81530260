"""`make demo`: a local registry seeded with sample images and a git history, snapshotted and planned.

Everything lives under ./var/demo (the store persists between runs, so `regsweep history`
grows; the registry and git repository are rebuilt each time). Runs the same flows the CLI runs.
"""

from __future__ import annotations

import os
import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from flows.prefect_env import set_defaults

set_defaults()  # before anything imports Prefect


def build_git_history(path: Path, now: datetime) -> list[str]:
    """A clone-like repository: main with 8 hourly commits, a feature branch, a release tag."""
    import pygit2

    if path.exists():
        shutil.rmtree(path)
    repo = pygit2.init_repository(str(path))
    repo.remotes.create("origin", path.resolve().as_uri())
    tree = repo.TreeBuilder().write()
    main: list[str] = []
    parent: list = []
    for i in range(8, 0, -1):  # oldest first
        when = now - timedelta(hours=i)
        sig = pygit2.Signature("demo", "demo@example.invalid", int(when.timestamp()), 0)
        oid = repo.create_commit(None, sig, sig, f"main commit {9 - i}", tree, parent)
        parent = [oid]
        main.append(str(oid))
    repo.references.create("refs/remotes/origin/main", pygit2.Oid(hex=main[-1]))
    repo.references.create("refs/heads/main", pygit2.Oid(hex=main[-1]))
    sig = pygit2.Signature("demo", "demo@example.invalid", int((now - timedelta(days=30)).timestamp()), 0)
    repo.create_tag("v1.2.0", pygit2.Oid(hex=main[0]), pygit2.enums.ObjectType.COMMIT, sig, "release 1.2.0")
    return list(reversed(main))  # newest first, as seed_demo wants


def main() -> int:
    from flows.plan import plan_flow
    from flows.snapshot import snapshot_flow
    from tasks.config import parse_config
    from testbed import LocalRegistry, seed_demo
    from tasks.store import Store

    base = Path("var/demo").resolve()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    commits = build_git_history(base / "git", now)
    registry_dir = base / "registry"
    if registry_dir.exists():
        shutil.rmtree(registry_dir)
    with LocalRegistry(registry_dir) as reg:
        summary = seed_demo(reg.url, commits=commits, now=now)
        print(f"local registry at {reg.url}: {summary.get('tags', '?')} tags in "
              f"{len(summary['repositories'])} repositories", file=sys.stderr)
        config_path = base / "regsweep.yaml"
        config_path.write_text(
            f"# written by `make demo`\nstore: {base / 'store'}\nregistry: {{url: '{reg.url}'}}\n"
            f"git: {{path: '{base / 'git'}'}}\nhelm: {{enabled: false}}\n"
            "cleanup:\n  disableKubernetesBasedPolicy: true\n  keepImagesBuiltWithinLastNHours: 2\n"
            "  keepPolicies:\n  - references: {tag: /.*/}\n"
            "  - references: {branch: main}\n    imagesPerReference: {last: 3}\n")
        cfg = parse_config(__import__("yaml").safe_load(config_path.read_text()))
        snapshot_id = snapshot_flow(config=cfg)
        plan_id = plan_flow(config=cfg, snapshot=snapshot_id)
    store = Store(cfg.store)
    snap_dir = store.path("snapshots", snapshot_id)
    plan = store.plan_table(plan_id).to_pandas()
    print(f"\nsnapshot {snapshot_id}: Parquet tables in {snap_dir}")
    for f in sorted(os.listdir(snap_dir)):
        print(f"  {f}")
    print(f"\nplan {plan_id} ({store.path('plans', plan_id)}):")
    for row in plan.sort_values(["repository", "action", "tag"]).itertuples():
        name = f"{row.repository}:{row.tag}" if isinstance(row.tag, str) else f"{row.repository}@{row.digest[:19]}"
        print(f"  {row.action:6} {name}  ({'; '.join(row.reasons)})")
    print(f"\nnext: .venv/bin/regsweep explain --config {config_path} demo/api:latest --plan {plan_id}")
    print(f"      .venv/bin/regsweep history --config {config_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
