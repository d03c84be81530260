"""A real Docker Distribution registry on loopback, and helpers that push images into it.

Tests, the demo and the benchmarks all run Debian's `docker-registry` (Distribution 2.8.2)
through `LocalRegistry` and fill it through the registry's own HTTP API (`push_image`,
`push_index`, `push_artifact`, ...), so what regsweep reads is exactly what a registry serves.
The push helpers take an `httpx.Client` whose `base_url` is the registry URL; pass one with
`auth=` for a registry that wants credentials (`LocalRegistry.client()` builds one).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import httpx

from tasks.auth import ChallengeAuth, Credentials
import yaml

__all__ = [
    "LocalRegistry", "LocalRegistryError", "TokenAuth", "PushError", "PushedManifest",
    "ImageSpec", "write_htpasswd",
    "push_blob", "push_image", "push_index", "push_artifact", "push_raw_manifest",
    "tag_manifest", "push_referrers_fallback", "referrers_fallback_tag", "push_images",
    "push_tags", "push_repositories", "sha256_digest", "get_manifest", "seed_demo",
    "OCI_MANIFEST", "OCI_INDEX", "OCI_CONFIG", "OCI_LAYER", "OCI_EMPTY",
    "DOCKER_MANIFEST", "DOCKER_LIST", "DOCKER_CONFIG", "DOCKER_LAYER", "MANIFEST_ACCEPT",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

_FLAVOURS = {
    "oci": (OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, OCI_LAYER),
    "docker": (DOCKER_MANIFEST, DOCKER_LIST, DOCKER_CONFIG, DOCKER_LAYER),
}
DEFAULT_LAYER = b"regsweep testbed layer\n"
_EMPTY_JSON = b"{}"


class LocalRegistryError(RuntimeError):
    """The local registry could not be started, stopped or garbage-collected."""


class PushError(RuntimeError):
    """The registry refused a push; carries the response so tests can inspect it."""

    def __init__(self, message: str, response: httpx.Response | None = None):
        super().__init__(message)
        self.response = response


# --------------------------------------------------------------------------- server


@dataclass(frozen=True)
class TokenAuth:
    """Distribution's `auth.token` section: where clients get tokens and whom to trust."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scratch_dir() -> str | None:
    """Where throw-away registries store: $REGSWEEP_REGISTRY_TMPDIR, else tmpfs when there is one.

    Manifest PUTs cost the registry about half the CPU on tmpfs that they cost on ext4, which is
    what makes pushing thousands of tags take seconds.
    """
    chosen = os.environ.get("REGSWEEP_REGISTRY_TMPDIR")
    if chosen:
        return chosen
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _deep_merge(base: dict, extra: Mapping) -> dict:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def write_htpasswd(path: str | os.PathLike, users: Mapping[str, str]) -> Path:
    """Write a bcrypt htpasswd file (the only hash Distribution accepts) with apache2-utils."""
    exe = shutil.which("htpasswd")
    if exe is None:
        raise LocalRegistryError("htpasswd not found on PATH: install it with `apt-get install apache2-utils`")
    lines = []
    for user, password in users.items():
        # -i reads the password from stdin, keeping it out of the process list.
        out = subprocess.run([exe, "-niB", user], input=password, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise LocalRegistryError(f"htpasswd failed for user {user}: {out.stderr.strip()}")
        lines.append(out.stdout.strip())
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


_RUNNING: "weakref.WeakSet[LocalRegistry]" = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    # A registry runs in its own session (Ctrl-C must not kill it before teardown), so nothing
    # else stops one whose owner forgot to: do it when the interpreter exits.
    for reg in list(_RUNNING):
        reg.stop()


class LocalRegistry:
    """Debian's `docker-registry serve` on a free 127.0.0.1 port, storing into `root`.

    Use as a context manager (or `start()`/`stop()`). `root` receives `config.yml`, `registry.log`
    and the `storage/` tree; with `root=None` a temporary directory is used and removed on stop.
    `ca_pem` and `credentials` are not registry settings: they let `client()` build a client that
    trusts the TLS certificate and authenticates.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, delete_enabled: bool = True,
                 tls: tuple[str | os.PathLike, str | os.PathLike] | None = None,
                 htpasswd: str | os.PathLike | None = None, token: TokenAuth | None = None,
                 extra: Mapping[str, Any] | None = None, ca_pem: str | os.PathLike | None = None,
                 credentials: tuple[str, str] | None = None, port: int | None = None,
                 binary: str | None = None, log_level: str = "info", startup_timeout: float = 30.0):
        if htpasswd is not None and token is not None:
            raise ValueError("a registry takes one auth method: htpasswd or token, not both")
        self._own_root = root is None
        self.root = Path(root) if root is not None else None
        self.delete_enabled = delete_enabled
        self.tls = (str(tls[0]), str(tls[1])) if tls else None
        self.htpasswd = str(htpasswd) if htpasswd else None
        self.token = token
        self.extra = dict(extra or {})
        self.ca_pem = str(ca_pem) if ca_pem else None
        self.credentials = credentials
        self.port = port
        self.binary = binary or os.environ.get("REGSWEEP_DOCKER_REGISTRY", "docker-registry")
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None
        self._log = None

    # -- addresses
    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, as it appears in image references."""
        if self.port is None:
            raise LocalRegistryError("registry not started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def storage(self) -> Path:
        return self._root / "storage"

    @property
    def config_path(self) -> Path:
        return self._root / "config.yml"

    @property
    def log_path(self) -> Path:
        return self._root / "registry.log"

    @property
    def _root(self) -> Path:
        if self.root is None:
            raise LocalRegistryError("registry not started")
        return self.root

    def logs(self, tail: int | None = None) -> str:
        """The registry's output so far (its last `tail` lines when given)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (FileNotFoundError, LocalRegistryError):
            return ""
        return "\n".join(text.splitlines()[-tail:]) if tail else text

    # -- configuration
    def config(self) -> dict:
        """The Distribution configuration this registry runs with."""
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": self.log_level, "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": self.delete_enabled},
                "cache": {"blobdescriptor": "inmemory"},
                # Upload purging would delete half-finished uploads behind a slow test's back.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.host,
                # A fixed secret avoids the "generating a random secret" warning and keeps upload
                # state valid across a garbage-collection restart.
                "secret": "regsweep-local-registry",
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.tls:
            cfg["http"]["tls"] = {"certificate": self.tls[0], "key": self.tls[1]}
        if self.htpasswd:
            cfg["auth"] = {"htpasswd": {"realm": "regsweep-local", "path": self.htpasswd}}
        if self.token:
            cfg["auth"] = {"token": {"realm": self.token.realm, "service": self.token.service,
                                     "issuer": self.token.issuer,
                                     "rootcertbundle": self.token.rootcertbundle}}
        return _deep_merge(cfg, self.extra)

    # -- lifecycle
    def _exe(self) -> str:
        exe = shutil.which(self.binary)
        if exe is None:
            raise LocalRegistryError(
                f"`{self.binary}` (Docker Distribution) not found on PATH: "
                "install it with `apt-get install docker-registry`")
        return exe

    def start(self) -> "LocalRegistry":
        """Write the config, start the server and wait until `/v2/` answers."""
        if self._proc is not None:
            return self
        exe = self._exe()
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="regsweep-registry-", dir=_scratch_dir()))
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port is not None
        for attempt in range(5):
            if not fixed_port:
                self.port = _free_port()
            try:
                self._spawn(exe)
                return self
            except LocalRegistryError:
                # Another process may have taken the free port between probe and bind: retry.
                if fixed_port or attempt == 4 or "address already in use" not in self.logs().lower():
                    raise
        return self  # pragma: no cover

    def _spawn(self, exe: str) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        # REGISTRY_* variables override the config file; a stray one must not change the testbed.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen([exe, "serve", str(self.config_path)], stdout=self._log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                      start_new_session=True)
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self._terminate()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        verify: Any = False  # only liveness is probed here; clients verify TLS themselves
        with httpx.Client(verify=verify, timeout=2.0) as probe:
            while True:
                if self._proc.poll() is not None:
                    raise LocalRegistryError(
                        f"docker-registry exited with code {self._proc.returncode} while starting "
                        f"on {self.host}; its log ({self.log_path}):\n{self.logs(tail=40)}")
                try:
                    probe.get(f"{self.url}/v2/")
                    return  # any answer (200, or 401 with auth on) means it serves
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise LocalRegistryError(
                        f"docker-registry did not answer on {self.url}/v2/ within "
                        f"{self.startup_timeout:.0f}s; its log ({self.log_path}):\n{self.logs(tail=40)}")
                time.sleep(0.02)

    def _terminate(self) -> None:
        _RUNNING.discard(self)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop the server (keeping storage unless the directory was temporary)."""
        self._terminate()
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def garbage_collect(self, delete_untagged: bool = False, dry_run: bool = False) -> str:
        """Stop, run `docker-registry garbage-collect`, restart on the same port; returns GC output."""
        exe = self._exe()
        was_running = self.running
        self._terminate()
        args = [exe, "garbage-collect"]
        if delete_untagged:
            args.append("--delete-untagged")
        if dry_run:
            args.append("--dry-run")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        out = subprocess.run(args + [str(self.config_path)], capture_output=True, text=True, env=env,
                             check=False, timeout=300)
        output = out.stdout + out.stderr
        with open(self.log_path, "a") as log:
            log.write(f"--- garbage-collect {' '.join(args[2:])}\n{output}\n")
        if was_running:
            self._spawn(exe)
        if out.returncode != 0:
            raise LocalRegistryError(f"docker-registry garbage-collect failed ({out.returncode}):\n{output[-4000:]}")
        return output

    def disk_usage(self) -> int:
        """Bytes stored under the registry's storage directory."""
        return sum(p.stat().st_size for p in self.storage.rglob("*") if p.is_file())

    def client(self, *, auth: httpx.Auth | tuple[str, str] | None = None, timeout: float = 30.0,
               **kwargs: Any) -> httpx.Client:
        """An httpx client for this registry: trusts `ca_pem`, authenticates with `credentials`."""
        if auth is None and self.credentials is not None:
            # regsweep's own challenge auth: Basic, or the Docker token dance with a token per scope
            auth = ChallengeAuth(self.host, Credentials(*self.credentials))
        kwargs.setdefault("verify", self._verify())
        return httpx.Client(base_url=self.url, auth=auth, timeout=timeout, **kwargs)

    def _verify(self) -> Any:
        return ssl.create_default_context(cafile=self.ca_pem) if self.ca_pem else True

    def __enter__(self) -> "LocalRegistry":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalRegistry({self.url if self.port else 'not started'})"


# --------------------------------------------------------------------------- push helpers


class PushedManifest(str):
    """A manifest digest (a plain `str`) that also remembers its size, media type and bytes."""

    size: int
    media_type: str
    body: bytes

    def __new__(cls, digest: str, body: bytes, media_type: str) -> "PushedManifest":
        obj = super().__new__(cls, digest)
        obj.size, obj.media_type, obj.body = len(body), media_type, body
        return obj

    def descriptor(self, **extra: Any) -> dict:
        return {"mediaType": self.media_type, "digest": str(self), "size": self.size, **extra}

    def __reduce__(self):
        return (PushedManifest, (str(self), self.body, self.media_type))


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode()


def _check(r: httpx.Response, what: str, ok: Iterable[int]) -> httpx.Response:
    if r.status_code not in ok:
        raise PushError(f"{what}: HTTP {r.status_code} {r.text[:500]}", r)
    return r


def push_blob(client: httpx.Client, repo: str, data: bytes, *, known: set | None = None,
              check_exists: bool | None = None) -> str:
    """Upload a blob (POST, then monolithic PUT ?digest=) unless the repository has it; returns its digest.

    `known` is a cache of (repo, digest) already present, shared across a bulk push so that shared
    layers cost one request per repository at most; with a cache, unknown blobs are uploaded without
    a HEAD first (re-uploading an existing blob is harmless and saves a round trip).
    """
    digest = sha256_digest(data)
    if known is not None and (repo, digest) in known:
        return digest
    if check_exists is None:
        check_exists = known is None
    if check_exists and client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
        if known is not None:
            known.add((repo, digest))
        return digest
    start = _check(client.post(f"/v2/{repo}/blobs/uploads/"), f"start upload to {repo}", (202,))
    # The Location carries upload state in its query; httpx's params= would replace it, not add to it.
    location = httpx.URL(start.headers["location"]).copy_merge_params({"digest": digest})
    _check(client.put(location, content=data,
                      headers={"Content-Type": "application/octet-stream"}),
           f"upload blob {digest} to {repo}", (201,))
    if known is not None:
        known.add((repo, digest))
    return digest


def _put_manifest(client: httpx.Client, repo: str, ref: str, body: bytes, media_type: str) -> PushedManifest:
    r = _check(client.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type}),
               f"put manifest {repo}:{ref}", (201,))
    digest = sha256_digest(body)
    served = r.headers.get("docker-content-digest")
    if served and served != digest:
        raise PushError(f"registry stored {repo}:{ref} as {served}, expected {digest}", r)
    return PushedManifest(digest, body, media_type)


