"""Images built by real tools (buildah, skopeo, umoci) scan, plan and sweep as a hand check says.

The other registry tests push manifests regsweep's own testbed wrote. Here Debian's `buildah`
(storage driver vfs, chroot isolation, a storage root of this module's own) builds the images,
`skopeo` copies them between formats and pushes OCI layouts, and `umoci` makes an OCI layout, so
the bytes regsweep reads are the bytes those tools write: Docker schema 2 and OCI manifests,
nanosecond `created` times, buildah's `io.buildah.version` label and empty base annotations, a
Docker manifest list and an OCI index made by `buildah manifest`, manifests without a
`mediaType` field, and a Helm chart pushed as an OCI artifact (config
application/vnd.cncf.helm.config.v1+json), which no image rule may judge.

The hand check reads the registry with `skopeo inspect --raw` (manifests and configs, byte for
byte) and the registry's HTTP API (tags, Content-Type, Docker-Content-Digest), never with
regsweep's code, and derives every row the store format (docs/store-format.md) promises.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import yaml

from tasks.config.models import parse_config
from tasks.sources.registry import extract
from tasks.store.store import Store
from tests.support.gitrepo import RepoBuilder
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)

OLD = datetime(2024, 1, 1, tzinfo=timezone.utc)              # buildah commit --timestamp: an old build
UMOCI_CREATED = datetime(2024, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
REVISION = "org.opencontainers.image.revision"
CREATED = "org.opencontainers.image.created"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
#: The hand check's own Accept header: every manifest type, so Distribution serves each as stored.
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
REPOS = ("docker", "oci", "copied", "multi", "chart")


# --------------------------------------------------------------------------- the tools


class Tools:
    """buildah, skopeo and umoci run as a user would, buildah on a storage root of its own."""

    def __init__(self, root: Path):
        missing = [t for t in ("buildah", "skopeo", "umoci") if shutil.which(t) is None]
        if missing:
            pytest.fail(f"{', '.join(missing)} not installed: scripts/setup.sh installs them (Debian packages)")
        self.root = root
        self.work = root / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "TMPDIR": str(self.work)}

    def run(self, *cmd: str) -> bytes:
        r = subprocess.run([str(c) for c in cmd], capture_output=True, env=self.env, timeout=300,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, cmd))} exited {r.returncode}: {r.stderr.decode()[-2000:]}")
        return r.stdout

    def buildah(self, *args: str) -> str:
        return self.run("buildah", "--root", self.root / "storage", "--runroot", self.root / "run",
                        "--storage-driver", "vfs", *args).decode().strip()

    def skopeo(self, *args: str) -> bytes:
        return self.run("skopeo", *args)

    def umoci(self, *args: str) -> None:
        self.run("umoci", *args)

    # -- buildah
    def image(self, name: str, payload: str, *, fmt: str, arch: str = "amd64", labels: dict | None = None,
              annotations: dict | None = None, built: datetime | None = None) -> str:
        """`buildah from scratch`, copy one file, config, commit as localhost/<name>; `built` is the
        commit's --timestamp (the config's `created`), else now."""
        container = self.buildah("from", "scratch")
        src = self.work / f"{name}.txt"
        src.write_text(payload)
        self.buildah("copy", container, str(src), "/payload.txt")
        config = ["config", "--arch", arch, "--os", "linux", "--created-by", f"regsweep test: buildah copy {name}"]
        for k, v in (labels or {}).items():
            config += ["--label", f"{k}={v}"]
        for k, v in (annotations or {}).items():
            config += ["--annotation", f"{k}={v}"]
        self.buildah(*config, container)
        stamp = ["--timestamp", str(int(built.timestamp()))] if built else []
        self.buildah("commit", "-q", "--format", fmt, *stamp, container, name)
        self.buildah("rm", container)
        return f"localhost/{name}"

    def manifest_list(self, name: str, images: list[str]) -> str:
        self.buildah("manifest", "create", name)
        for image in images:
            self.buildah("manifest", "add", name, f"containers-storage:{image}")
        return name

    def push(self, image: str, dest: str) -> None:
        self.buildah("push", "--tls-verify=false", image, f"docker://{dest}")

    def push_list(self, name: str, dest: str, fmt: str) -> None:
        self.buildah("manifest", "push", "--all", "--tls-verify=false", "--format", fmt, name, f"docker://{dest}")

    # -- skopeo
    def copy(self, src: str, dest: str, fmt: str | None = None) -> None:
        self.skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                    *(["--format", fmt] if fmt else []), src, f"docker://{dest}")

    def raw(self, ref: str, *, config: bool = False) -> bytes:
        """`skopeo inspect --raw` of docker://ref: the manifest (or config) bytes as stored."""
        return self.skopeo("inspect", "--raw", *(["--config"] if config else []), "--tls-verify=false",
                           f"docker://{ref}")


