"""The werf `cleanup:` section: what it accepts, and configuration errors that name their key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.config.models import parse_config
from tasks.common.errors import ConfigError

BASE = {"registry": {"url": "http://127.0.0.1:5000"}}
P = "cleanup.keepPolicies[0]"


@pytest.mark.unit
@pytest.mark.parametrize("cleanup, key, words", [
    ({"keepPolicies": [{"references": {"branch": "main"}, "imagesPerReference": {"inn": "12h"}}]},
     f"{P}.imagesPerReference.inn", "unknown key"),
    ({"keepPolicies": [{"references": {"branch": "main"}, "keep": 3}]}, f"{P}.keep", "unknown key"),
    ({"keepPolicies": [{"references": {"tag": "/v[/"}}]}, f"{P}.references.tag", "bad regular expression"),
    ({"keepPolicies": [{"references": {"branch": "main"}, "imagesPerReference": {"in": 12}}]},
     f"{P}.imagesPerReference.in", "needs a unit"),
    ({"keepPolicies": [{"references": {"branch": "main", "limit": {"in": "-3h"}}}]},
     f"{P}.references.limit.in", "negative"),
    ({"keepPolicies": [{"references": {"branch": "main"}, "imagesPerReference": {"operator": "and"}}]},
     f"{P}.imagesPerReference.operator", "'And' or 'Or'"),
    ({"keepPolicies": [{"references": {"branch": "main"}, "imagesPerReference": {"last": -5}}]},
     f"{P}.imagesPerReference.last", "-1 for all"),
    ({"keepPolicies": [{"references": {"branch": "main", "limit": {"last": -2}}}]},
     f"{P}.references.limit.last", "-1 for all"),
    ({"keepPolicies": [{"imagesPerReference": {"last": 1}}]}, f"{P}.references", "required key is missing"),
    ({"keepImagesBuiltWithinLastNHours": -2}, "cleanup.keepImagesBuiltWithinLastNHours", "greater than or equal to 0"),
])
def test_bad_cleanup_section_names_the_key(cleanup, key, words):
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "cleanup": cleanup})
    assert e.value.key == key and words in e.value.problem
    assert e.value.exit_code == 2


@pytest.mark.unit
def test_minus_one_and_zero_are_counts():
    cfg = parse_config({**BASE, "cleanup": {"keepPolicies": [
        {"references": {"branch": "/.*/", "limit": {"last": -1}}, "imagesPerReference": {"last": 0}}]}})
    p = cfg.cleanup.keepPolicies[0]
    assert p.references.limit.last == -1 and p.imagesPerReference.last == 0


@pytest.mark.unit
def test_empty_keep_policies_mean_werfs_defaults():
    cfg = parse_config({**BASE, "cleanup": {"keepPolicies": []}})
    assert len(cfg.cleanup.effective_keep_policies) == 3


def regsweep(*args) -> subprocess.CompletedProcess:
    """The installed command; configuration errors stop it before any Prefect server is needed."""
    exe = Path(sys.executable).parent / "regsweep"
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # never reached
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)


def test_plan_command_reports_a_bad_policy_in_one_line_with_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("registry: {url: http://127.0.0.1:1}\n"
                   "cleanup: {keepPolicies: [{references: {branch: main}, imagesPerReference: {last: -3}}]}\n")
    for cmd in (["plan"], ["explain", "team/api:v1"]):
        r = regsweep(*cmd, "--config", cfg)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [
            "regsweep: error: cleanup.keepPolicies[0].imagesPerReference.last: -3 is not a count (use -1 for all)"]
        assert r.stdout == ""