def _rfc3339(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _image_config(config: Mapping | None, layer_digests: Sequence[str]) -> dict:
    cfg = {"architecture": "amd64", "os": "linux"}
    config = dict(config or {})
    if "created" in config:
        config["created"] = _rfc3339(config["created"])
    cfg.update(config)
    cfg.setdefault("config", {})
    # The layers here are opaque bytes, so their digests stand in for the uncompressed diff ids.
    cfg.setdefault("rootfs", {"type": "layers", "diff_ids": list(layer_digests)})
    return cfg


def _build_image(layers: Sequence[bytes], config: Mapping | None, annotations: Mapping[str, str] | None,
                 media_type: str, subject: dict | None = None,
                 artifact_type: str | None = None) -> tuple[list[bytes], bytes, str]:
    """(blobs to upload, manifest bytes, manifest media type) of one image; no I/O."""
    manifest_type, _, config_type, layer_type = _FLAVOURS[media_type]
    layer_digests = [sha256_digest(b) for b in layers]
    config_bytes = _canonical(_image_config(config, layer_digests))
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": manifest_type}
    if artifact_type:
        manifest["artifactType"] = artifact_type
    manifest["config"] = {"mediaType": config_type, "digest": sha256_digest(config_bytes),
                          "size": len(config_bytes)}
    manifest["layers"] = [{"mediaType": layer_type, "digest": d, "size": len(b)}
                          for d, b in zip(layer_digests, layers)]
    if subject:
        manifest["subject"] = subject
    if annotations:
        manifest["annotations"] = dict(annotations)
    return [*layers, config_bytes], _canonical(manifest), manifest_type


def push_image(client: httpx.Client, repo: str, tag: str | None, *, layers: Sequence[bytes] = (DEFAULT_LAYER,),
               config: Mapping | None = None, annotations: Mapping[str, str] | None = None,
               media_type: str = "oci", subject: str | None = None, artifact_type: str | None = None,
               known: set | None = None) -> PushedManifest:
    """Push an image manifest (blobs first) and tag it; returns its digest.

    `config` is the image config: `created` (datetime or RFC 3339) and labels as
    `{"config": {"Labels": {...}}}`; architecture/os/rootfs get defaults. `media_type` picks OCI or
    Docker schema 2 media types. With no `tag` the manifest is pushed by digest (untagged).
    `subject` (a digest or tag in `repo`) makes it a referrer of that manifest.
    """
    subject_desc = _subject_descriptor(client, repo, subject) if subject else None
    blobs, body, manifest_type = _build_image(layers, config, annotations, media_type, subject_desc,
                                              artifact_type)
    for blob in blobs:
        push_blob(client, repo, blob, known=known)
    return _put_manifest(client, repo, tag or sha256_digest(body), body, manifest_type)


def push_index(client: httpx.Client, repo: str, tag: str | None, children: Sequence[tuple], *,
               annotations: Mapping[str, str] | None = None, media_type: str = "oci") -> PushedManifest:
    """Push a multi-platform index (OCI image index or Docker manifest list); returns its digest.

    `children` are `(digest, size, platform)` or `(digest, platform)` tuples, platform being e.g.
    `{"architecture": "arm64", "os": "linux"}`; the children must already be in `repo`.
    Size and media type come from a `PushedManifest`, else from a HEAD on the child.
    """
    _, index_type, _, _ = _FLAVOURS[media_type]
    manifests = []
    for child in children:
        digest, size, platform = child if len(child) == 3 else (child[0], None, child[1])
        child_type = getattr(digest, "media_type", None)
        if size is None:
            size = getattr(digest, "size", None)
        if size is None or child_type is None:
            head_size, head_type, _ = _manifest_head(client, repo, digest)
            size, child_type = size or head_size, child_type or head_type
        entry = {"mediaType": child_type, "digest": str(digest), "size": size}
        if platform:
            entry["platform"] = dict(platform)
        manifests.append(entry)
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": index_type, "manifests": manifests}
    if annotations:
        index["annotations"] = dict(annotations)
    body = _canonical(index)
    return _put_manifest(client, repo, tag or sha256_digest(body), body, index_type)


def _manifest_head(client: httpx.Client, repo: str, ref: str) -> tuple[int, str, str]:
    """(size, media type, digest) of the manifest at `ref`."""
    r = _check(client.head(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}),
               f"head manifest {repo}@{ref}", (200,))
    return (int(r.headers["content-length"]), r.headers["content-type"].split(";")[0],
            r.headers["docker-content-digest"])