def _chart_tgz() -> bytes:
    """A chart as `helm package` lays it out: demo/Chart.yaml, values.yaml, templates/."""
    files = {
        "demo/Chart.yaml": "apiVersion: v2\nname: demo\nversion: 0.1.0\nappVersion: \"1.0.0\"\ntype: application\n",
        "demo/values.yaml": "image: registry.example/team/demo:1.0.0\n",
        "demo/templates/deployment.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: demo\n",
    }
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _chart_layout(tools: Tools, path: Path) -> None:
    """An OCI image layout (`umoci init`) holding a Helm chart artifact tagged 0.1.0.

    umoci makes the layout; the chart's blobs and manifest are written into it as the OCI
    image-layout spec says (blobs/sha256/<hex>, index.json with `org.opencontainers.image.ref.name`).
    """
    tools.umoci("init", "--layout", path)

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (path / "blobs" / "sha256" / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = json.dumps({"name": "demo", "version": "0.1.0", "apiVersion": "v2", "appVersion": "1.0.0",
                         "type": "application"}).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "config": {"mediaType": HELM_CONFIG, **blob(config)},
        "layers": [{"mediaType": HELM_CHART, **blob(_chart_tgz())}],
        "annotations": {"org.opencontainers.image.title": "demo", "org.opencontainers.image.version": "0.1.0",
                        CREATED: "2024-01-01T00:00:00Z"},
    }).encode()
    index = json.loads((path / "index.json").read_text())
    index["manifests"] = [{"mediaType": OCI_MANIFEST, **blob(manifest),
                           "annotations": {"org.opencontainers.image.ref.name": "0.1.0"}}]
    (path / "index.json").write_text(json.dumps(index))


@dataclass
class Built:
    """What the module built once: local images, lists, OCI layouts, and the git history they link to."""

    tools: Tools
    git: RepoBuilder
    head: str          # main's head commit: images linked to it are kept by the git rule
    older: str         # main's first commit: an image linked to it is beyond imagesPerReference.last 1
    images: dict[str, str] = field(default_factory=dict)
    layouts: dict[str, Path] = field(default_factory=dict)

    def push(self, host: str, base: str) -> list[tuple[str, str]]:
        """Push the scene into `<base>/<repo>` repositories; returns the (repo, tag) pairs pushed."""
        t, i = self.tools, self.images
        pushed: list[tuple[str, str]] = []

        def r(repo: str, tag: str) -> str:
            pushed.append((repo, tag))
            return f"{host}/{base}/{repo}:{tag}"

        t.push(i["docker-linked"], r("docker", "v1"))       # Docker schema 2, revision label, built 2024
        t.push(i["docker-old"], r("docker", "old"))         # Docker schema 2, no revision, built 2024
        t.push(i["docker-fresh"], r("docker", "fresh"))     # Docker schema 2, no revision, built now
        t.push(i["oci-linked"], r("oci", "v1"))             # OCI, revision annotation, built 2024
        t.copy(f"oci:{self.layouts['umoci']}:v1", r("oci", "umoci"))   # umoci's layout, older commit
        # format conversions: Docker → OCI keeps the label; OCI → Docker schema 2 drops manifest annotations
        t.copy(f"docker://{host}/{base}/docker:v1", r("copied", "oci"), "oci")
        t.copy(f"docker://{host}/{base}/oci:v1", r("copied", "v2s2"), "v2s2")
        t.push_list("list-old", r("multi", "old"), "v2s2")  # Docker manifest list of two 2024 platforms
        t.push_list("list-new", r("multi", "new"), "oci")   # OCI index of two platforms built now
        t.copy(f"oci:{self.layouts['chart']}:0.1.0", r("chart", "0.1.0"))   # Helm chart artifact
        return pushed


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    root = tmp_path_factory.mktemp("real-tools")
    tools = Tools(root)
    git = RepoBuilder(root / "repo")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    older = git.commit("main", now - timedelta(days=30))
    head = git.commit("main", now - timedelta(days=1))
    b = Built(tools, git, head, older)
    i = b.images
    i["docker-linked"] = tools.image("docker-linked", "linked", fmt="docker", labels={REVISION: head}, built=OLD)
    i["docker-old"] = tools.image("docker-old", "old and unlinked", fmt="docker", built=OLD)
    i["docker-fresh"] = tools.image("docker-fresh", "fresh", fmt="docker")
    i["oci-linked"] = tools.image("oci-linked", "oci linked", fmt="oci", arch="arm64",
                                  annotations={REVISION: head}, built=OLD)
    tools.manifest_list("list-old", [tools.image(f"old-{a}", f"old {a}", fmt="docker", arch=a, built=OLD)
                                     for a in ("amd64", "arm64")])
    tools.manifest_list("list-new", [tools.image(f"new-{a}", f"new {a}", fmt="oci", arch=a)
                                     for a in ("amd64", "arm64")])
    # umoci: an OCI layout with one layer, the revision as a manifest annotation, a chosen build time
    lay = b.layouts["umoci"] = root / "umoci-layout"
    tools.umoci("init", "--layout", lay)
    tools.umoci("new", "--image", f"{lay}:v1")
    (tools.work / "umoci").mkdir()
    (tools.work / "umoci" / "payload.txt").write_text("umoci\n")
    tools.umoci("insert", "--image", f"{lay}:v1", tools.work / "umoci" / "payload.txt", "/payload.txt")
    tools.umoci("config", "--image", f"{lay}:v1", "--manifest.annotation", f"{REVISION}={older}",
                "--created", UMOCI_CREATED.strftime("%Y-%m-%dT%H:%M:%SZ"), "--architecture", "amd64", "--os", "linux")
    b.layouts["chart"] = root / "chart-layout"
    _chart_layout(tools, b.layouts["chart"])
    return b


