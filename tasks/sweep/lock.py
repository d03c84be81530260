"""One sweep per registry at a time: a lock file in the store.

The lock is created atomically and names its owner (host, pid and the pid's start time), so a
lock left by a sweep that died on this host is taken over, while another host's lock is never
broken. Atomic means O_EXCL on a local store and a conditional PUT (If-None-Match: *) on S3,
where a dead owner's lock is also removed only while it is still that version (If-Match). Other
object stores have no exclusive create: there the lock is written and read back, best effort,
which is why deployments also set a Prefect concurrency limit of one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import time
from typing import Iterator

from tasks.common.errors import NotFound, StoreError, SweepLocked
from tasks.oci.reference import registry_key
from tasks.store.store import Store
from tasks.common.units import utcnow


def _host() -> str:
    return socket.gethostname()


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), so a recycled pid is not taken for the owner."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now_start = _proc_start(pid)
    return start is None or now_start is None or now_start == start


def lock_path(store: Store, registry_url: str) -> str:
    # Lower case: host names are case-insensitive, and load_plan accepts a plan across cases too.
    slug = re.sub(r"[^a-z0-9._-]+", "_", registry_key(registry_url).split("://", 1)[-1]).strip("_")
    return store.path("locks", f"sweep-{slug}.lock")


@contextlib.contextmanager
def sweep_lock(store: Store, registry_url: str, plan: str) -> Iterator[dict]:
    """Hold the store's lock for sweeping `registry_url`; SweepLocked when another sweep has it.

    Local stores create the lock file with O_EXCL, S3 with a conditional PUT; a lock whose owner
    process is gone (same host, pid dead) is stale and taken over. Other object stores have no
    exclusive create: there the lock is best effort, so also give the deployment a concurrency
    limit of 1 (prefect.yaml).
    """
    path = lock_path(store, registry_url)
    pid = os.getpid()
    owner = {"pid": pid, "pid_start": _proc_start(pid), "host": _host(), "registry": registry_url,
             "plan": plan, "since": utcnow().isoformat()}
    body = json.dumps(owner).encode()
    etag = None
    if store.local:
        try:
            _acquire_local(path, body, registry_url)
        except OSError as e:  # not a lock held by another sweep: the store itself is unusable here
            raise StoreError(f"store {store.url}: cannot create the sweep lock {path}: {e}") from None
    elif store.atomic_create:
        etag = _acquire_atomic_remote(store, path, body, registry_url)
    else:
        _acquire_remote(store, path, owner, registry_url)
    try:
        yield owner
    finally:
        with contextlib.suppress(OSError):
            if etag is not None:
                store.delete_if(path, etag)   # ours, unless a breaker took it for dead: then theirs stays
            else:
                current = _read_owner(store, path)
                if current and current.get("pid") == pid and current.get("host") == owner["host"] \
                        and current.get("since") == owner["since"]:
                    store.fs.rm(path) if not store.local else os.unlink(path)


def _read_owner(store: Store, path: str) -> dict | None:
    """The lock's owner; None when there is no lock, {} when it cannot be read (being written)."""
    return _parse_owner(lambda: open(path, "rb") if store.local else store.fs.open(path, "rb"))


def _read_owner_local(path: str) -> dict | None:
    return _parse_owner(lambda: open(path, "rb"))


def _parse_owner(opener) -> dict | None:
    try:
        with opener() as f:
            return json.loads(f.read() or b"{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _locked_message(registry_url: str, owner: dict | None, path: str) -> str:
    if not owner:
        return f"another sweep of {registry_url} is running (lock {path})"
    return (f"another sweep of {registry_url} is running: pid {owner.get('pid')} on {owner.get('host')}, "
            f"plan {owner.get('plan')}, since {owner.get('since')} (lock {path})")


def _stale(owner: dict | None) -> bool:
    if not owner or owner.get("host") != _host() or not isinstance(owner.get("pid"), int):
        return False  # another host's process cannot be checked: never break its lock
    return not _alive(owner["pid"], owner.get("pid_start"))


def _acquire_local(path: str, body: bytes, registry_url: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_owner_local(path)
            if owner is None:
                continue  # released meanwhile
            if owner == {} and time.time() - _mtime(path) < 5:
                time.sleep(0.1)  # being written right now
                owner = _read_owner_local(path)
            if not _stale(owner):
                raise SweepLocked(_locked_message(registry_url, owner, path)) from None
            _break_stale(path, owner)
            continue
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    raise SweepLocked(_locked_message(registry_url, _read_owner_local(path), path))


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _break_stale(path: str, seen: dict | None) -> None:
    """Remove a dead owner's lock, serialised so two sweeps cannot both break and re-take it."""
    breaker = path + ".break"
    try:
        fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if time.time() - _mtime(breaker) > 60:  # a breaker that died while breaking
            with contextlib.suppress(FileNotFoundError):
                os.unlink(breaker)
        time.sleep(0.05)
        return
    os.close(fd)
    try:
        if _read_owner_local(path) == seen:  # still the same dead owner, not a new live one
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    finally:
        os.unlink(breaker)


def _acquire_atomic_remote(store: Store, path: str, body: bytes, registry_url: str) -> str | None:
    """Create the lock with one conditional write; a dead owner's lock is removed only while it is
    still that very version (If-Match), so two sweeps breaking it at once cannot both take it."""
    for _ in range(3):
        try:
            return store.create_exclusive(path, body)
        except FileExistsError:
            pass
        try:
            data, etag = store.read_versioned(path)
        except NotFound:
            continue  # released meanwhile
        owner = _parse_owner(lambda: io.BytesIO(data))
        if not _stale(owner):
            raise SweepLocked(_locked_message(registry_url, owner, path))
        store.delete_if(path, etag)
    raise SweepLocked(_locked_message(registry_url, _read_owner(store, path), path))


def _acquire_remote(store: Store, path: str, owner: dict, registry_url: str) -> None:
    current = _read_owner(store, path)
    if current is not None and not _stale(current):
        raise SweepLocked(_locked_message(registry_url, current, path))
    store.write_json(path, owner)
    if _read_owner(store, path) != json.loads(json.dumps(owner, default=str)):
        raise SweepLocked(_locked_message(registry_url, _read_owner(store, path), path))