def _subject_descriptor(client: httpx.Client, repo: str, subject: str) -> dict:
    if isinstance(subject, PushedManifest):
        return subject.descriptor()
    size, media_type, digest = _manifest_head(client, repo, subject)
    return {"mediaType": media_type, "digest": digest, "size": size}


def referrers_fallback_tag(subject_digest: str) -> str:
    """The OCI 1.1 referrers tag schema: `sha256:<hex>` → `sha256-<hex>`."""
    algorithm, sep, hex_ = str(subject_digest).partition(":")
    if not sep:
        raise ValueError(f"not a digest: {subject_digest!r}")
    return f"{algorithm}-{hex_}"


def get_manifest(client: httpx.Client, repo: str, ref: str) -> tuple[bytes, str] | None:
    """The manifest bytes and media type at `ref`, or None when the registry does not know it."""
    r = client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})
    if r.status_code == 404:
        return None
    _check(r, f"get manifest {repo}:{ref}", (200,))
    return r.content, r.headers["content-type"].split(";")[0]


def push_referrers_fallback(client: httpx.Client, repo: str, subject: str, referrers: Sequence[Mapping],
                            *, replace: bool = False) -> PushedManifest:
    """Maintain the `sha256-<hex>` tag: an OCI index of `subject`'s referrers, as OCI 1.1 clients
    do on registries without the referrers API. Adds to the existing index unless `replace`.

    `referrers` are descriptors (`PushedManifest.descriptor(artifactType=...)`); `subject` a digest.
    """
    tag = referrers_fallback_tag(subject)
    manifests: list[dict] = []
    if not replace:
        existing = get_manifest(client, repo, tag)
        if existing is not None:
            manifests = json.loads(existing[0]).get("manifests", [])
    have = {m["digest"] for m in manifests}
    manifests += [dict(d) for d in referrers if d["digest"] not in have]
    body = _canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    return _put_manifest(client, repo, tag, body, OCI_INDEX)


