"""Secret hygiene (security review, findings 3 and 10): secrets are checked as they are read, and
one redaction step stands between every secret read and every message, log line and stored file.

A token with a trailing newline (an env var from a Secret made `--from-file`, a Secret block
saved with one) is refused naming the variable, file or block, never quoting the value; a token
that reaches a message some other way (a registry quoting it back) is masked there.
"""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from tasks.common.errors import ConfigError, RegistryError
from tasks.common.notes import collecting, warn
from tasks.common.redact import MASK, redact, remember
from tasks.config.models import read_secret
from testbed import push_image
from tests.support.faults import FaultProxy
from tests.support.rigs import API_TOKEN, TOKEN_ENV, make_rig
from tests.support.gitlab import gitlab_api  # noqa: F401 (fixtures)

SENTINEL = "glpat-SENTINEL-4f1c9a7e"


# --- reading --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, words", [
    (SENTINEL + "\n", "ends with a control character (a newline)"),
    (SENTINEL + "\r\n", "ends with a control character (a carriage return)"),
    ("glpat-\x07SENTINEL", "contains a control character (U+0007)"),
    ("glpat-SENT\tINEL", "contains a control character (a tab)"),
    ("", "is empty"),
])
def test_an_env_var_with_a_control_character_is_refused_naming_it_not_its_value(monkeypatch, value, words):
    monkeypatch.setenv("GITLAB_TOKEN", value)
    with pytest.raises(ConfigError) as e:
        read_secret("GITLAB_TOKEN", None, "registry.gitlab", ("token_env", "token_file"))
    assert e.value.key == "registry.gitlab.token_env"
    assert str(e.value).startswith(f"registry.gitlab.token_env: environment variable GITLAB_TOKEN {words}")
    assert "SENT" not in str(e.value) and "INEL" not in str(e.value)


@pytest.mark.parametrize("content", [SENTINEL, SENTINEL + "\n", SENTINEL + "\r\n"])
def test_a_file_loses_one_line_ending(tmp_path, content):
    path = tmp_path / "token"
    path.write_bytes(content.encode())
    assert read_secret(None, str(path), "registry.auth", ("password_env", "password_file")) == SENTINEL


@pytest.mark.parametrize("content, words", [
    (SENTINEL + "\n\n", "ends with a control character (a newline)"),
    ("glpat-SENTINEL\nsecond-line\n", "contains a control character (a newline)"),
    ("\n", "is empty"),
])
def test_a_file_with_more_than_one_line_ending_is_refused_naming_the_file(tmp_path, content, words):
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(ConfigError) as e:
        read_secret(None, str(path), "registry.auth", ("password_env", "password_file"))
    assert e.value.key == "registry.auth.password_file"
    assert str(e.value).startswith(f"registry.auth.password_file: file {path} {words}")
    assert "SENTINEL" not in str(e.value) and "second-line" not in str(e.value)


def test_a_secret_block_with_a_trailing_newline_is_refused_naming_the_block(prefect_harness):
    from prefect.blocks.system import Secret

    Secret(value=SENTINEL + "\n").save("regsweep-test-newline", overwrite=True)
    with pytest.raises(ConfigError) as e:
        read_secret(None, None, "registry.gitlab", ("token_env", "token_file"), block="regsweep-test-newline")
    assert str(e.value).startswith("registry.gitlab.token_block: Secret block 'regsweep-test-newline' ends with a "
                                   "control character (a newline)")
    assert "SENTINEL" not in str(e.value)


def test_a_docker_config_secret_with_a_control_character_is_refused_naming_the_file(tmp_path):
    from tasks.registry.auth import docker_config_credentials

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"reg.example": {"username": "ci", "password": SENTINEL + "\n"}}}))
    with pytest.raises(ConfigError) as e:
        docker_config_credentials("reg.example", path)
    assert str(e.value).startswith(f"{path}: the secret of user 'ci' ends with a control character (a newline)")
    assert "SENTINEL" not in str(e.value)


# --- redaction ------------------------------------------------------------------------------------

def test_a_secret_read_is_masked_in_errors_notes_and_logs(monkeypatch):
    secret = "redact-me-0b7d2e91c4"
    monkeypatch.setenv("REGSWEEP_TEST_REDACTED", secret)
    assert read_secret("REGSWEEP_TEST_REDACTED", None, "registry.auth", ("password_env", "password_file")) == secret

    err = RegistryError("reg.example", f"HTTP 500: token {secret} has expired")
    assert str(err) == f"registry reg.example: HTTP 500: token {MASK} has expired"

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    log = logging.getLogger("regsweep.test-redaction")
    handler = Keep()
    log.addHandler(handler)
    try:
        with collecting() as notes:
            warn(log, f"retrying: the registry said {secret!r}")
        log.warning("args too: %s", secret)
        try:
            raise ValueError(f"a library quoting b'{secret}'")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    assert notes.to_json()["warnings"]["messages"] == [f"retrying: the registry said '{MASK}'"]
    assert secret not in "\n".join(records) and len(records) == 3
    assert f"a library quoting b'{MASK}'" in records[2]


