"""Fuzzed configuration: random and mutated YAML, wrong types, huge numbers, bad regexes, bad
durations, unknown keys. Through the file loader, the flow parameters and the CLI: either a valid
configuration, or one ConfigError (exit 2) whose one-line message names a key of the input —
never another exception, a traceback, or a run.

Hypothesis runs derandomized with moderate example counts, so CI is reproducible and quick.
"""

from __future__ import annotations

import copy
import math
from datetime import timedelta
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.config.models import RegsweepConfig, config_error_from, load_config, parse_config
from tasks.common.errors import ConfigError
from tasks.common.units import parse_duration

FUZZ = settings(derandomize=True, max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

BASE: dict[str, Any] = {
    "store": "./var/regsweep",
    "registry": {"url": "https://registry.example.com", "repositories": ["team/*"], "aliases": ["r.example:443"],
                 "auth": {"username": "ci", "password_env": "REGISTRY_PASSWORD"}, "insecure": False,
                 "concurrency": 16, "timeout": 30},
    "link": {"tagPatterns": ["^sha-(?P<commit>[0-9a-f]{7,40})$"]},
    "git": {"path": "/srv/checkout", "remote": "origin"},
    "kubernetes": {"kubeconfig": "~/.kube/config", "contexts": ["prod"], "namespaces": [], "timeout": 30,
                   "pageSize": 500},
    "helm": {"enabled": True, "keepRevisions": 0},
    "cleanup": {"keepPolicies": [{"references": {"branch": "/.*/", "limit": {"last": 10, "in": "168h",
                                                                               "operator": "And"}},
                                  "imagesPerReference": {"last": 2, "in": "72h", "operator": "Or"}},
                                 {"references": {"tag": "/^v/"}, "imagesPerReference": {"last": -1}}],
                "keepImagesBuiltWithinLastNHours": 2, "disableKubernetesBasedPolicy": False,
                "disableGitHistoryBasedPolicy": False, "disableBuiltWithinLastNHoursPolicy": False,
                "unlinkedImages": "keep"},
    "sweep": {"maxPlanAge": "24h", "maxDeletions": 100, "recheckCluster": True, "approvalTimeout": "1h",
              "concurrency": 8},
}

BAD_VALUES = st.one_of(
    st.none(), st.booleans(), st.text(max_size=12), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from([10**30, -10**30, -1, 0, 2**63, 1e308, -1e308, math.inf, -math.inf, math.nan, 1e-300,
                     "(", "[a-", "(?P<commit", "(?P<c>x)", "*", "5 days", "h", "-1h", "99999999999999999999h",
                     "1e400h", "9999999999h", "0s", "24", "∞", "NaN", "True", "", " ", "https://", "ftp://x", "/"]),
)
KEY = st.sampled_from(["typo", "Store", "registry2", "keep_policies", "in_", "x.y", "", "123"])


def key_paths(data: Any, prefix: str = "") -> set[str]:
    """Every key path of a document as config errors spell them: a.b[0].c."""
    out = {prefix} if prefix else set()
    if isinstance(data, dict):
        for k, v in data.items():
            out |= key_paths(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out |= key_paths(v, f"{prefix}[{i}]")
    return out


def check(data: Any) -> RegsweepConfig | ConfigError:
    """parse_config's answer: a config, or a ConfigError that names a key of `data` on one line."""
    try:
        cfg = parse_config(data)
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message and message, message
        paths = key_paths(data)
        parent = e.key.rsplit(".", 1)[0] if "." in e.key else ""
        # the key itself, or a missing key under a section that is there, or the document as a whole
        assert e.key in paths or parent in paths or e.key in ("config", "registry", "git"), (e.key, data)
        return e
    # What is accepted is usable: finite numbers that fit the int64 clocks and counts downstream.
    for value in _leaves(cfg.model_dump()):
        if isinstance(value, timedelta):
            assert value <= timedelta(days=36_500), value
        elif isinstance(value, float):
            assert math.isfinite(value) and abs(value) < 1e12, value
        elif isinstance(value, int) and not isinstance(value, bool):
            assert abs(value) < 2**62, value
    for duration in (cfg.sweep.maxPlanAge, cfg.sweep.approvalTimeout):
        parse_duration(duration)
    return cfg


def _leaves(data: Any):
    if isinstance(data, dict):
        for v in data.values():
            yield from _leaves(v)
    elif isinstance(data, list):
        for v in data:
            yield from _leaves(v)
    else:
        yield data


@st.composite
def mutated(draw) -> dict:
    """BASE with one to three keys given bad values, removed, or joined by unknown ones."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        paths = sorted(p for p in key_paths(doc) if "[" not in p.rsplit(".", 1)[-1])
        path = draw(st.sampled_from(paths))
        parts = path.replace("]", "").replace("[", ".").split(".")
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        action = draw(st.sampled_from(["bad", "bad", "drop", "unknown"]))
        if isinstance(parent, list):
            parent[int(last)] = draw(BAD_VALUES)
        elif action == "bad":
            parent[last] = draw(BAD_VALUES)
        elif action == "drop":
            parent.pop(last, None)
        elif isinstance(parent.get(last), dict):
            parent[last][draw(KEY)] = draw(BAD_VALUES)
        else:
            parent[draw(KEY)] = draw(BAD_VALUES)
    return doc


@pytest.mark.unit
def test_the_base_document_is_valid():
    assert isinstance(check(copy.deepcopy(BASE)), RegsweepConfig)


@FUZZ
@given(mutated())
def test_mutated_configurations_are_valid_or_one_line_naming_the_key(doc):
    check(doc)


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                       lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                       max_leaves=12)


@FUZZ
@given(st.one_of(JSONISH, st.dictionaries(st.sampled_from(sorted(BASE)), JSONISH, max_size=5)))
def test_random_documents_are_refused_naming_the_key(doc):
    check(doc)


@FUZZ
@given(st.one_of(st.text(max_size=80), st.builds(lambda d: yaml.safe_dump(d)[: len(yaml.safe_dump(d)) // 2],
                                                   mutated())))
def test_random_and_cut_short_yaml_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "regsweep.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as e:
        assert "\n" not in str(e) and e.key, str(e)


@settings(derandomize=True, max_examples=60, deadline=None, database=None)
@given(mutated())
def test_flow_parameters_are_validated_by_the_same_model(doc):
    """What the flows' parameter validation (Prefect, with the same pydantic model) refuses, the
    CLI's loader refuses too, naming the same key."""
    from pydantic import ValidationError

    from flows.snapshot import snapshot_flow

    try:
        snapshot_flow.validate_parameters({"config": doc})
        flow_error = None
    except Exception as e:  # prefect's ParameterTypeError wraps the pydantic ValidationError
        flow_error = e
    try:
        RegsweepConfig.model_validate(doc)
        model_error = None
    except ValidationError as e:
        model_error = config_error_from(e)
    assert (flow_error is None) == (model_error is None), (flow_error, model_error)
    if model_error is not None:
        answer = check(doc)
        assert isinstance(answer, ConfigError) and answer.key == model_error.key


def test_a_flow_run_with_a_bad_parameter_does_nothing(prefect_harness, tmp_path):
    """A real flow run: Prefect refuses the parameters before any of regsweep's code runs."""
    from flows.snapshot import snapshot_flow

    doc = copy.deepcopy(BASE)
    doc["store"] = str(tmp_path / "store")
    doc["registry"]["concurrency"] = 10**30
    with pytest.raises(Exception) as exc:
        snapshot_flow(config=doc)
    assert "registry" in str(exc.value) and "concurrency" in str(exc.value)
    assert not (tmp_path / "store").exists()


CLI_CASES = [
    ("snapshot", ("registry", "concurrency"), 10**30, "registry.concurrency"),
    ("plan", ("link", "tagPatterns"), ["(?P<commit>[0-9a-f"], "link.tagPatterns"),
    ("sweep", ("sweep", "maxPlanAge"), "5 days", "sweep.maxPlanAge"),
    ("explain", ("cleanup", "keepImagesBuiltWithinLastNHours"), 1e308, "cleanup.keepImagesBuiltWithinLastNHours"),
    ("snapshot", ("kubernetes", "pagesize"), 10, "kubernetes.pagesize"),
    ("history", ("registry", "timeout"), ".inf", "registry.timeout"),
]


def _flow_runs() -> int:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.count_flow_runs()


@pytest.mark.parametrize("command,where,value,key", CLI_CASES, ids=[c[3] + "-" + c[0] for c in CLI_CASES])
def test_cli_bad_configuration_exits_2_naming_the_key_and_starts_no_run(run_cli, tmp_path, command, where, value, key):
    doc = copy.deepcopy(BASE)
    doc["store"] = str(tmp_path / "store")
    doc["cleanup"]["disableGitHistoryBasedPolicy"] = True
    doc.pop("git")
    doc[where[0]][where[1]] = value
    text = yaml.safe_dump(doc).replace("'.inf'", ".inf")    # YAML's own infinity, not the string
    path = tmp_path / "regsweep.yaml"
    path.write_text(text)
    args = {"snapshot": [], "plan": [], "history": [], "sweep": ["--plan", "latest", "--yes"],
            "explain": ["team/api:v1"]}[command]
    runs = _flow_runs()

    r = run_cli(command, "--config", path, *args)

    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith(f"regsweep: error: {key}: ")
    assert _flow_runs() == runs and not (tmp_path / "store").exists()