def push_artifact(client: httpx.Client, repo: str, *, subject: str, artifact_type: str,
                  payload: bytes = b'{"critical":{"type":"regsweep testbed signature"}}',
                  payload_media_type: str | None = None, tag: str | None = None,
                  annotations: Mapping[str, str] | None = None, referrers_tag: bool = True,
                  known: set | None = None) -> PushedManifest:
    """Push a signature/SBOM-style OCI 1.1 artifact whose `subject` is `subject`; returns its digest.

    The artifact is an image manifest with `artifactType`, the empty config `{}` and one payload
    layer; `subject` is a digest or tag in `repo`. With `referrers_tag` (the default) the subject's
    `sha256-<hex>` fallback index is updated too, since Distribution 2.8 has no referrers API.
    """
    subject_desc = _subject_descriptor(client, repo, subject)
    empty = push_blob(client, repo, _EMPTY_JSON, known=known)
    layer = push_blob(client, repo, payload, known=known)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": len(_EMPTY_JSON)},
        "layers": [{"mediaType": payload_media_type or artifact_type, "digest": layer, "size": len(payload)}],
        "subject": subject_desc,
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    body = _canonical(manifest)
    pushed = _put_manifest(client, repo, tag or sha256_digest(body), body, OCI_MANIFEST)
    if referrers_tag:
        desc = pushed.descriptor(artifactType=artifact_type)
        if annotations:
            desc["annotations"] = dict(annotations)
        push_referrers_fallback(client, repo, subject_desc["digest"], [desc])
    return pushed


