"""Where credentials may go, decided before any request: URLs that would carry or leak a secret are
refused when the configuration is loaded, and plain http:// takes credentials only when told to.

Every refusal names the key and never repeats the value (it may be the secret itself)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
import yaml

from tasks.common.errors import ConfigError
from tasks.config.models import parse_config
from tasks.registry.distribution import RegistryClient, RetryPolicy
from tests.support.hostile import Front
from tests.support.registry import REGISTRY_PASSWORD, REGISTRY_USER

SECRET = "SENTINEL-s3cret"
HTTPS = "https://registry.example"


def api(name: str, **settings) -> dict:
    needs = {"gitlab": {"project": "g/p"}, "github": {"owner": "o"}, "dockerhub": {"namespace": "n"},
             "harbor": {}, "ecr": {}}[name]
    return {"url": HTTPS, "api": name, name: {**needs, **settings}}


@pytest.mark.parametrize("registry, key", [
    ({"url": f"https://ci:{SECRET}@registry.example"}, "registry.url"),
    ({"url": f"https://{SECRET}@registry.example"}, "registry.url"),
    ({"url": f"https://registry.example?token={SECRET}"}, "registry.url"),
    ({"url": f"https://registry.example#{SECRET}"}, "registry.url"),
    (api("gitlab", url=f"https://x:{SECRET}@gitlab.example"), "registry.gitlab.url"),
    (api("gitlab", url=f"https://gitlab.example/?private_token={SECRET}"), "registry.gitlab.url"),
    (api("harbor", url=f"https://{SECRET}@harbor.example"), "registry.harbor.url"),
    (api("github", url=f"https://api.github.example#{SECRET}"), "registry.github.url"),
    (api("dockerhub", url=f"https://u:{SECRET}@hub.example"), "registry.dockerhub.url"),
    (api("ecr", endpoint=f"https://a:{SECRET}@ecr.example"), "registry.ecr.endpoint"),
    (api("github", url=f"https://api.github.example:{SECRET}"), "registry.github.url"),
])
def test_a_url_with_user_info_query_or_fragment_is_refused_naming_the_key_not_the_value(registry, key):
    with pytest.raises(ConfigError) as e:
        parse_config({"registry": registry})

    assert e.value.key == key and e.value.exit_code == 2
    assert SECRET not in str(e.value)


def test_the_cli_refuses_a_url_with_a_password_in_one_line_without_it(run_cli, tmp_path):
    path = tmp_path / "regsweep.yaml"
    path.write_text(yaml.safe_dump({"store": str(tmp_path / "store"),
                                    "registry": {"url": f"https://ci:{SECRET}@registry.example"}}))

    r = run_cli("snapshot", "--config", str(path), "--sources", "registry")

    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "regsweep: error: registry.url: must not carry user info (user:secret@): put credentials in registry.auth"]
    assert SECRET not in r.stdout + r.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("registry, where", [
    ({"url": "http://registry.example", "auth": {"username": "ci", "password_env": "PW"}}, "registry.url"),
    ({"url": "http://registry.example", "api": "harbor", "auth": {"username": "ci", "password_env": "PW"}},
     "registry.url"),
    ({**api("gitlab", url="http://gitlab.example", token_env="TOKEN")}, "registry.gitlab.url"),
    ({**api("github", url="http://api.github.example", token_file="/run/token")}, "registry.github.url"),
    ({**api("dockerhub", url="http://hub.example", token_block="hub")}, "registry.dockerhub.url"),
])
def test_credentials_for_plain_http_need_the_explicit_opt_in(registry, where):
    with pytest.raises(ConfigError) as e:
        parse_config({"registry": registry})

    assert e.value.key == "registry.allowInsecureCredentials"
    assert f"{where} is plain http://" in str(e.value) and "set registry.allowInsecureCredentials: true" in str(e.value)
    assert parse_config({"registry": {**registry, "allowInsecureCredentials": True}}).registry.allowInsecureCredentials


def test_plain_http_without_credentials_and_https_with_them_need_no_opt_in():
    parse_config({"registry": {"url": "http://registry.example"}})
    parse_config({"registry": {"url": HTTPS, "auth": {"username": "ci", "password_env": "PW"}}})
    parse_config({"registry": api("gitlab", url="http://gitlab.example")})   # no token: anonymous


def test_docker_config_credentials_found_at_run_time_are_not_sent_over_plain_http(htpasswd_registry, tmp_path,
                                                                                  monkeypatch):
    docker = tmp_path / "docker"
    docker.mkdir()
    auth = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
    with Front(htpasswd_registry.url) as front:
        (docker / "config.json").write_text(json.dumps({"auths": {front.host: {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(docker))

        async def ping(allowed: bool) -> None:
            config = parse_config({"registry": {"url": front.url, "allowInsecureCredentials": allowed}}).registry
            async with RegistryClient(config, retry=RetryPolicy(attempts=1)) as client:
                await client.ping()

        with pytest.raises(ConfigError) as e:
            asyncio.run(ping(False))
        refused = front.credentials_seen()
        asyncio.run(ping(True))

    assert e.value.key == "registry.allowInsecureCredentials"
    assert str(e.value) == (f"registry.allowInsecureCredentials: {front.host} is plain http:// and the credentials from "
                            f"{docker / 'config.json'} would travel in clear text: use https, or set "
                            "registry.allowInsecureCredentials: true")
    assert refused == [] and front.count("GET", "^/v2/$") >= 2
    assert front.credentials_seen() == [f"authorization: Basic {auth}"]   # with the opt-in, they go