# --------------------------------------------------------------------------- the hand check


def _time(value: str | None) -> datetime | None:
    """RFC 3339 as the tools write it (Go's nanoseconds, `Z`) to µs, as the store keeps times."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


@dataclass
class Hand:
    """Every registry table row, derived from `skopeo inspect --raw` and the HTTP API alone."""

    tags: set = field(default_factory=set)
    manifests: dict = field(default_factory=dict)        # (repository, digest) -> row
    children: set = field(default_factory=set)
    links: set = field(default_factory=set)
    blobs: set = field(default_factory=set)


def hand_check(tools: Tools, http: httpx.Client, host: str, repos: list[str], kinds: dict) -> Hand:
    """`kinds`: (repository, tag) -> the kind the scene built there (the hand check does not guess it)."""
    hand = Hand()

    def manifest(repo: str, ref: str, kind: str) -> tuple[str, int, datetime | None, str | None, str | None]:
        body = tools.raw(f"{host}/{repo}{'@' if ref.startswith('sha256:') else ':'}{ref}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        head = http.head(f"/v2/{repo}/manifests/{digest}", headers={"Accept": ACCEPT})
        assert head.status_code == 200 and head.headers["docker-content-digest"] == digest
        media_type = head.headers["content-type"]
        doc = json.loads(body)
        ann = doc.get("annotations") or {}
        hand.blobs.add((repo, digest, digest, "manifest", len(body)))
        created, revision, source = _time(ann.get(CREATED)), ann.get(REVISION) or None, "annotation"
        artifact_type = None
        if kind == "index":
            facts = [manifest(repo, c["digest"], "image") for c in doc["manifests"]]
            for c in doc["manifests"]:
                p = c["platform"]
                hand.children.add((repo, digest, c["digest"], f"{p['os']}/{p['architecture']}"))
            size = len(body) + sum(f[1] for f in facts)
            created = created or max((f[2] for f in facts if f[2]), default=None)
            if revision is None:
                revision, source = next(((f[3], f[4]) for f in facts if f[3]), (None, None))
        else:
            cfg = doc["config"]
            size = len(body) + cfg["size"] + sum(layer["size"] for layer in doc["layers"])
            hand.blobs.add((repo, digest, cfg["digest"], "config", cfg["size"]))
            hand.blobs.update((repo, digest, layer["digest"], "layer", layer["size"]) for layer in doc["layers"])
            if kind == "artifact":
                artifact_type = doc.get("artifactType") or cfg["mediaType"]
            else:
                config_bytes = tools.raw(f"{host}/{repo}@{digest}", config=True)
                assert "sha256:" + hashlib.sha256(config_bytes).hexdigest() == cfg["digest"]
                config = json.loads(config_bytes)
                created = created or _time(config.get("created"))
                if revision is None:
                    revision, source = (config.get("config") or {}).get("Labels", {}).get(REVISION), "label"
        if revision:
            hand.links.add((repo, digest, revision, source))
        hand.manifests[(repo, digest)] = {
            "repository": repo, "digest": digest, "media_type": media_type, "kind": kind,
            "artifact_type": artifact_type, "size": size, "created": created, "revision": revision,
            "subject": None, "pushed": None, "last_pulled": None, "problem": None}
        return digest, size, created, revision, source if revision else None

    for repo in repos:
        listed = http.get(f"/v2/{repo}/tags/list").json()["tags"]
        for tag in listed:
            digest = manifest(repo, tag, kinds[(repo, tag)])[0]
            hand.tags.add((repo, tag, digest, False))
    return hand


def assert_same_rows(tables: dict, hand: Hand) -> None:
    tags = {(r["repository"], r["tag"], r["digest"], r["gone"]) for r in tables["tags"].to_pylist()}
    assert tags == hand.tags
    manifests = {(r["repository"], r["digest"]): r for r in tables["manifests"].to_pylist()}
    assert set(manifests) == set(hand.manifests)
    for key, want in hand.manifests.items():
        assert manifests[key] == want, key
    assert {tuple(r.values()) for r in tables["children"].to_pylist()} == hand.children
    assert {tuple(r.values()) for r in tables["links"].to_pylist()} == hand.links
    assert {tuple(r.values()) for r in tables["blobs"].to_pylist()} == hand.blobs


def scene(built: Built, registry, base: str) -> tuple[list[str], list[tuple[str, str]], Hand]:
    made = built.push(registry.host, base)
    repos = [f"{base}/{r}" for r in REPOS]
    kinds = {(f"{base}/{repo}", tag): ("index" if repo == "multi" else "artifact" if repo == "chart" else "image")
             for repo, tag in made}
    with registry.client() as http:
        hand = hand_check(built.tools, http, registry.host, repos, kinds)
    return repos, made, hand


def _digest(hand: Hand, repo: str, tag: str) -> str:
    return next(d for r, t, d, _ in hand.tags if (r, t) == (repo, tag))


# --------------------------------------------------------------------------- tests


def test_real_tool_images_scan_to_the_rows_a_hand_check_gives(built, registry, unique_repo, tmp_path):
    repos, _, hand = scene(built, registry, unique_repo)
    base = unique_repo
    # the scene is what the tools were asked for, read by hand: formats, links, times, platforms
    media = {(r.split("/")[-1], t): hand.manifests[(r, d)]["media_type"] for r, t, d, _ in hand.tags}
    assert media == {("docker", "v1"): DOCKER_MANIFEST, ("docker", "old"): DOCKER_MANIFEST,
                     ("docker", "fresh"): DOCKER_MANIFEST, ("oci", "v1"): OCI_MANIFEST,
                     ("oci", "umoci"): OCI_MANIFEST, ("copied", "oci"): OCI_MANIFEST,
                     ("copied", "v2s2"): DOCKER_MANIFEST, ("multi", "old"): DOCKER_LIST,
                     ("multi", "new"): OCI_INDEX, ("chart", "0.1.0"): OCI_MANIFEST}
    links = {(r.split("/")[-1], c, s) for r, _, c, s in hand.links}
    assert links == {("docker", built.head, "label"), ("oci", built.head, "annotation"),
                     ("oci", built.older, "annotation"), ("copied", built.head, "label")}
    assert len(hand.children) == 4 and len(hand.manifests) == 14

    cfg = parse_config({"store": str(tmp_path / "store"), "registry": {"url": registry.url, "repositories": repos}})
    tables = extract(cfg, Store(cfg.store), datetime.now(timezone.utc))
    assert_same_rows(tables, hand)

    chart = hand.manifests[(f"{base}/chart", _digest(hand, f"{base}/chart", "0.1.0"))]
    assert (chart["kind"], chart["artifact_type"], chart["created"]) == ("artifact", HELM_CONFIG, OLD)
    umoci = hand.manifests[(f"{base}/oci", _digest(hand, f"{base}/oci", "umoci"))]
    assert (umoci["created"], umoci["revision"]) == (UMOCI_CREATED, built.older)
    old_index = hand.manifests[(f"{base}/multi", _digest(hand, f"{base}/multi", "old"))]
    assert old_index["created"] == OLD and old_index["revision"] is None


def _write_config(path: Path, registry, repos: list[str], git: Path, store: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "store": str(store),
        "registry": {"url": registry.url, "repositories": repos},
        "git": {"path": str(git)},
        "helm": {"enabled": False},
        "cleanup": {"disableKubernetesBasedPolicy": True, "keepImagesBuiltWithinLastNHours": 2,
                    "unlinkedImages": "delete",
                    "keepPolicies": [{"references": {"branch": "main"}, "imagesPerReference": {"last": 1}}]},
    }))
    return path


def _ok(res, code: int = 0) -> str:
    assert res.returncode == code, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def test_real_tool_images_plan_and_sweep(built, registry, unique_repo, run_cli, tmp_path):
    """Old unlinked images go (a manifest list with its platforms), linked and fresh ones stay, and
    the Helm chart, an artifact no image rule can judge, is kept with a reason that says so."""
    repos, made, hand = scene(built, registry, unique_repo)
    store = tmp_path / "store"
    cfg = _write_config(tmp_path / "regsweep.yaml", registry, repos, built.git.path, store)
    sid = _ok(run_cli("snapshot", "--config", cfg))
    stored = {name: pq.read_table(store / "snapshots" / sid / f"{name}.parquet")
              for name in ("tags", "manifests", "children", "links", "blobs")}
    assert_same_rows(stored, hand)

    out = tmp_path / "plan.json"
    pid = _ok(run_cli("plan", "--config", cfg, "--snapshot", sid, "--json", out))
    rows = json.loads(out.read_text())
    short = {(r["repository"].rsplit("/", 1)[-1], r["tag"]): r for r in rows if r["tag"] is not None}
    digest = {(repo, tag): _digest(hand, f"{unique_repo}/{repo}", tag) for repo, tag in made}
    assert {k: (r["action"], r["digest"]) for k, r in short.items()} == {
        ("docker", "v1"): ("keep", digest["docker", "v1"]), ("docker", "old"): ("delete", digest["docker", "old"]),
        ("docker", "fresh"): ("keep", digest["docker", "fresh"]), ("oci", "v1"): ("keep", digest["oci", "v1"]),
        ("oci", "umoci"): ("delete", digest["oci", "umoci"]), ("copied", "oci"): ("keep", digest["copied", "oci"]),
        ("copied", "v2s2"): ("delete", digest["copied", "v2s2"]), ("multi", "old"): ("delete", digest["multi", "old"]),
        ("multi", "new"): ("keep", digest["multi", "new"]), ("chart", "0.1.0"): ("keep", digest["chart", "0.1.0"])}
    reasons = {k: r["reasons"] for k, r in short.items()}
    # linked by buildah's label, buildah's annotation, and the label skopeo carried into an OCI copy
    for key in (("docker", "v1"), ("oci", "v1"), ("copied", "oci")):
        assert reasons[key] == ["git: branch main, image 1 of 1"], key
    assert "git: branch main selected, image beyond imagesPerReference.last 1" in reasons["oci", "umoci"]
    assert "unlinked (unlinkedImages: delete)" in reasons["copied", "v2s2"]   # the annotation did not survive
    assert "unlinked (unlinkedImages: delete)" in reasons["docker", "old"]
    for key in (("docker", "fresh"), ("multi", "new")):   # an index is as fresh as its newest platform
        assert len(reasons[key]) == 1 and reasons[key][0].startswith("built ") \
            and reasons[key][0].endswith(" ago (< 2h)"), reasons[key]
    assert reasons["chart", "0.1.0"] == [f"artifact of type {HELM_CONFIG} (not an image): kept"]

    old_list = digest["multi", "old"]
    old_platforms = {c for r, i, c, _ in hand.children if i == old_list}
    new_platforms = {c for r, i, c, _ in hand.children if i == digest["multi", "new"]}
    untagged = {r["digest"]: r for r in rows if r["tag"] is None}
    assert set(untagged) == old_platforms            # the platforms go with their list, and only they
    assert all(r["action"] == "delete" and f"platform of deleted index {old_list}" in r["reasons"]
               for r in untagged.values())

    gone = {digest[k] for k, r in short.items() if r["action"] == "delete"} | old_platforms
    res = run_cli("sweep", "--config", cfg, "--plan", pid, "--yes", "--max-deletions", "20")
    line = _ok(res)
    assert line.startswith(f"deleted {len(gone)} manifests (") and line.endswith("skipped 0, failed 0"), line

    kept = {digest[k] for k, r in short.items() if r["action"] == "keep"} | new_platforms
    where = {d: r for (r, d) in hand.manifests}
    with registry.client() as http:
        served = {d: http.head(f"/v2/{where[d]}/manifests/{d}", headers={"Accept": ACCEPT}).status_code
                  for d in gone | kept}
        assert served == {**{d: 404 for d in gone}, **{d: 200 for d in kept}}
        left = {(repo.rsplit("/", 1)[-1], t) for repo in repos
                for t in http.get(f"/v2/{repo}/tags/list").json().get("tags") or []}
    assert left == {k for k, r in short.items() if r["action"] == "keep"}