def push_raw_manifest(client: httpx.Client, repo: str, ref: str, body: bytes, media_type: str) -> PushedManifest:
    """PUT these exact bytes as a manifest (odd, foreign or malformed ones); raises PushError if refused.

    Distribution 2.8 refuses bytes that are not JSON and unknown manifest media types (400
    MANIFEST_INVALID) but stores OCI manifests with foreign config types (Helm charts, artifacts).
    """
    return _put_manifest(client, repo, ref, body, media_type)


def tag_manifest(client: httpx.Client, repo: str, digest_or_tag: str, new_tag: str) -> PushedManifest:
    """Point `new_tag` at the manifest `digest_or_tag` resolves to (re-PUT of the same bytes)."""
    if isinstance(digest_or_tag, PushedManifest):
        body, media_type = digest_or_tag.body, digest_or_tag.media_type
    else:
        found = get_manifest(client, repo, digest_or_tag)
        if found is None:
            raise PushError(f"tag {repo}:{new_tag}: manifest {digest_or_tag} not found")
        body, media_type = found
    return _put_manifest(client, repo, new_tag, body, media_type)


# --------------------------------------------------------------------------- bulk


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
    _check(r, f"mount {digest} into {repo}", (202,))
    location = httpx.URL(r.headers["location"]).copy_merge_params({"digest": digest})
    _check(client.put(location, content=data, headers={"Content-Type": "application/octet-stream"}),
           f"upload blob {digest} to {repo}", (201,))


