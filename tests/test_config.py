"""Configuration errors name the key at fault; the CLI turns them into exit code 2."""

from __future__ import annotations

import textwrap

import pytest

from tasks.config.models import load_config, parse_config
from tasks.common.errors import ConfigError

BASE = {"registry": {"url": "http://127.0.0.1:5000"}}


def with_(**extra):
    return {**BASE, **extra}


@pytest.mark.unit
@pytest.mark.parametrize("data, key, words", [
    ({}, "registry", "required"),
    (with_(bogus=1), "bogus", "unknown key"),
    ({"registry": {"url": "http://x", "concurency": 3}}, "registry.concurency", "unknown key"),
    ({"registry": {"url": "ftp:/nope"}}, "registry.url", "not a registry URL"),
    (with_(link={"tagPatterns": ["^sha-([0-9a-f]+$"]}), "link.tagPatterns", "bad regular expression"),
    (with_(link={"tagPatterns": ["^sha-[0-9a-f]+$"]}), "link.tagPatterns", "(?P<commit>"),
    (with_(cleanup={"keepPolicies": [{"references": {"branch": "/(/"}}]}),
     "cleanup.keepPolicies[0].references.branch", "bad regular expression"),
    (with_(cleanup={"keepPolicies": [{"references": {"branch": "main", "limit": {"in": "12 hours"}}}]}),
     "cleanup.keepPolicies[0].references.limit.in", "not a duration"),
    (with_(cleanup={"keepPolicies": [{"references": {"tag": "/v.*/"}, "imagesPerReference": {"operator": "Xor"}}]}),
     "cleanup.keepPolicies[0].imagesPerReference.operator", "'And' or 'Or'"),
    (with_(cleanup={"keepPolicies": [{"references": {"tag": "/v.*/", "limit": {"last": -2}}}]}),
     "cleanup.keepPolicies[0].references.limit.last", "-1 for all"),
    (with_(cleanup={"keepPolicies": [{"references": {"tag": "a", "branch": "b"}}]}),
     "cleanup.keepPolicies[0].references", "exactly one of"),
    (with_(cleanup={"unlinkedImages": "maybe"}), "cleanup.unlinkedImages", "'keep' or 'delete'"),
    (with_(cleanup={"keepImagesBuiltWithinLastNHours": -1}), "cleanup.keepImagesBuiltWithinLastNHours", "greater than"),
    (with_(sweep={"maxPlanAge": "a day"}), "sweep.maxPlanAge", "not a duration"),
])
def test_bad_configuration_names_the_key(data, key, words):
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert e.value.key == key
    assert words in str(e.value)
    assert e.value.exit_code == 2


@pytest.mark.unit
def test_werf_cleanup_section_is_accepted_verbatim(tmp_path):
    cfg_file = tmp_path / "regsweep.yaml"
    cfg_file.write_text(textwrap.dedent("""
        store: ./var/regsweep
        registry: {url: https://registry.example.com, aliases: ["registry.example.com:443"]}
        git: {path: /srv/checkout}
        cleanup:
          keepPolicies:
          - references:
              tag: /.*/
              limit:
                last: 10
          - references:
              branch: /.*/
              limit:
                last: 10
                in: 168h
                operator: And
            imagesPerReference:
              last: 2
              in: 168h
              operator: And
          keepImagesBuiltWithinLastNHours: 2
          disableKubernetesBasedPolicy: true
    """))
    cfg = load_config(cfg_file)
    assert len(cfg.cleanup.effective_keep_policies) == 2
    assert cfg.cleanup.keepPolicies[1].imagesPerReference.in_.total_seconds() == 168 * 3600
    # A relative store is anchored at the config file, so scheduled runs find the same store.
    assert cfg.store == str((tmp_path / "var" / "regsweep").resolve())
    assert cfg.enabled_sources() == ["registry", "helm", "git"]


@pytest.mark.unit
def test_default_keep_policies_are_werfs():
    cfg = parse_config(BASE)
    pols = cfg.cleanup.effective_keep_policies
    assert [p.references.kind for p in pols] == ["tag", "branch", "branch"]
    assert pols[0].references.limit.last == 10
    assert pols[1].imagesPerReference.last == 2 and pols[1].references.limit.operator == "And"
    assert pols[2].references.pattern.match("master") and not pols[2].references.pattern.match("mastery")


@pytest.mark.unit
def test_policy_hash_ignores_nothing_that_matters():
    a = parse_config(with_(cleanup={"keepImagesBuiltWithinLastNHours": 2}))
    b = parse_config(with_(cleanup={"keepImagesBuiltWithinLastNHours": 3}))
    assert a.cleanup.digest() != b.cleanup.digest()
    assert a.cleanup.digest() == parse_config(BASE).cleanup.digest()


