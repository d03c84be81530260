"""The one transport and the one error map (tasks/registry/transport.py, tasks/registry/errors.py):
which answers are retried is decided in one place, for every API alike.

ECR runs against moto's ECR API behind the paging proxy (tests/support/ecr.py), GitHub against
the loopback fake (tests/support/github.py); faults come from a FaultProxy in front of each API.
"""

from __future__ import annotations

import asyncio

import pytest

from tasks.common.errors import RegistryError
from tasks.config.models import parse_config
from tasks.registry.transport import RetryPolicy
from tasks.sources.blobcache import BlobCache
from tasks.sources.registry import scan_registry
from tests.support.rigs import make_rig
from tests.support.registry import fault_proxy_factory  # noqa: F401 (fixtures)
from tests.support.gitlab import gitlab_api  # noqa: F401 (fixtures)
from tests.support.github import github_api  # noqa: F401 (fixtures)
from tests.support.harbor import harbor_api  # noqa: F401 (fixtures)
from tests.support.dockerhub import dockerhub_api  # noqa: F401 (fixtures)
from tests.support.ecr import ecr_env, ecr_registry, moto_auth  # noqa: F401 (fixtures)

FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.02)
ECR_500 = '{"__type": "ServerException", "message": "internal failure"}'
ECR_503 = '{"__type": "ServiceUnavailableException", "message": "try again"}'


def scan_through(rig, api_url: str, repo: str, tmp_path):
    cfg = parse_config({"store": str(tmp_path / "store"),
                        "registry": rig.registry_config(rig.registry.url, [repo], api_url=api_url)})
    return asyncio.run(scan_registry(cfg.registry, cfg.link, BlobCache(), retry=FAST))


def test_an_ecr_500_fails_the_source_like_any_other_apis_500(request, tmp_path, monkeypatch, fault_proxy_factory):
    rig = make_rig("ecr", request, tmp_path, monkeypatch)
    repo = rig.repository("five-hundred")
    rig.image(repo, ["a"])
    api = fault_proxy_factory(rig.api_url)
    api.inject(500, times=1, method="POST", body=ECR_500)

    with pytest.raises(RegistryError, match="ECR describe_repositories: ServerException: internal failure") as e:
        scan_through(rig, api.url, repo, tmp_path)

    assert not e.value.retryable and e.value.status == 500
    assert api.count("POST") == 1           # not retried: neither by regsweep nor by botocore


def test_an_ecr_503_is_retried_like_any_other_apis_503(request, tmp_path, monkeypatch, fault_proxy_factory):
    rig = make_rig("ecr", request, tmp_path, monkeypatch)
    repo = rig.repository("five-oh-three")
    a = rig.image(repo, ["a"])
    api = fault_proxy_factory(rig.api_url)
    api.inject(503, times=1, method="POST", body=ECR_503)

    result, _ = scan_through(rig, api.url, repo, tmp_path)

    assert [(t["tag"], t["digest"]) for t in result.tags] == [("a", a)]
    assert [f[2] for f in api.faulted] == ["503"]


def test_githubs_403_rate_limit_is_retried_through_the_maps_hook(request, tmp_path, monkeypatch, fault_proxy_factory):
    rig = make_rig("github", request, tmp_path, monkeypatch)
    repo = rig.repository("limited")
    a = rig.image(repo, ["a"])
    api = fault_proxy_factory(rig.api_url)
    api.inject(403, times=1, retry_after=0, path=r"/versions\?",
               body='{"message": "You have exceeded a secondary rate limit."}')

    result, _ = scan_through(rig, api.url, repo, tmp_path)

    assert [(t["tag"], t["digest"]) for t in result.tags] == [("a", a)]
    assert [f[2] for f in api.faulted] == ["403"]


def test_githubs_plain_403_is_an_auth_error_and_not_retried(request, tmp_path, monkeypatch, fault_proxy_factory):
    from tasks.common.errors import RegistryAuthError

    rig = make_rig("github", request, tmp_path, monkeypatch)
    repo = rig.repository("refused")
    rig.image(repo, ["a"])
    api = fault_proxy_factory(rig.api_url)
    api.inject(403, times=None, path=r"/versions\?", body='{"message": "Must have admin rights to Repository."}')

    with pytest.raises(RegistryAuthError, match="HTTP 403: Must have admin rights"):
        scan_through(rig, api.url, repo, tmp_path)

    assert api.count("GET", r"/versions\?") == 1