def push_images(client: httpx.Client, specs: Iterable[ImageSpec], *, workers: int = 8) -> list[PushedManifest]:
    """Push many images in parallel; returns their digests in order.

    Every distinct blob is uploaded once and mounted into the other repositories that need it, and
    manifests are PUT by `workers` threads: the registry's CPU is the limit, not the client's.
    """
    specs = list(specs)
    built = [_build_image(s.layers, s.config, s.annotations, s.media_type) for s in specs]
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
        return _put_manifest(client, spec.repo, spec.tag or sha256_digest(body), body, manifest_type)

    digests = _parallel(put, range(len(specs)), workers)
    # More tags on a manifest only once it exists, so no two writers store the same manifest blob.
    _parallel(lambda job: _put_manifest(client, *job),
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


# --------------------------------------------------------------------------- demo


def _fake_commit(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


def seed_demo(url: str, *, commits: Sequence[str] | None = None, now: datetime | None = None,
              client: httpx.Client | None = None, verify: Any = True) -> dict:
    """Fill the registry at `url` with a small realistic sample for `make demo`; returns a summary.

    Repositories `demo/api`, `demo/web` (multi-platform) and `demo/worker` get `sha-<commit>` tags
    with `org.opencontainers.image.revision` annotations, one per commit in `commits` (newest
    first; fake shas when omitted), built an hour apart; plus `v1.2.0`, `latest`, and a signature
    on the newest api image. Summary: {"registry", "repositories": {repo: {tag: digest}},
    "commits", "tags", "manifests"}.
    """
    now = now or datetime.now(timezone.utc)
    commits = list(commits) if commits else [_fake_commit(f"regsweep-demo-{i}") for i in range(8)]
    own_client = client is None
    client = client or httpx.Client(base_url=url, timeout=30, verify=verify)
    summary: dict[str, Any] = {"registry": url, "repositories": {}, "commits": commits}
    try:
        for repo in ("demo/api", "demo/worker"):
            tags = {}
            for i, commit in enumerate(commits):
                built = now - timedelta(hours=i + 1)
                annotations = {"org.opencontainers.image.revision": commit,
                               "org.opencontainers.image.created": _rfc3339(built),
                               "org.opencontainers.image.source": "https://git.example.com/demo/app"}
                tags[f"sha-{commit[:12]}"] = push_image(
                    client, repo, f"sha-{commit[:12]}",
                    layers=[DEFAULT_LAYER, f"{repo} {commit}".encode()],
                    config={"created": built, "config": {"Labels": {
                        "org.opencontainers.image.revision": commit}}},
                    annotations=annotations)
            newest = tags[f"sha-{commits[0][:12]}"]
            tags["latest"] = tag_manifest(client, repo, newest, "latest")
            oldest = tags[f"sha-{commits[-1][:12]}"]
            tags["v1.2.0"] = tag_manifest(client, repo, oldest, "v1.2.0")
            summary["repositories"][repo] = tags
        sig = push_artifact(client, "demo/api", subject=summary["repositories"]["demo/api"]["latest"],
                            artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json",
                            annotations={"org.opencontainers.image.created": _rfc3339(now)})
        summary["signature"] = sig

        web = {}
        for i, commit in enumerate(commits[:4]):
            built = now - timedelta(hours=i + 1)
            children = []
            for arch in ("amd64", "arm64"):
                child = push_image(client, "demo/web", None,
                                   layers=[DEFAULT_LAYER, f"web {arch} {commit}".encode()],
                                   config={"created": built, "architecture": arch})
                children.append((child, {"architecture": arch, "os": "linux"}))
            web[f"sha-{commit[:12]}"] = push_index(
                client, "demo/web", f"sha-{commit[:12]}", children,
                annotations={"org.opencontainers.image.revision": commit,
                             "org.opencontainers.image.created": _rfc3339(built)})
        web["latest"] = tag_manifest(client, "demo/web", web[f"sha-{commits[0][:12]}"], "latest")
        summary["repositories"]["demo/web"] = web
        summary["tags"] = sum(len(t) for t in summary["repositories"].values())
        summary["manifests"] = sum(len(set(t.values())) for t in summary["repositories"].values())
    finally:
        if own_client:
            client.close()
    return summary