@pytest.mark.unit
def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("registry: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    two = tmp_path / "two.yaml"
    two.write_text("registry: {url: http://127.0.0.1:1}\n---\nregistry: {url: http://127.0.0.1:2}\n")
    with pytest.raises(ConfigError, match="holds 2 YAML documents; a configuration is one"):
        load_config(two)


def test_cli_reports_config_errors_in_one_line_with_exit_2(tmp_path, run_cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("registry: {url: http://127.0.0.1:1}\ncleanup: {keepPolicies: [{references: {branch: main, limit: {operator: Xor}}}]}\n")
    for cmd in (["snapshot"], ["history"]):
        r = run_cli(*cmd, "--config", cfg)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [
            "regsweep: error: cleanup.keepPolicies[0].references.limit.operator: Input should be 'And' or 'Or'"]
        assert "Traceback" not in r.stderr and r.stdout == ""
    r = run_cli("snapshot", "--config", cfg.with_name("nope.yaml"))
    assert r.returncode == 2 and "--config: cannot read" in r.stderr


def test_git_policies_without_a_git_source_are_refused_before_any_work(tmp_path, run_cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("registry: {url: http://127.0.0.1:1}\nhelm: {enabled: false}\n"
                   "cleanup: {disableKubernetesBasedPolicy: true}\n")
    r = run_cli("snapshot", "--config", cfg)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("regsweep: error: git: required by the git history policies")
    assert not (tmp_path / "var").exists()  # nothing was started, nothing written


@pytest.mark.unit
def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "conf").mkdir()
    cfg_file = tmp_path / "conf" / "regsweep.yaml"
    cfg_file.write_text("store: store\nregistry: {url: https://x, caFile: ca.pem, auth: {username: u, password_file: pw}}\n"
                        "git: {path: ../checkout}\nkubernetes: {kubeconfig: kube/config}\n")
    cfg = load_config(cfg_file)
    base = (tmp_path / "conf").resolve()
    assert cfg.store == str(base / "store")
    assert cfg.registry.caFile == str(base / "ca.pem")
    assert cfg.registry.auth.password_file == str(base / "pw")
    assert cfg.git.path == str(tmp_path.resolve() / "checkout")
    assert cfg.kubernetes.kubeconfig == str(base / "kube" / "config")


@pytest.mark.unit
def test_an_infinite_fresh_window_is_a_configuration_error():
    with pytest.raises(ConfigError) as e:
        parse_config(with_(cleanup={"keepImagesBuiltWithinLastNHours": float("inf")}))
    assert e.value.key == "cleanup.keepImagesBuiltWithinLastNHours"


@pytest.mark.unit
def test_runner_is_single_process_unless_dask_is_chosen():
    assert parse_config(BASE).runner.kind == "single"
    dask = parse_config(with_(runner={"kind": "dask", "dask": {"workers": 3, "batchRepositories": 10}})).runner
    assert (dask.kind, dask.dask.workers, dask.dask.batchRepositories, dask.dask.address) == ("dask", 3, 10, None)
    for bad, key in (({"kind": "spark"}, "runner.kind"), ({"dask": {"batchRepositories": 0}}, "runner.dask.batchRepositories"),
                     ({"dask": {"workers": 2, "threads": 4}}, "runner.dask.threads")):
        with pytest.raises(ConfigError) as e:
            parse_config(with_(runner=bad))
        assert e.value.key == key


@pytest.mark.unit
def test_a_configuration_survives_prefects_stored_parameters():
    """Deployment runs and the UI form hand the flow its config as JSON, where pydantic writes
    durations in ISO 8601 (`P7D`): every duration key must read back to the same policy."""
    from tasks.config.models import RegsweepConfig

    cfg = parse_config(with_(cleanup={
        "keepPolicies": [{"references": {"branch": "/.*/", "limit": {"in": "168h", "last": 5}},
                          "imagesPerReference": {"last": 2, "in": "36h30m"}}],
        "keepImagesSeenInUseWithin": "72h"}, sweep={"maxPlanAge": "12h"}))
    again = RegsweepConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg
    assert again.cleanup.digest() == cfg.cleanup.digest()
    with pytest.raises(ConfigError) as e:
        parse_config(with_(cleanup={"keepImagesSeenInUseWithin": "P7X"}))
    assert e.value.key == "cleanup.keepImagesSeenInUseWithin"
