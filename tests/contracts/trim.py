"""Trim a vendor's OpenAPI / Swagger description to the operations regsweep calls.

    python -m tests.contracts.trim FULL_DESCRIPTION OUT.yaml 'GET /projects' 'DELETE /projects/{p}' ...

Keeps `swagger`/`openapi`, `info`, `basePath`/`servers`, the named operations (with their path-level
parameters) and every definition, component, parameter and response they reach through `$ref`,
each copied unchanged; everything else is dropped. How each file in this folder was made is in
SOURCES.md.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

KEEP = ("swagger", "openapi", "info", "host", "basePath", "schemes", "servers", "consumes", "produces")


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        out = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for v in node.values():
            out |= refs(v)
        return out
    if isinstance(node, list):
        return set().union(*map(refs, node)) if node else set()
    return set()


def resolve(doc: dict, ref: str) -> tuple[list[str], Any]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in ref.lstrip("#/").split("/")]
    node = doc
    for p in parts:
        node = node[p]
    return parts, node


def trim(doc: dict, operations: list[str]) -> dict:
    out: dict = {k: doc[k] for k in KEEP if k in doc}
    out["paths"] = {}
    for op in operations:
        method, path = op.split(" ", 1)
        item = doc["paths"][path]
        kept = out["paths"].setdefault(path, {k: v for k, v in item.items() if k == "parameters"})
        kept[method.lower()] = item[method.lower()]
    todo, seen = refs(out["paths"]), set()
    while todo:
        ref = todo.pop()
        if ref in seen or not ref.startswith("#/"):
            continue
        seen.add(ref)
        parts, node = resolve(doc, ref)
        target = out
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = node
        todo |= refs(node)
    for section in ("definitions", "parameters", "responses"):
        if section in out:
            out[section] = dict(sorted(out[section].items()))
    for section, entries in out.get("components", {}).items():
        out["components"][section] = dict(sorted(entries.items()))
    return out


def main(argv: list[str]) -> None:
    src, dst, *ops = argv
    with open(src) as f:
        doc = json.load(f) if src.endswith(".json") else yaml.safe_load(f)
    with open(dst, "w") as f:
        yaml.safe_dump(trim(doc, ops), f, sort_keys=False, allow_unicode=True, width=120)


if __name__ == "__main__":
    main(sys.argv[1:])
