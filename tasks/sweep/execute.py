"""Deleting: the async loop that sends each DELETE after its last re-check, journalling every attempt.

`delete_targets` runs the whole step after approval: the fresh cluster scan, the `planned`
records, the registry re-check and the loop, over one registry backend (tasks/registry/backends/: the
Distribution API, or the native API `registry.api` names). What the registry can delete comes
from its probed capabilities (tasks/registry/capabilities.py), recorded with the plan; where none were
recorded, the first refusal of a lone tag decides for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Callable

from tasks.registry.capabilities import DENIED, NO, UNKNOWN, YES, Capabilities
from tasks.common.errors import RegistryAuthError, RegistryError, RegistryUnreachable, StoreError, UnsupportedOperation
from tasks.common.notes import collecting, warn
from tasks.store.store import Store
from tasks.sweep.journal import Event, Journal
from tasks.sweep.loading import no_tag_delete, reclaim_after
from tasks.sweep.recheck import Protection, merge_digests, recheck_cluster, recheck_registry
from tasks.sweep.intent import Intent
from tasks.sweep.report import SweepReport
from tasks.sweep.targets import DONE, FAILED, PLANNED, SKIPPED, STARTED, WOULD_DELETE, Outcome, Target

if TYPE_CHECKING:
    from tasks.registry.backends import Backend
    from tasks.config.models import RegsweepConfig, SweepConfig

log = logging.getLogger("regsweep.sweep")


def delete_targets(config: "RegsweepConfig", store: Store, intent: Intent, *, dry_run: bool = False) -> SweepReport:
    """Re-check and delete an approved intent (or, dry, report what would go).

    Raises SweepFailed, deleting nothing, when a re-check cannot run; a target that fails is
    recorded in the report (and the journal) instead.
    """
    from tasks.common.progress import reporter

    outcomes: list[Outcome] = []
    rep = reporter()
    with collecting() as notes:
        if intent.targets:
            prot = recheck_cluster(config, intent.targets)
            journal = None if dry_run else Journal(store, intent.plan_id)
            if journal is not None:
                journal.write([(o.repository, o.ref, SKIPPED, o.detail) for o in intent.skipped]
                              + [(t.repository, t.ref, PLANNED, None) for t in intent.targets])
            rep.start("sweep", f"{'checking' if dry_run else 'deleting'} {intent.deletions} targets in "
                               f"{intent.registry}", intent.deletions)
            outcomes = asyncio.run(_recheck_and_execute(config, intent, prot, journal, dry_run,
                                                        lambda n: rep.advance("sweep", n)))
            order = {t.key: i for i, t in enumerate(intent.targets)}
            outcomes.sort(key=lambda o: order.get((o.repository, o.ref), -1))
        report = SweepReport(plan_id=intent.plan_id, registry=intent.registry, dry_run=dry_run,
                             outcomes=list(intent.skipped) + outcomes, done_before=len(intent.done_before))
        report.bytes_reclaimable = _reclaimed(store, intent, report)
    report.notes = notes.to_json()
    if intent.targets:
        rep.finish("sweep", report.summary())
    return report


def _reclaimed(store: Store, intent: Intent, report: SweepReport) -> int | None:
    """What garbage collection frees of the manifests that went: the plan's and the approval
    form's function (tasks/snapshot/footprint.py), over what this run deleted. Unknown (None) rather than
    a failed report when the store cannot give the blobs now: the deletions have happened."""
    if intent.reclaim is None:
        return None   # the snapshot recorded no blobs
    gone = report.gone()
    if not gone:
        return 0
    try:
        rec = reclaim_after(store, intent, gone)
    except StoreError as e:
        warn(log, f"reclaimable bytes unknown: {e}")
        return None
    return None if rec is None else rec.total


async def _recheck_and_execute(config: "RegsweepConfig", intent: Intent, prot: Protection, journal: Journal | None,
                               dry_run: bool, progress: Callable[[int], None]) -> list[Outcome]:
    from tasks.registry.backends import open_backend

    async with open_backend(config.registry) as backend:
        prot.update(await recheck_registry(backend, intent.targets, intent.known, config.registry.concurrency,
                                           merge_digests(intent.referenced, prot.referenced)))
        return await execute(backend, intent, journal, config.sweep, dry_run=dry_run, protection=prot,
                             progress=progress)


async def execute(backend: "Backend", intent: Intent, journal: Journal | None, settings: "SweepConfig", *,
                  dry_run: bool = False, protection: Protection | None = None,
                  progress: Callable[[int], None] | None = None) -> list[Outcome]:
    """Delete `intent.targets` in order with bounded concurrency, journalling each attempt (`journal`
    is None on a dry run, which sends no DELETE).

    `started` records are written ahead, a window of targets per journal file (fsynced) before
    any of them is requested; `done`/`skipped`/`failed` records ride along with the next such
    file or are written within a second. A sweep killed in between leaves targets `started`
    without an end: the next run looks each of those up before anything else.
    """
    registry = intent.registry
    prot = protection or Protection()
    workers = settings.concurrency
    window = max(64, 8 * workers)
    finished: dict[str, asyncio.Future] = {}   # "repo@digest" -> its outcome status
    outcomes: list[Outcome] = []
    finish_records: list[Event] = []
    stop: list[str] = []                       # the first error that makes every other request pointless
    done_before = {(t.repository, t.digest) for t in intent.done_before if not t.is_tag}
    # What the registry can delete: its probe, recorded with the plan; unknown ones are learnt below.
    caps: Capabilities = intent.capabilities or Capabilities(api=backend.api)
    tag_probe = asyncio.Lock()
    ready: asyncio.Queue = asyncio.Queue()
    room = asyncio.Event()
    loop = asyncio.get_running_loop()
    for t in intent.targets:
        if not t.is_tag:
            finished[f"{t.repository}@{t.digest}"] = loop.create_future()

    def outcome(t: Target, status: str, detail: str = "") -> None:
        outcomes.append(Outcome(t.repository, t.ref, t.digest, t.kind, t.tags, t.size, status, detail))
        if not t.is_tag:
            fut = finished[f"{t.repository}@{t.digest}"]
            if not fut.done():
                fut.set_result(status)
        if status != WOULD_DELETE:
            finish_records.append((t.repository, t.ref, status, detail or None))
        if progress:
            progress(1)

    writing = asyncio.Lock()  # one journal file at a time, so files sort in the order written

    async def write(rows: list) -> None:
        if journal is not None and rows:
            async with writing:
                await asyncio.to_thread(journal.write, rows)

    async def flush_now() -> None:
        rows, finish_records[:] = finish_records[:], []
        await write(rows)

    async def flush_every_second(until: asyncio.Event) -> None:
        while not until.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), 1.0)
            await flush_now()

    async def announce() -> None:
        """Journal `started` for the next window of targets, then hand them to the workers."""
        i = 0
        while i < len(intent.targets):
            while ready.qsize() > window // 2:
                room.clear()
                await room.wait()
            chunk = []
            for t in intent.targets[i:i + window - ready.qsize()]:
                i += 1
                if t.key in prot.reasons:  # known before any request: no attempt to record
                    outcome(t, SKIPPED, prot.reasons[t.key])
                else:
                    chunk.append(t)
            rows = [(t.repository, t.ref, STARTED, None if not t.is_tag else f"tag of {t.digest}") for t in chunk]
            await flush_now()
            await write(rows)
            for t in chunk:
                ready.put_nowait(t)
        for _ in range(workers):
            ready.put_nowait(None)

    async def worker() -> None:
        while (t := await ready.get()) is not None:
            if ready.qsize() <= window // 2:
                room.set()
            await one(t)

    async def one(t: Target) -> None:
        # Parents first: a platform manifest waits for its indexes, an artifact for its subject.
        for p in t.parents:
            if (t.repository, p) in done_before:
                continue
            status = await finished[f"{t.repository}@{p}"]
            if status not in (DONE, WOULD_DELETE):
                return outcome(t, SKIPPED, f"{p}, which it belongs to, was not deleted")
        if stop:
            return outcome(t, SKIPPED, f"not attempted: {stop[0]}")
        if t.is_tag and caps.delete_tag in (NO, DENIED):
            return outcome(t, SKIPPED, no_tag_delete(registry, t))
        if not t.is_tag and intent.refusal:   # a dry run of a plan this registry cannot delete
            return outcome(t, SKIPPED, intent.refusal)
        if not t.is_tag and not t.tags and not backend.untagged_deletable:
            return outcome(t, SKIPPED, f"the {backend.api} API of registry {registry} cannot delete an untagged manifest")
        try:
            if t.key in intent.in_flight:
                # An earlier run announced this DELETE and died: it may have gone out.
                if await backend.resolve(t.repository, t.ref) is None:
                    return outcome(t, DONE, "deleted by an earlier run (found gone on resume)")
            for tag in t.tags:
                now = await backend.resolve(t.repository, tag)
                if now != t.digest:
                    if now is None and (t.is_tag or await backend.resolve(t.repository, t.digest) is None):
                        return outcome(t, DONE, "already gone from the registry")
                    why = f"tag {tag} is gone" if now is None else f"tag {tag} now points at {now}"
                    return outcome(t, SKIPPED, f"{why}, not the planned {t.digest}")
            if dry_run:
                return outcome(t, WOULD_DELETE)
            if t.is_tag:
                return await delete_tag(t)
            existed = await backend.delete_manifest(t.repository, t.digest, t.tags)
        except UnsupportedOperation as e:
            stop.append(f"registry {registry} refuses deletion ({e}); enable it ({backend.enable_hint})")
            return outcome(t, FAILED, stop[-1])
        except (RegistryAuthError, RegistryUnreachable) as e:
            # Every other request would meet the same answer: stop instead of failing them one by one.
            stop.append(str(e))
            return outcome(t, FAILED, str(e))
        except RegistryError as e:
            return outcome(t, FAILED, str(e))
        outcome(t, DONE, "" if existed else "already gone (404)")

    async def delete_tag(t: Target) -> None:
        # Without a recorded probe the first lone-tag deletion finds out whether the registry can
        # do it; the rest wait for its answer instead of each being refused.
        async with tag_probe if caps.delete_tag == UNKNOWN else contextlib.nullcontext():
            if caps.delete_tag in (NO, DENIED):
                return outcome(t, SKIPPED, no_tag_delete(registry, t))
            try:
                existed = await backend.delete_tag(t.repository, t.ref)
            except UnsupportedOperation as e:
                caps.delete_tag, caps.notes["delete_tag"] = NO, str(e)
                return outcome(t, SKIPPED, no_tag_delete(registry, t))
            caps.delete_tag = YES
        outcome(t, DONE, "tag removed, its digest stays" if existed else "already gone (404)")

    all_done = asyncio.Event()

    async def deleting() -> None:
        try:
            async with asyncio.TaskGroup() as inner:
                inner.create_task(announce())
                for _ in range(workers):
                    inner.create_task(worker())
        finally:
            all_done.set()

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(deleting())
            tg.create_task(flush_every_second(all_done))
    except BaseExceptionGroup as eg:
        first = eg.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    finally:
        await flush_now()
    return outcomes
