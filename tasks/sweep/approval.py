"""The text a human approves a sweep from (Prefect's approval form, and the intent artifact).

Written for the form's narrow column: totals (both byte figures: freed by garbage collection, and
image sizes added up) and the plan's age first, then per repository what goes and why (counts,
bytes, every reason class with its count, the largest and the oldest items), then each
repository's deletions by tag; digests and every row are in the plan's own artifact, which the
form links to.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime

from tasks.common.units import human_bytes, parse_time, utcnow
from tasks.sweep.intent import Intent
from tasks.sweep.restore import window
from tasks.sweep.targets import Target

#: Reason texts with their per-item details folded away: the classes the form counts.
_CLASSES = [
    (re.compile(r"^built .+ ago \(not within (?P<window>[^)]+)\)$"), r"built more than \g<window> ago"),
    (re.compile(r"^(?P<what>platform of deleted index|referrer of deleted) sha256:[0-9a-f]{64}$"), r"\g<what> (goes with it)"),
    (re.compile(r"^git: commit [0-9a-f]{7,40} "), "git: its commit is "),
]


def reason_class(reason: str) -> str:
    for rx, repl in _CLASSES:
        if rx.search(reason):
            return rx.sub(repl, reason)
    return reason


def _age(ts: str | datetime | None, now: datetime) -> str:
    t = parse_time(ts) if ts is not None else None
    if t is None:
        return "at an unknown time"
    minutes = (now - t).total_seconds() / 60
    if minutes < 1:
        return "less than a minute ago"
    if minutes < 90:
        return f"{round(minutes)} min ago"
    return f"{round(minutes / 60)}h ago" if minutes < 48 * 60 else f"{round(minutes / 1440)} days ago"


def _short(ref: str) -> str:
    """Digests and referrers fallback tags, cut to what a reader compares."""
    return ref[:19] + "…" if len(ref) > 40 else ref


def _name(t: Target) -> str:
    if t.is_tag:
        return f"`{t.ref}` (this tag only)"
    return ", ".join(f"`{_short(tag)}`" for tag in t.tags) if t.tags else f"`{_short(t.digest)}`"


_RELATIVE = {"image": ("platform manifest", "platform manifests"),
             "artifact": ("signature or other artifact", "signatures or other artifacts"),
             "referrers-index": ("referrers index", "referrers indexes")}


def _families(ts: list[Target]) -> list[tuple[Target, list[Target]]]:
    """Each target that goes on its own, with the relatives that go with it (platforms, referrers)."""
    by_digest = {t.digest: t for t in ts if not t.is_tag}

    def root(t: Target) -> Target:
        seen = set()
        while t.parents and t.digest not in seen:
            seen.add(t.digest)
            parent = next((by_digest[p] for p in t.parents if p in by_digest), None)
            if parent is None:
                break
            t = parent
        return t

    families: dict[str, tuple[Target, list[Target]]] = {}
    for t in ts:
        r = root(t)
        fam = families.setdefault(r.ref, (r, []))
        if r is not t:
            fam[1].append(t)
    return list(families.values())


def _with(relatives: list[Target]) -> str:
    """`(with 2 platform manifests, 1 referrers index)`, or nothing."""
    kinds = Counter(t.kind for t in relatives)
    parts = [f"{n} {_RELATIVE.get(k, (k, k))[n > 1]}" for k, n in sorted(kinds.items())]
    return f" (with {', '.join(parts)})" if parts else ""


def render(intent: Intent, *, plan_link: str | None = None, deletions_link: str | None = None,
           per_repository: int = 25, now: datetime | None = None) -> str:
    """Markdown for the approval form; the links are the UI pages of the plan's artifacts
    (its summary, and its largest deletions with digests and reasons)."""
    now = now or utcnow()
    manifests = [t for t in intent.targets if not t.is_tag]
    lone = len(intent.targets) - len(manifests)
    repos = sorted({t.repository for t in intent.targets})
    lines = [f"## Approve deleting {len(intent.targets)} items from {intent.registry}?", "",
             f"**{len(manifests)} manifests ({_freed(intent.bytes_reclaimable)})"
             + (f" and {lone} lone tags" if lone else "") + "** in "
             + (f"{len(repos)} repositories." if len(repos) > 1 else "one repository."), "",
             *_bytes_lines(intent),
             f"- plan `{intent.plan_id}`, made {_age(intent.plan_created, now)}",
             f"- from snapshot `{intent.snapshot_id}`, taken {_age(intent.snapshot_created, now)}"]
    links = [f"[{what}]({url})" for what, url in (("the plan's summary", plan_link),
                                                   ("its largest deletions with digests", deletions_link)) if url]
    if links:
        lines.append("- in the UI: " + " and ".join(links) + "; `regsweep explain` answers for any tag")
    if intent.capabilities is not None:
        lines.append(f"- registry capabilities (probed {intent.capabilities.probed_at}): {intent.capabilities.summary()}")
    if intent.done_before:
        lines.append(f"- {len(intent.done_before)} deleted by an earlier run of this plan")
    if intent.skipped:
        lines.append(f"- {len(intent.skipped)} planned deletions kept by the sweep's own checks (listed below)")
    lines += ["", "Approving re-checks every tag just before its DELETE" +
              (f", and {intent.cluster_recheck}" if intent.cluster_recheck else "") +
              "; anything found in use or moved is kept. Rejecting deletes nothing.", "",
              f"Undo: {window(intent.plan_id)}.", ""]
    common = _common_reasons(intent) if len(repos) > 1 else []
    if common:
        lines += ["Every item: " + "; ".join(common) + ".", ""]
    for repo in repos:
        lines += _repository(intent, repo, common, per_repository, now)
    if intent.skipped:
        lines += ["### Kept although the plan deletes them", ""]
        lines += [f"- {o.repository} `{o.digest[:19]}…`: {o.detail}" for o in intent.skipped[:50]]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _freed(n: int | None) -> str:
    return f"{human_bytes(n)} freed by garbage collection" if n is not None else "bytes freed unknown"


def _bytes_lines(intent: Intent) -> list[str]:
    """The two byte figures of the targets, each saying what it counts (docs/store-format.md)."""
    freed = intent.bytes_reclaimable
    return [f"- freed by garbage collection: **{'unknown' if freed is None else human_bytes(freed)}**, "
            + ("the blobs no kept image uses, each once" if freed is not None
               else "the snapshot recorded no blobs (taken before regsweep did)"),
            f"- image sizes added up: {human_bytes(intent.bytes)}, a layer shared by several images "
            "counted in each"]


def _common_reasons(intent: Intent) -> list[str]:
    """Reasons every target shares (stated once, not per repository)."""
    sets = [set(intent.reasons.get((t.repository, t.digest), ())) for t in intent.targets]
    if not sets:
        return []
    shared = set.intersection(*sets)
    first = intent.reasons.get((intent.targets[0].repository, intent.targets[0].digest), [])
    return [r for r in first if r in shared]


def _repository(intent: Intent, repo: str, common: list[str], limit: int, now: datetime) -> list[str]:
    ts = [t for t in intent.targets if t.repository == repo]
    ms = [t for t in ts if not t.is_tag]
    tags = sum(len(t.tags) for t in ts)
    size = sum(t.size for t in ms)
    freed = "" if intent.reclaim is None else f", {human_bytes(intent.reclaim.by_repository.get(repo, 0))} freed by GC"
    lines = [f"### {repo}", "", f"{len(ms)} manifests, {tags} tags, {human_bytes(size)} of image sizes{freed}", ""]
    classes = Counter(reason_class(r) for t in ts for r in dict.fromkeys(intent.reasons.get((repo, t.digest), ()))
                      if r not in common)
    if classes:
        lines += ["Why they go:", ""]
        lines += [f"- **{n}** × {why}" for why, n in sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))]
        lines.append("")
    families = _families(ts)
    built = {t.ref: intent.built.get((repo, t.digest)) for t, _ in families}
    sized = [t for t, _ in families if t.size]
    if sized:
        big = max(sized, key=lambda t: (t.size, t.ref))
        lines.append(f"- largest: {_name(big)}, {human_bytes(big.size)}")
    dated = [t for t, _ in families if built[t.ref] is not None]
    if dated:
        first = min(dated, key=lambda t: (built[t.ref], t.ref))
        lines.append(f"- oldest: {_name(first)}, built {_age(built[first.ref], now)}")
    lines += ["", "Each deletion, oldest first:", ""]
    families.sort(key=lambda f: (built[f[0].ref] or now, f[0].ref))
    for t, relatives in families[:limit]:
        size_part = f", {human_bytes(t.size)}" if t.size else ""
        digest = f", `{_short(t.digest)}`" if t.tags or t.is_tag else ""   # untagged ones are named by it already
        lines.append(f"- {_name(t)}: {t.kind}{size_part}, built {_age(built[t.ref], now)}{digest}{_with(relatives)}")
    if len(families) > limit:
        lines.append(f"- … and {len(families) - limit} more (`regsweep explain`, or the plan's Parquet table)")
    lines.append("")
    return lines
