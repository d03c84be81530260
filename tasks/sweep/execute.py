"""Deleting: the async loop that sends each DELETE after its last re-check, journalling every attempt.

`delete_targets` runs the whole step after approval: the plan's age once more, the fresh cluster
scan, the `planned` records, the registry re-check and the loop, over one registry backend
(tasks/registry/backends/: the Distribution API, or the native API `registry.api` names). Right
before each DELETE, and before each retry of one, the target's repository is read again
(tasks/sweep/recheck.py `RegistryRecheck`): a tag, index or artifact pushed onto a target while
the sweep ran keeps it. What the registry can delete comes from its probed capabilities
(tasks/registry/capabilities.py), recorded with the plan; where none were recorded, the first
refusal of a lone tag decides for the rest. A lone-tag DELETE that took its digest along stops
every further one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Awaitable, Callable

from tasks.registry.capabilities import DENIED, NO, YES, Capabilities
from tasks.registry.distribution import RetryPolicy
from tasks.common.errors import RegistryAuthError, RegistryError, RegistryUnreachable, StoreError, UnsupportedOperation
from tasks.common.notes import collecting, warn
from tasks.store.store import Store
from tasks.sweep.journal import Event, Journal
from tasks.sweep.loading import check_age_after_approval, no_tag_delete, reclaim_after
from tasks.sweep.recheck import Protection, RegistryRecheck, merge_digests, recheck_cluster, recheck_registry
from tasks.sweep.intent import Intent
from tasks.sweep.report import SweepReport
from tasks.sweep.targets import DONE, FAILED, PLANNED, SKIPPED, STARTED, WOULD_DELETE, Outcome, Target

if TYPE_CHECKING:
    from tasks.registry.backends import Backend
    from tasks.config.models import RegsweepConfig, SweepConfig

log = logging.getLogger("regsweep.sweep")


def delete_targets(config: "RegsweepConfig", store: Store, intent: Intent, *, dry_run: bool = False) -> SweepReport:
    """Re-check and delete an approved intent (or, dry, report what would go).

    Raises PlanRefused, deleting nothing, when the plan is now older than `sweep.maxPlanAge`, and
    SweepFailed, deleting nothing, when a re-check cannot run; a target that fails is recorded in
    the report (and the journal) instead.
    """
    from tasks.common.progress import reporter

    # The plan was checked before approval; a wait for approval may have aged it past the limit.
    check_age_after_approval(intent, config.sweep)
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
        recheck = RegistryRecheck(backend, intent.targets, intent.known, config.registry.concurrency,
                                  merge_digests(intent.referenced, prot.referenced))
        prot.update(await recheck_registry(recheck, intent.targets))
        return await execute(backend, intent, journal, config.sweep, dry_run=dry_run, protection=prot,
                             progress=progress, recheck=recheck)


async def execute(backend: "Backend", intent: Intent, journal: Journal | None, settings: "SweepConfig", *,
                  dry_run: bool = False, protection: Protection | None = None,
                  progress: Callable[[int], None] | None = None, recheck: RegistryRecheck | None = None,
                  deleter: "Backend | None" = None) -> list[Outcome]:
    """Delete `intent.targets` in order with bounded concurrency, journalling each attempt (`journal`
    is None on a dry run, which sends no DELETE).

    `started` records are written ahead, a window of targets per journal file (fsynced) before
    any of them is requested; `done`/`skipped`/`failed` records ride along with the next such
    file or are written within a second. A sweep killed in between leaves targets `started`
    without an end: the next run looks each of those up before anything else.

    Right before each DELETE, and again after any wait to retry it, the target's repository is
    read again (`recheck`, shared by the DELETEs that ask at the same time): its planned tags
    must still resolve to it and no other tag, new index or new artifact may now need it.
    DELETEs go through `deleter`, a backend that does not retry on its own (opened here when not
    given), so that no retry goes out without that look; reads go through `backend`.
    """
    run = _Deletion(backend, intent, journal, settings, dry_run=dry_run, protection=protection, progress=progress,
                    recheck=recheck or RegistryRecheck(backend, intent.targets, intent.known,
                                                       backend.config.concurrency, intent.referenced))
    if dry_run or deleter is not None:
        return await run.run(deleter or backend)
    from tasks.registry.backends import open_backend

    async with open_backend(backend.config, RetryPolicy(attempts=1)) as own:
        return await run.run(own)


class _Settled(Exception):
    """A look at the registry while retrying a DELETE ended the target: (status, detail)."""

    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class _RecheckFailed(Exception):
    """A look at the registry while retrying a DELETE failed: not a reason to retry the DELETE."""

    def __init__(self, error: RegistryError):
        super().__init__(str(error))
        self.error = error


class _Deletion:
    """One run of the deletion loop (`execute`): an announcer and `settings.concurrency` workers.

    The announcer journals `started` for a window of targets, then queues them; each worker takes
    a target, waits for its parents, asks `_blocked` whether anything rules it out, and otherwise
    `_delete`s it. Every target ends in exactly one `_finish`. All state lives on the event loop's
    thread, so nothing here needs a lock except the order of journal files and lone-tag deletion.
    """

    def __init__(self, backend: "Backend", intent: Intent, journal: Journal | None, settings: "SweepConfig", *,
                 dry_run: bool, protection: Protection | None, progress: Callable[[int], None] | None,
                 recheck: RegistryRecheck):
        self.backend, self.intent, self.journal, self.dry_run = backend, intent, journal, dry_run
        self.registry = intent.registry
        self.protection = protection or Protection()
        self.progress = progress
        #: The registry read again right before each DELETE, per repository.
        self.recheck = recheck
        #: Where DELETEs go: a backend without retries of its own (set by `run`); `self.retry` retries them.
        self.deleter: "Backend" = backend
        self.retry = backend.retry
        self.workers = settings.concurrency
        #: How many targets one `started` journal file announces; workers refill at half of it.
        self.window = max(64, 8 * self.workers)
        loop = asyncio.get_running_loop()
        #: "repo@digest" -> the status its manifest target ends with; its children await it.
        self.finished: dict[str, asyncio.Future] = {
            f"{t.repository}@{t.digest}": loop.create_future() for t in intent.targets if not t.is_tag}
        #: Manifests an earlier run of the plan deleted: a child need not wait for those.
        self.done_before = {(t.repository, t.digest) for t in intent.done_before if not t.is_tag}
        #: Every target's outcome, in the order they ended.
        self.outcomes: list[Outcome] = []
        #: End records (done/skipped/failed) not journalled yet.
        self.pending: list[Event] = []
        #: The first error that makes every further request pointless; set once, then every
        #: target not yet attempted is skipped with it.
        self.stop: str | None = None
        # What the registry answers to a lone-tag DELETE: the recorded probe's answer, else learnt
        # from the first lone-tag DELETE of this run (the others wait for it).
        caps = intent.capabilities or Capabilities(api=backend.api)
        self.tag_delete: str = caps.delete_tag
        #: Set once a lone-tag DELETE took its digest along: why no further lone tag is deleted.
        self.tag_delete_unsafe: str | None = None
        #: A lone-tag DELETE of this run removed its tag and its digest was still there after:
        #: until then lone tags go one at a time, so that the first answer decides for the rest.
        self.tag_delete_seen_safe = False
        self.tag_lock = asyncio.Lock()
        #: Targets announced (`started` is durable) and not yet taken by a worker; None ends a worker.
        self.ready: asyncio.Queue[Target | None] = asyncio.Queue()
        #: Set when `ready` has drained to half a window: the announcer may journal the next one.
        self.room = asyncio.Event()
        #: One journal file at a time, so files sort in the order written.
        self.writing = asyncio.Lock()

    async def run(self, deleter: "Backend") -> list[Outcome]:
        """Delete every target through `deleter`; the outcomes, in the order they ended."""
        self.deleter = deleter
        all_done = asyncio.Event()

        async def deleting() -> None:
            try:
                async with asyncio.TaskGroup() as inner:
                    inner.create_task(self._announce())
                    for _ in range(self.workers):
                        inner.create_task(self._work())
            finally:
                all_done.set()

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(deleting())
                tg.create_task(self._flush_every_second(all_done))
        except BaseExceptionGroup as eg:
            first = eg.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            await self._flush_now()
            await self.recheck.close()
        return self.outcomes

    # -- outcomes and the journal ------------------------------------------------------------------
    def _finish(self, t: Target, status: str, detail: str = "") -> None:
        """Record how `t` ended, wake its children, and queue its end record for the journal."""
        self.outcomes.append(t.outcome(status, detail))
        if not t.is_tag:
            fut = self.finished[f"{t.repository}@{t.digest}"]
            if not fut.done():
                fut.set_result(status)
        if status != WOULD_DELETE:
            self.pending.append((t.repository, t.ref, status, detail or None))
        if self.progress:
            self.progress(1)

    async def _write(self, rows: list[Event]) -> None:
        if self.journal is not None and rows:
            async with self.writing:
                await asyncio.to_thread(self.journal.write, rows)

    async def _flush_now(self) -> None:
        rows, self.pending = self.pending, []
        await self._write(rows)

    async def _flush_every_second(self, until: asyncio.Event) -> None:
        while not until.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), 1.0)
            await self._flush_now()

    # -- the announcer and the workers -------------------------------------------------------------
    async def _announce(self) -> None:
        """Journal `started` for the next window of targets, then hand them to the workers."""
        targets, ready, half = self.intent.targets, self.ready, self.window // 2
        i = 0
        while i < len(targets):
            while ready.qsize() > half:
                self.room.clear()
                await self.room.wait()
            chunk = []
            for t in targets[i:i + self.window - ready.qsize()]:
                i += 1
                if t.key in self.protection.reasons:  # known before any request: no attempt to record
                    self._finish(t, SKIPPED, self.protection.reasons[t.key])
                else:
                    chunk.append(t)
            chunk = await self._record_for_restore(chunk)
            rows = [(t.repository, t.ref, STARTED, None if not t.is_tag else f"tag of {t.digest}") for t in chunk]
            await self._flush_now()
            await self._write(rows)
            for t in chunk:
                ready.put_nowait(t)
        for _ in range(self.workers):
            ready.put_nowait(None)

    async def _record_for_restore(self, chunk: list[Target]) -> list[Target]:
        """Record each target's manifest for `regsweep restore` (tasks/sweep/restore.py), durable
        before its `started` record; a target whose manifest cannot be read is not deleted. A dry
        run records nothing."""
        if self.journal is None or not chunk:
            return chunk
        from tasks.sweep.restore import RestoreLog, record_manifests

        records, refused = await record_manifests(self.backend.oci, chunk)
        async with self.writing:
            await asyncio.to_thread(RestoreLog(self.journal.store, self.journal.plan_id).write, records)
        for t in chunk:
            if (why := refused.get(f"{t.repository}\n{t.ref}")) is not None:
                self._finish(t, SKIPPED, why)
        return [t for t in chunk if f"{t.repository}\n{t.ref}" not in refused]

    async def _work(self) -> None:
        while (t := await self.ready.get()) is not None:
            if self.ready.qsize() <= self.window // 2:
                self.room.set()
            await self._parents_settled(t)
            why = self._blocked(t)
            if why is not None:
                self._finish(t, SKIPPED, why)
            else:
                await self._delete(t)

    async def _parents_settled(self, t: Target) -> None:
        """Wait for `t`'s parents (its indexes, its subject) in order, up to the first not deleted."""
        for p in t.parents:
            if (t.repository, p) in self.done_before:
                continue
            fut = self.finished.get(f"{t.repository}@{p}")
            if fut is None or await fut not in (DONE, WOULD_DELETE):
                return

    def _blocked(self, t: Target) -> str | None:
        """Why `t` must not be attempted, from what is known without asking the registry; None: go on."""
        for p in t.parents:
            if (t.repository, p) in self.done_before:
                continue
            # A parent that is no target of this run (kept up front) was not deleted either.
            fut = self.finished.get(f"{t.repository}@{p}")
            if fut is None or (fut.done() and fut.result() not in (DONE, WOULD_DELETE)):
                return f"{p}, which it belongs to, was not deleted"
        if self.stop:
            return f"not attempted: {self.stop}"
        if t.is_tag and self.tag_delete_unsafe:
            return f"not attempted: {self.tag_delete_unsafe}"
        if t.is_tag and self.tag_delete in (NO, DENIED):
            return no_tag_delete(self.registry, t)
        if not t.is_tag and self.intent.refusal:   # a dry run of a plan this registry cannot delete
            return self.intent.refusal
        if not t.is_tag and not t.tags and not self.backend.untagged_deletable:
            return f"the {self.backend.api} API of registry {self.registry} cannot delete an untagged manifest"
        return None

    # -- the requests ------------------------------------------------------------------------------
    async def _delete(self, t: Target) -> None:
        """Look at `t`'s repository once more, then DELETE `t` (a dry run stops before it); ends `t`."""
        try:
            if t.key in self.intent.in_flight:
                # An earlier run announced this DELETE and died: it may have gone out.
                if await self.backend.resolve(t.repository, t.ref) is None:
                    return self._finish(t, DONE, "deleted by an earlier run (found gone on resume)")
            if t.is_tag and not self.dry_run:
                return await self._delete_tag(t)
            if (end := await self._look_again(t)) is not None:
                return self._finish(t, *end)
            if self.dry_run:
                return self._finish(t, WOULD_DELETE)
            existed = await self._send(t, lambda: self.deleter.delete_manifest(t.repository, t.digest, t.tags))
        except _Settled as s:
            return self._finish(t, s.status, s.detail)
        except _RecheckFailed as e:
            return self._failed(t, e.error)
        except RegistryError as e:
            return self._failed(t, e)
        self._finish(t, DONE, "" if existed else "already gone (404)")

    async def _look_again(self, t: Target) -> tuple[str, str] | None:
        """`t`'s repository read by a read started now: (status, detail) when `t` must not be
        sent (already gone, or something now needs it); None when it may go."""
        now = await self.recheck.fresh(t.repository, self.recheck.mark())
        for tag in t.tags:
            current = now.tags.get(tag)
            if current != t.digest:
                if current is None and (t.is_tag or await self.backend.resolve(t.repository, t.digest) is None):
                    return DONE, "already gone from the registry"
                why = f"tag {tag} is gone" if current is None else f"tag {tag} now points at {current}"
                return SKIPPED, f"{why}, not the planned {t.digest}"
        why_kept = None if t.is_tag else now.why_kept(t)
        return (SKIPPED, why_kept) if why_kept else None

    async def _send(self, t: Target, request: Callable[[], Awaitable[bool]]) -> bool:
        """Send `t`'s DELETE; when the registry asks for a retry, wait as it says, then look at the
        repository again and send again only if `t` may still go (_Settled when it may not)."""
        first = True

        async def attempt() -> bool:
            nonlocal first
            if not first:
                try:
                    end = await self._look_again(t)
                except RegistryError as e:
                    raise _RecheckFailed(e) from None
                if end is not None:
                    raise _Settled(*end)
            first = False
            async with self.recheck.sending(t.repository):
                return await request()

        return await self.retry.run(attempt)

    def _failed(self, t: Target, e: RegistryError) -> None:
        """End `t` as failed; an answer every other request would get too stops the sweep instead
        of failing the rest one by one."""
        why = str(e)
        if isinstance(e, UnsupportedOperation):
            why = f"registry {self.registry} refuses deletion ({e}); enable it ({self.backend.enable_hint})"
        if isinstance(e, (UnsupportedOperation, RegistryAuthError, RegistryUnreachable)):
            self.stop = self.stop or why
        self._finish(t, FAILED, why)

    async def _delete_tag(self, t: Target) -> None:
        """DELETE lone tag `t`, then check that its digest is still there.

        Until one lone-tag DELETE of this run has been seen to keep its digest, they go one at a
        time: the first finds out whether the registry can delete a tag alone (where no probe
        said), and whether it deletes only the tag; the rest wait for its answer. A registry that
        took the digest along is unsafe: no further lone tag is deleted.
        """
        async with contextlib.nullcontext() if self.tag_delete_seen_safe else self.tag_lock:
            why = self._blocked(t)   # the answer the others waited for
            if why is not None:
                return self._finish(t, SKIPPED, why)
            if (end := await self._look_again(t)) is not None:
                return self._finish(t, *end)
            try:
                existed = await self._send(t, lambda: self.deleter.delete_tag(t.repository, t.ref))
            except UnsupportedOperation:
                self.tag_delete = NO
                return self._finish(t, SKIPPED, no_tag_delete(self.registry, t))
            self.tag_delete = YES
            try:
                survived = not existed or await self.backend.resolve(t.repository, t.digest) is not None
            except RegistryError as e:
                return self._finish(t, FAILED, f"tag removed, but whether digest {t.digest} stays could not be "
                                               f"checked: {e}")
            if not survived:
                self.tag_delete_unsafe = (
                    f"registry {self.registry} deleted manifest {t.digest} with tag {t.repository}:{t.ref}: its "
                    "tag deletion is unsafe (it deletes the manifest and every tag on it, not the tag alone)")
                warn(log, f"{self.tag_delete_unsafe}; no further lone tag is deleted")
                return self._finish(t, FAILED, f"{self.tag_delete_unsafe}; no further lone tag is deleted")
            self.tag_delete_seen_safe = self.tag_delete_seen_safe or existed
        self._finish(t, DONE, "tag removed, its digest stays" if existed else "already gone (404)")
