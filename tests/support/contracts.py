"""The vendors' own API descriptions (tests/contracts/*.yaml) as a check on the fakes and the backends.

Every loopback fake (tests/support/fakeapi.py) hands each request it receives and each answer it
is about to send to its API's `Contract`, which records what disagrees with the vendor's
description: a request to an operation the description does not have, a path, query or body
parameter of the wrong type, out of range or undocumented, a missing required one; a success status
the operation does not document; a body that does not validate against the documented schema; a
documented response header of the wrong type. The fixture that starts a fake fails the test at
teardown when anything was recorded (tests/support/fakeapi.py `api_fixture`), so every backend test
checks the contract too.

Schemas are checked with jsonschema (Draft 4, which Swagger 2.0 and OpenAPI 3.0 schemas are written
against), after turning `nullable: true` (OpenAPI 3.0) and `x-nullable: true` (Swagger 2.0) into a
`null` type, with date-time formats checked. An error status the operation does not list (401, 429,
5xx: descriptions rarely list them all) is allowed; its body is checked where the status is documented.

`ERRATA` replaces the few schemas where a vendor's description contradicts what its API serves, each
with the reason; `NOT_DESCRIBED` lists the operations regsweep calls that a vendored file does not
describe. Both are asserted in tests/test_contracts.py to be still needed and exhaustive.

    contract("harbor")                         the Contract of one API (cached)
    Contract.check_request(...) / check_response(...)  -> list of violations (strings)
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml
from jsonschema import Draft4Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

HERE = Path(__file__).resolve().parents[1] / "contracts"
DOC = "urn:regsweep:contract"
FORMATS = FormatChecker(["date-time"])

#: Where a vendor's description contradicts what its API serves: (JSON pointer in the description, the
#: schema regsweep's fakes follow instead, why). tests/test_contracts.py shows each is still needed.
ERRATA: dict[str, list[tuple[str, Any, str]]] = {
    "gitlab": [
        ("/paths/~1api~1v4~1projects~1{id}~1registry~1repositories~1{repository_id}~1tags~1{tag_name}/delete/responses/200",
         {"description": "Success"},
         "GitLab's generated description gives `204` for deleting a tag, but the endpoint "
         "(lib/api/project_container_repositories.rb) answers `status :ok`, 200; regsweep takes either"),
    ],
    "dockerhub": [
        ("/components/schemas/tag/properties/images",
         {"type": "array", "items": {"$ref": "#/components/schemas/image"}},
         "Docker's description writes a tag's `images` as `type: object` beside a `$ref` to `image` (OpenAPI 3.0 "
         "ignores the siblings of a `$ref`, so one image object), yet Hub lists one image per platform, an array; "
         "regsweep's backend reads it as an array"),
    ],
}

#: Operations regsweep sends that a vendored file does not describe, with the reason. A request to one is
#: recorded as uncovered (`Contract.uncovered`), not as a violation; any other undescribed request is one.
NOT_DESCRIBED: dict[str, dict[tuple[str, str], str]] = {
    "gitlab": {
        ("GET", "/api/v4/projects/{id}"): "left out of the excerpt: a reachability check whose answer regsweep does not read",
        ("GET", "/api/v4/groups/{id}"): "left out of the excerpt: a reachability check whose answer regsweep does not read",
    },
    "dockerhub": {
        ("DELETE", "/v2/repositories/{namespace}/{repository}/tags/{tag}/"):
            "Docker's description has no operation that deletes a tag; Hub's web UI and hub-tool use this one",
    },
}


def load_description(api: str) -> dict:
    with open(HERE / f"{api}.yaml") as f:
        return yaml.safe_load(f)


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0 `nullable` / Swagger `x-nullable` as JSON Schema, everywhere in a description."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items()}
    if out.get("nullable") is True or out.get("x-nullable") is True:
        if isinstance(out.get("type"), str) and "$ref" not in out:
            out["type"] = [out["type"], "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        else:
            rest = {k: v for k, v in out.items() if k not in ("nullable", "x-nullable")}
            out = {"anyOf": [rest, {"type": "null"}]}
    if out.get("type") == "file":       # Swagger 2.0 form uploads: nothing to check in JSON
        del out["type"]
    return out


def _pointer(doc: dict, pointer: str) -> tuple[dict, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.strip("/").split("/")]
    node = doc
    for p in parts[:-1]:
        node = node[p]
    return node, parts[-1]


@dataclass
class Operation:
    method: str
    template: str
    regex: re.Pattern = field(repr=False)
    spec: dict = field(repr=False)
    parameters: list[dict] = field(repr=False)

    @property
    def id(self) -> str:
        return self.spec.get("operationId") or f"{self.method} {self.template}"


@dataclass
class Contract:
    api: str
    doc: dict
    base: str                                       # path prefix the description's paths sit under
    operations: list[Operation] = field(default_factory=list)
    not_described: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def from_description(cls, api: str, doc: dict, errata: list[tuple[str, Any, str]] = (),
                         not_described: dict[tuple[str, str], str] | None = None) -> "Contract":
        doc = copy.deepcopy(doc)
        for pointer, schema, _why in errata:
            parent, key = _pointer(doc, pointer)
            parent[key] = schema
        doc = _nullable(doc)
        base = doc.get("basePath", "") if "swagger" in doc else ""
        self = cls(api, doc, base.rstrip("/"), not_described=dict(not_described or {}))
        self._registry = Registry().with_resource(DOC, Resource(contents=doc, specification=DRAFT4))
        for template, item in doc["paths"].items():
            shared = [self.deref(p) for p in item.get("parameters", [])]
            for method, spec in item.items():
                if method == "parameters" or method.startswith("x-"):
                    continue
                own = [self.deref(p) for p in spec.get("parameters", [])]
                names = {(p["name"], p["in"]) for p in own}
                params = own + [p for p in shared if (p["name"], p["in"]) not in names]
                self.operations.append(Operation(method.upper(), template, _template_regex(template), spec, params))
        return self

    # -- schema helpers ---------------------------------------------------------------------------------
    def deref(self, node: dict) -> dict:
        while isinstance(node, dict) and "$ref" in node and node["$ref"].startswith("#/"):
            parent, key = _pointer(self.doc, node["$ref"][1:])
            node = parent[key]
        return node

    def errors(self, schema: dict, value: Any, where: str) -> list[str]:
        validator = Draft4Validator(_rebase(schema), registry=self._registry, format_checker=FORMATS)
        out = []
        for e in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
            at = "".join(f"[{p!r}]" for p in e.absolute_path)
            out.append(f"{where}{at}: {e.message}")
        return out

    # -- matching -----------------------------------------------------------------------------------------
    def match(self, method: str, path: str) -> tuple[Operation | None, dict[str, str]]:
        """The operation `method path` (raw, percent-encoded path) is, and its path parameters (decoded once)."""
        if self.base and path.startswith(self.base + "/"):
            path = path[len(self.base):]
        best = None
        for op in self.operations:
            m = op.regex.fullmatch(path)
            if m and op.method == method:
                literal = len(re.sub(r"\{[^}]+\}", "", op.template))    # the most specific template wins
                if best is None or literal > best[0]:
                    best = (literal, op, {k: unquote(v) for k, v in m.groupdict().items()})
        return (best[1], best[2]) if best else (None, {})

    def described(self, method: str, path: str) -> tuple[str, str] | None:
        """The NOT_DESCRIBED entry `method path` is, if any."""
        for (m, template), _why in self.not_described.items():
            if m == method and _template_regex(template).fullmatch(path):
                return m, template
        return None

    # -- checks -------------------------------------------------------------------------------------------
    def check_request(self, method: str, path: str, query: dict[str, list[str]], headers: Any,
                      body: Any) -> tuple[Operation | None, list[str]]:
        op, path_params = self.match(method, path)
        where = f"{self.api}: request {method} {path}"
        if op is None:
            if self.described(method, path):
                return None, []
            return None, [f"{where}: no such operation in the vendor's description"]
        problems: list[str] = []
        by_place: dict[str, dict[str, dict]] = {}
        for p in op.parameters:
            by_place.setdefault(p["in"], {})[p["name"]] = p
        for name, value in path_params.items():
            p = by_place.get("path", {}).get(name)
            if p is not None:
                problems += self._param(p, value, f"{where}: path parameter {name}")
        for name, values in query.items():
            p = by_place.get("query", {}).get(name)
            if p is None:
                problems.append(f"{where}: query parameter {name!r} is not in the vendor's description")
                continue
            for value in values:
                problems += self._param(p, value, f"{where}: query parameter {name}")
        for name, p in by_place.get("query", {}).items():
            if p.get("required") and name not in query:
                problems.append(f"{where}: required query parameter {name!r} missing")
        schema, required = self._request_body(op, by_place)
        if schema is not None and body is not None:
            problems += self.errors(schema, body, f"{where}: body")
        elif required and body is None:
            problems.append(f"{where}: required body missing")
        return op, problems

    def check_response(self, op: Operation, status: int, headers: dict[str, str], body: Any) -> list[str]:
        where = f"{self.api}: {op.id} answered {status}"
        responses = op.spec.get("responses", {})
        spec = responses.get(str(status)) or responses.get(status) or responses.get("default")
        if spec is None:
            return [f"{where}: a success status the operation does not document "
                    f"(documented: {', '.join(map(str, responses))})"] if 200 <= status < 300 else []
        spec = self.deref(spec)
        problems: list[str] = []
        schema = self._response_schema(spec)
        if schema is not None:
            if body is None:
                problems.append(f"{where}: no body, the description gives one")
            else:
                problems += self.errors(schema, body, f"{where}: body")
        lowered = {k.lower(): v for k, v in headers.items()}
        for name, h in (spec.get("headers") or {}).items():
            h = self.deref(h)
            value = lowered.get(name.lower())
            if value is not None:
                problems += self._param(h if "schema" in h else {"schema": h, **h}, value, f"{where}: header {name}")
        return problems

    # -- details ------------------------------------------------------------------------------------------
    def _param(self, p: dict, raw: str, where: str) -> list[str]:
        schema = p.get("schema") or {k: v for k, v in p.items()
                                     if k in ("type", "format", "enum", "minimum", "maximum", "items", "pattern")}
        schema = self.deref(schema)
        value: Any = raw
        kind = schema.get("type")
        kinds = kind if isinstance(kind, list) else [kind]
        if "integer" in kinds or "number" in kinds:
            try:
                value = int(raw) if "integer" in kinds else float(raw)
            except ValueError:
                return [f"{where}: {raw!r} is not {kind}"]
        elif "boolean" in kinds:
            if raw not in ("true", "false"):
                return [f"{where}: {raw!r} is not a boolean"]
            value = raw == "true"
        elif "oneOf" in schema or "anyOf" in schema:      # "integer or string" ids: try the integer reading
            value = int(raw) if raw.isdigit() else raw
        return self.errors(schema, value, where)

    def _request_body(self, op: Operation, by_place: dict) -> tuple[dict | None, bool]:
        for p in by_place.get("body", {}).values():                   # Swagger 2.0
            return p.get("schema"), bool(p.get("required"))
        rb = op.spec.get("requestBody")                                # OpenAPI 3.0
        if rb is None:
            return None, False
        rb = self.deref(rb)
        media = (rb.get("content") or {}).get("application/json") or {}
        return media.get("schema"), bool(rb.get("required"))

    def _response_schema(self, spec: dict) -> dict | None:
        if "schema" in spec:                                           # Swagger 2.0
            return spec["schema"]
        media = (spec.get("content") or {}).get("application/json")   # OpenAPI 3.0
        return None if media is None else media.get("schema")


def _rebase(schema: Any) -> Any:
    """Point a schema's local `$ref`s at the description they came from."""
    if isinstance(schema, list):
        return [_rebase(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: (f"{DOC}{v}" if k == "$ref" and isinstance(v, str) and v.startswith("#/") else _rebase(v))
            for k, v in schema.items()}


def _template_regex(template: str) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{([^}]+)\}", template):
        out += re.escape(template[pos:m.start()]) + "(?P<" + m.group(1) + ">[^/]+)"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]))


@functools.cache
def contract(api: str) -> Contract:
    return Contract.from_description(api, load_description(api), ERRATA.get(api, ()), NOT_DESCRIBED.get(api))


@dataclass
class Recorder:
    """What one fake's traffic did against its contract: checked operations, uncovered ones, violations."""

    contract: Contract
    checked: dict[str, int] = field(default_factory=dict)            # operation id -> requests checked
    uncovered: dict[tuple[str, str], int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def request(self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: Any) -> Operation | None:
        op, problems = self.contract.check_request(method, path, query, headers, body)
        self.violations += problems
        if op is not None:
            self.checked[op.id] = self.checked.get(op.id, 0) + 1
        else:
            hit = self.contract.described(method, path)
            if hit:
                self.uncovered[hit] = self.uncovered.get(hit, 0) + 1
        return op

    def response(self, op: Operation | None, status: int, headers: dict[str, str], body: Any) -> None:
        if op is not None:
            self.violations += self.contract.check_response(op, status, headers, body)
