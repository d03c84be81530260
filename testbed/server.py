"""A real Docker Distribution registry on loopback: Debian's `docker-registry` (Distribution 2.8.2).

`LocalRegistry` starts one on a free 127.0.0.1 port (plain HTTP, TLS, htpasswd or token auth),
garbage-collects it, and stops it; a registry left running when the interpreter exits is
stopped then. `LocalRegistry.client()` builds the client the push helpers (testbed/push.py) take.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import httpx
import yaml

from tasks.registry.auth import ChallengeAuth, Credentials
from testbed.client import sync_client
from testbed.loopback import Loopback, free_port


class LocalRegistryError(RuntimeError):
    """The local registry could not be started, stopped or garbage-collected."""


@dataclass(frozen=True)
class TokenAuth:
    """Distribution's `auth.token` section: where clients get tokens and whom to trust."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: str


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


class LocalRegistry(Loopback):
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

    # -- addresses (host and url: Loopback)
    not_started_error = LocalRegistryError

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

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
                self.port = free_port()
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

    def client(self, *, auth: ChallengeAuth | None = None, timeout: float = 30.0) -> httpx.Client:
        """An httpx client for this registry (`base_url` set) that trusts `ca_pem`.

        With `credentials` (or an `auth` given) it authenticates through regsweep's own
        ChallengeAuth: Basic, or the Docker token dance with a token per scope.
        """
        if auth is None and self.credentials is not None:
            auth = ChallengeAuth(self.host, Credentials(*self.credentials))
        if auth is None:
            return httpx.Client(base_url=self.url, timeout=timeout, verify=self._verify())
        return sync_client(self.url, auth=auth, verify=self._verify(), timeout=timeout)

    def _verify(self) -> Any:
        return ssl.create_default_context(cafile=self.ca_pem) if self.ca_pem else True

    def __enter__(self) -> "LocalRegistry":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalRegistry({self.url if self.port else 'not started'})"
