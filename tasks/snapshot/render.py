"""The snapshot's Prefect artifact, rendered from what the flow already has (no I/O)."""

from __future__ import annotations

from typing import Any

from tasks.registry.capabilities import markdown_lines


def summary_markdown(snapshot_id: str, meta: dict[str, Any], counts: dict[str, Any]) -> str:
    """The snapshot's Prefect artifact: repositories, tags, bytes (`counts`, from
    tasks.snapshot.summary.cache_history_inputs), per-source status."""
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
    return "\n".join(lines)
