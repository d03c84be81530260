"""The snapshot's Prefect artifact, rendered from what the flow already has (no I/O)."""

from __future__ import annotations

from typing import Any

from tasks.registry.capabilities import markdown_lines
from tasks.snapshot.missing import summary_line


def summary_markdown(snapshot_id: str, meta: dict[str, Any], counts: dict[str, Any],
                     missing: list[dict[str, Any]] | None = None) -> str:
    """The snapshot's Prefect artifact: repositories, tags, bytes (`counts`, from
    tasks.snapshot.summary.cache_history_inputs), per-source status, and the images in use the
    registry does not have (meta `missing`; `missing` its first MISSING rows)."""
    lines = [f"# Snapshot `{snapshot_id}`", "",
             f"Registry {meta['registry']}, taken {meta['created_at']}, "
             f"**{'complete' if meta['complete'] else 'INCOMPLETE: no plan from it will delete anything'}**.", ""]
    if counts["tags"] is not None:
        lines += [f"- repositories: {counts['repositories']}", f"- tags: {counts['tags']}",
                  f"- manifests: {counts['manifests']}", f"- bytes referenced: {counts['bytes']:,}", ""]
    lines += markdown_lines(meta.get("registry_capabilities"))
    lines += ["| source | status | rows | seconds | retries | warnings | error |", "|---|---|---|---|---|---|---|"]
    for name, s in meta["sources"].items():
        lines.append(f"| {name} | {s['status']} | {s['rows']} | {s['seconds']} | {s.get('retries', {}).get('count', 0)} "
                     f"| {s.get('warnings', {}).get('count', 0)} | {s.get('error', '')} |")
    warned = [(name, m) for name, s in meta["sources"].items() for m in s.get("warnings", {}).get("messages", [])]
    if warned:
        lines += ["", "Warnings (first few per source):", ""] + [f"- {name}: {m}" for name, m in warned]
    return "\n".join(lines + [""] + missing_lines(meta, missing))


def missing_lines(meta: dict[str, Any], rows: list[dict[str, Any]] | None) -> list[str]:
    """The artifact's section on images in use that the registry does not have."""

    found = meta.get("missing")
    if found is None:
        return ["Images in use missing from the registry: unknown (the registry source did not complete)."]
    line = summary_line(found)
    if line is None:
        return ["No image in use is missing from the registry."]
    out = [f"**{line}.** Informational: no keep or delete decision depends on it.", "",
           "| source | where | image | why |", "|---|---|---|---|"]
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    out += [f"| {cell(r['source'])} | {cell(r['where'])} | `{cell(r['image'])}` | {cell(r['why'])} |" for r in rows or ()]
    if found.get("rows", 0) > len(rows or ()):
        out += ["", f"First {len(rows or ())} of {found['rows']} rows; every one is in the snapshot's `missing.parquet`."]
    return out
