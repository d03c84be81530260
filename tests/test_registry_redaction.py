"""No error message, retry note or log line repeats a credential: text from a transport exception,
a registry's error body or botocore goes into a message only through `scrub`
(tasks/registry/errors.py, over the one redaction step of tasks/common/redact.py), and a request httpx cannot send (a token with a newline:
h11's "Illegal header value b'<token>\\n'") fails once, in one line, without the token.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
import yaml

from tasks.common.errors import RegistryError
from tasks.config.models import parse_config
from tasks.registry.backends.api import ApiClient
from tasks.registry.distribution import RegistryClient
from tasks.registry.errors import registry_error, scrub as redact
from tasks.registry.transport import RetryPolicy
from tests.support.hostile import Front
from tests.support.rigs import TOKEN_ENV, make_rig
from tests.support.gitlab import gitlab_api  # noqa: F401 (fixtures)

SECRET = "SENTINEL-7f3a9c"
RETRY = RetryPolicy(attempts=3, initial=0.01, maximum=0.02)


@pytest.mark.parametrize("text", [
    f"Illegal header value b'glpat-{SECRET}\\n'",
    f"Illegal header value b'glpat-{SECRET}\\r\\nX-Other: 1'",
    f"Authorization: Bearer eyJ0.{SECRET}.sig",
    f"Basic {SECRET}Y2k6cHc=",
    f"https://ci:{SECRET}@registry.example/v2/",
    f"GET /v2/?private_token={SECRET}&n=1",
    f"{{'PRIVATE-TOKEN': '{SECRET}'}}",
    f"JOB-TOKEN={SECRET}",
])
def test_redact_removes_whatever_may_be_a_credential(text):
    out = redact(text)
    assert SECRET not in out and "[redacted" in out and "\n" not in out


def test_redact_leaves_ordinary_messages_alone():
    for text in ("manifest unknown", "Basic authentication required", "token expired, please log in again",
                 "[Errno 111] Connection refused", "Server disconnected without sending a response."):
        assert redact(text) == text


def test_a_header_h11_refuses_is_never_repeated_and_never_retried():
    err = registry_error("reg.example", exc=httpx.LocalProtocolError(f"Illegal header value b'glpat-{SECRET}\\n'"))

    assert SECRET not in str(err) and not err.retryable
    assert str(err) == ("registry reg.example: the request could not be sent: a header value is not valid HTTP (a token "
                        "or password with a newline or another control character? check the secret's source)")


@pytest.mark.parametrize("value", [f"glpat-{SECRET}\n", f"glpat-{SECRET}\r\nX-Injected: 1", f"glpat-{SECRET}\x00"])
def test_a_token_with_a_control_character_fails_once_without_the_token(gitlab_api, registry, value, caplog):
    api = gitlab_api(registry, projects={"grp/app": 7})

    async def go():
        client = ApiClient("gitlab.example", f"{api.url}/api/v4", retry=RETRY, concurrency=2, timeout=10,
                           headers=lambda: {"PRIVATE-TOKEN": value})
        async with client:
            try:
                await client.request("GET", "/projects/7")
            finally:
                assert client.requests == 1          # not retried: it would fail the same way

    # INFO: regsweep's own log lines and the CLI's default (httpcore's DEBUG trace is a library's, off by default)
    with caplog.at_level(logging.INFO), pytest.raises(RegistryError) as e:
        asyncio.run(go())

    assert "the request could not be sent: a header value is not valid HTTP" in str(e.value)
    assert SECRET not in str(e.value) and SECRET not in caplog.text
    assert api.requests == []                        # nothing went out


def test_the_cli_with_a_newline_in_the_token_says_so_in_one_line_without_it(request, tmp_path, monkeypatch, run_cli):
    rig = make_rig("gitlab", request, tmp_path, monkeypatch)
    repo = rig.repository("newline")
    rig.image(repo, ["a"])
    path = tmp_path / "regsweep.yaml"
    path.write_text(yaml.safe_dump({"store": str(tmp_path / "store"),
                                    "registry": rig.registry_config(rig.registry.url, [repo]),
                                    "helm": {"enabled": False}}))

    r = run_cli("snapshot", "--config", str(path), "--sources", "registry", env={TOKEN_ENV: f"glpat-{SECRET}\n"})

    # Refused as the secret is read (tasks/config/models.py checks every secret value), naming the
    # variable and never the value; no request goes out.
    assert r.returncode == 2 and "Traceback" not in r.stderr and SECRET not in r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith(f"regsweep: error: registry.gitlab.token_env: environment variable {TOKEN_ENV} ")
    assert "control character" in r.stderr
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def test_a_registry_echoing_a_credential_in_its_error_has_it_redacted(registry, caplog):
    body = {"errors": [{"code": "UNAVAILABLE", "message": f"upstream said: Authorization: Bearer eyJ0.{SECRET}.x"}]}
    with Front(registry.url) as front:
        front.answer("GET", "^/v2/$", 503, body)
        cfg = parse_config({"registry": {"url": front.url}}).registry

        async def ping():
            async with RegistryClient(cfg, retry=RETRY) as client:
                await client.ping()

        with caplog.at_level(logging.WARNING), pytest.raises(RegistryError) as e:
            asyncio.run(ping())

    assert "HTTP 503 UNAVAILABLE: upstream said: Authorization: [redacted]" in str(e.value)
    assert SECRET not in str(e.value) and SECRET not in caplog.text
    assert caplog.text.count("retrying in") == 2
