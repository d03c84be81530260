"""What a registry lets regsweep do, found by asking it before anything depends on the answer.

The probe sends requests that cannot change anything: a DELETE of a manifest digest no content
hashes to (sha256 of all zeros), a DELETE of a random tag no registry holds, and a referrers
query for that digest. How the registry answers tells:

    answer to the DELETE                         capability
    "not found" (404, ECR's ImageNotFound)       yes      it would delete
    405 / UNSUPPORTED / 400 DIGEST_INVALID       no       the registry refuses (deletion off, no tag delete)
    401 / 403 / AccessDenied                     denied   these credentials may not delete
    anything else                                unknown  (the note says what it answered)

and a referrers answer of 200 means the OCI referrers API is there, 404 that it is not. The
snapshot records the result (`snapshot.json` `registry_capabilities`), the plan copies it, and a
sweep probes again before asking for approval: a registry that cannot delete is said so in one
line then, and lone tags it cannot delete alone are kept, said why, instead of being refused one
DELETE at a time. A registry that answers "not found" for a manifest that does not exist but
refuses a real one is still caught at its first DELETE (the sweep stops there, as before).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable

from tasks.common.errors import RegistryAuthError, RegistryError, UnsupportedOperation
from tasks.common.units import utcnow

if TYPE_CHECKING:
    from tasks.registry.backends import Backend
    from tasks.config.models import RegistryConfig

YES, NO, DENIED, UNKNOWN = "yes", "no", "denied", "unknown"


@dataclass
class Capabilities:
    """The probed capabilities of one registry (JSON in snapshot.json and plan.json)."""

    api: str
    delete_digest: str = UNKNOWN      # delete a manifest, and with it every tag on it
    delete_tag: str = UNKNOWN         # delete one tag, its siblings untouched
    delete_untagged: str = UNKNOWN    # delete a manifest no tag names (platform manifests, referrers)
    referrers: str = UNKNOWN          # the OCI 1.1 referrers API
    repository: str | None = None     # where it was probed
    probed_at: str | None = None
    notes: dict[str, str] = field(default_factory=dict)   # per capability: the answer that decided it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> "Capabilities | None":
        if not isinstance(doc, dict) or "api" not in doc:
            return None
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def summary(self) -> str:
        """One line: `delete by digest: yes; lone tags: no; untagged: yes; referrers API: no`."""
        return (f"delete by digest: {self.delete_digest}; lone tags: {self.delete_tag}; "
                f"untagged: {self.delete_untagged}; referrers API: {self.referrers}")


def markdown_lines(doc: dict[str, Any] | None) -> list[str]:
    """The artifact lines (snapshot, plan) for a recorded probe; none when there is none."""
    caps = Capabilities.from_json(doc)
    return [f"Registry API `{caps.api}`: {caps.summary()}.", ""] if caps else []


async def _answer(probe: Awaitable[Any]) -> tuple[str, str]:
    """Run one probe request and classify its answer (module docstring)."""
    try:
        await probe
    except UnsupportedOperation as e:
        return NO, str(e)
    except RegistryAuthError as e:
        return DENIED, str(e)
    except RegistryError as e:
        return UNKNOWN, str(e)
    return YES, "a DELETE of something that does not exist was answered: not found"


async def probe(backend: "Backend", repository: str) -> Capabilities:
    """Probe `backend` in `repository` (one that exists: some APIs answer 404 for the repository first)."""
    caps = Capabilities(api=backend.api, repository=repository, probed_at=utcnow().isoformat())
    (caps.delete_digest, digest_note), (caps.delete_tag, tag_note) = await asyncio.gather(
        _answer(backend.probe_delete_digest(repository)), _answer(backend.probe_delete_tag(repository)))
    caps.notes = {"delete_digest": digest_note, "delete_tag": tag_note}
    caps.delete_untagged = caps.delete_digest if backend.untagged_deletable else NO
    if not backend.untagged_deletable:
        caps.notes["delete_untagged"] = f"the {backend.api} API deletes tags only; the registry removes untagged manifests itself"
    try:
        found = await backend.oci.referrers(repository, "sha256:" + "0" * 64)
        caps.referrers = NO if found is None else YES
    except RegistryError as e:
        caps.referrers, caps.notes["referrers"] = UNKNOWN, str(e)
    return caps


def cannot_delete(caps: Capabilities, registry: str) -> str | None:
    """Why nothing can be deleted by digest in `registry`, as one line; None when it can."""
    from tasks.registry.backends import backend_class
    from tasks.config.models import REGISTRY_APIS

    hint = backend_class(caps.api).enable_hint if caps.api in REGISTRY_APIS else "see the registry's documentation"
    if caps.delete_digest == NO:
        return (f"registry {registry} refuses deletion ({caps.notes.get('delete_digest', 'probe')}); "
                f"enable it ({hint})")
    if caps.delete_digest == DENIED:
        return (f"registry {registry} does not let these credentials delete "
                f"({caps.notes.get('delete_digest', 'probe')})")
    return None


def probe_registry(config: "RegistryConfig", repository: str) -> Capabilities:
    """`probe` on a backend of its own (for callers outside an event loop)."""
    from tasks.registry.backends import open_backend

    async def go() -> Capabilities:
        async with open_backend(config) as backend:
            return await probe(backend, repository)

    return asyncio.run(go())