def test_escaped_and_url_quoted_spellings_are_masked_too():
    remember("p@ss/wörd-83f1")
    assert redact("user=p%40ss%2Fw%C3%B6rd-83f1 and b'p@ss/w\\xc3\\xb6rd-83f1'") == f"user={MASK} and b'{MASK}'"


def test_short_values_are_not_masked_everywhere():
    remember("ab")
    assert redact("a cab and a tab") == "a cab and a tab"


# --- end to end: the CLI and a flow run, against the loopback GitLab ------------------------------

@pytest.fixture
def gitlab(request, tmp_path, monkeypatch):
    rig = make_rig("gitlab", request, tmp_path, monkeypatch)
    repo = rig.repository("app")
    push_image(rig.client, repo, "v1")
    return rig, repo


def gitlab_config(tmp_path, rig, repo, api_url=None):
    cfg = tmp_path / "regsweep.yaml"
    cfg.write_text(yaml.safe_dump({
        "store": str(tmp_path / "store"),
        "registry": rig.registry_config(rig.registry.url, [repo], api_url=api_url),
        "cleanup": {"disableKubernetesBasedPolicy": True, "disableGitHistoryBasedPolicy": True},
        "helm": {"enabled": False}}))
    return cfg


def stored_text(tmp_path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (tmp_path / "store").rglob("*.json"))


def prefect_database_text(api_url: str) -> str:
    """What the Prefect server keeps of the runs (run logs, flow-run parameters and state messages,
    artifacts), read back through its API, as one text to search."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
        logs = client.read_logs(limit=200)
        artifacts = client.read_artifacts(limit=200)
    return "\n".join([*(json.dumps(r.parameters, default=str) + str(r.state and r.state.message) for r in runs),
                      *(log.message for log in logs), *(json.dumps(a.data, default=str) for a in artifacts)])


@pytest.mark.parametrize("value", [SENTINEL + "\n", "glpat-\x1bSENTINEL"])
def test_the_cli_refuses_a_token_with_a_control_character_naming_the_variable(gitlab, tmp_path, run_cli, value):
    rig, repo = gitlab
    res = run_cli("snapshot", "--config", gitlab_config(tmp_path, rig, repo), "--verbose", env={TOKEN_ENV: value})
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"regsweep: error: registry.gitlab.token_env: environment variable {TOKEN_ENV} ")
    assert "control character" in res.stderr and "Traceback" not in res.stderr
    assert "SENTINEL" not in res.stdout + res.stderr
    assert not (tmp_path / "store" / "snapshots").exists() or "SENTINEL" not in stored_text(tmp_path)


def test_a_flow_run_without_the_cli_refuses_it_too(gitlab, tmp_path, prefect_harness, monkeypatch, capfd):
    """A deployment's run skips the CLI's preflight: the source reads the token and refuses it the same way."""
    from flows.snapshot import snapshot_flow
    from tasks.config.models import load_config

    rig, repo = gitlab
    monkeypatch.setenv(TOKEN_ENV, SENTINEL + "\n")
    with pytest.raises(ConfigError, match=f"^registry.gitlab.token_env: environment variable {TOKEN_ENV} ends with"):
        snapshot_flow(config=load_config(gitlab_config(tmp_path, rig, repo)), sources=["registry"])
    out, err = capfd.readouterr()
    assert "SENTINEL" not in out + err
    assert not (tmp_path / "store" / "snapshots").exists() or "SENTINEL" not in stored_text(tmp_path)


def test_a_token_the_registry_quotes_back_is_masked_everywhere(gitlab, tmp_path, run_cli, prefect_api_url):
    """The token is fine, but the API puts it in its error bodies: retries, the error, the
    snapshot and the run logs (--verbose puts them on stderr) all show *** instead."""
    rig, repo = gitlab
    with FaultProxy(rig.api_url) as proxy:
        echo = json.dumps({"message": f"token {API_TOKEN} expired"})
        proxy.inject(503, times=1, retry_after=0, path=r"/registry/repositories/\d+/tags", body=echo)
        proxy.inject(500, times=None, path=r"/registry/repositories/\d+/tags", body=echo)
        res = run_cli("snapshot", "--config", gitlab_config(tmp_path, rig, repo, api_url=proxy.url), "--verbose")
    assert res.returncode == 1, res.stderr
    assert proxy.faults() == {"503": 1, "500": 1}
    sid = res.stdout.strip().splitlines()[-1]
    meta = json.loads((tmp_path / "store" / "snapshots" / sid / "snapshot.json").read_text())
    registry = meta["sources"]["registry"]
    assert registry["status"] == "failed"
    assert f"token {MASK} expired" in registry["error"]
    assert registry["retries"]["count"] == 1 and MASK in registry["retries"]["messages"][0]
    assert API_TOKEN not in res.stdout + res.stderr
    assert API_TOKEN not in stored_text(tmp_path)
    assert f"token {MASK} expired" in res.stderr
    kept = prefect_database_text(prefect_api_url)
    assert f"token {MASK} expired" in kept     # the run's logs are there, masked
    assert API_TOKEN not in kept
