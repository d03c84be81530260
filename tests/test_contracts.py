"""The native-API backends and their loopback fakes, checked against the vendors' own API descriptions.

tests/contracts/ holds Harbor's, GitHub's, GitLab's and Docker Hub's published OpenAPI / Swagger
descriptions, trimmed to the operations regsweep calls (tests/contracts/SOURCES.md). Every fake
validates each request it receives and each answer it sends against its vendor's description
(tests/support/contracts.py), and its fixture fails any test where they disagree; so
tests/test_backends.py checks the contract on every run. Here: every operation each backend uses
is exercised and validates both ways; a fake's answer changed to disagree with the vendor, and a
request outside the vendor's limits, are caught; the errata (where a vendor's description
contradicts its own API) are each still needed, and the operations left undescribed are exactly
the ones named.
"""

from __future__ import annotations

import asyncio
import copy

import httpx
import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from tasks.common.errors import UnsupportedOperation
from tasks.config.models import parse_config
from tasks.registry.backends import open_backend
from tasks.registry.distribution import RetryPolicy
from tests.support.contracts import ERRATA, NOT_DESCRIBED, Contract, contract, load_description
from tests.support.fakeapi import TOKEN
from tests.support.rigs import USER, make_rig
from tests.support.harbor import harbor_api  # noqa: F401 (fixtures)
from tests.support.dockerhub import dockerhub_api  # noqa: F401 (fixtures)
from tests.support.github import github_api  # noqa: F401 (fixtures)
from tests.support.gitlab import gitlab_api  # noqa: F401 (fixtures)

FAST = RetryPolicy(attempts=2, initial=0.01, maximum=0.05)
AMD, ARM = {"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64"}
APIS = ["gitlab", "harbor", "github", "dockerhub"]


# --------------------------------------------------------------------------- the descriptions themselves


@pytest.mark.parametrize("api", ["harbor", "github", "dockerhub"])
def test_the_vendored_descriptions_are_valid_openapi(api):
    validate(load_description(api))      # raises on any error: Swagger 2.0 / OpenAPI 3.0 as published


def test_gitlab_publishes_swagger_that_is_valid_but_for_examples_on_parameters():
    doc = load_description("gitlab")
    with pytest.raises(OpenAPIValidationError, match="is not valid under any of the given schemas"):
        validate(doc)
    stripped = copy.deepcopy(doc)
    for item in stripped["paths"].values():
        for op in item.values():
            for p in op.get("parameters", []):
                p.pop("example", None)       # grape-swagger writes `example` where Swagger 2.0 has none
    validate(stripped)


@pytest.mark.parametrize("api", APIS)
def test_what_regsweep_sends_undescribed_is_truly_absent_from_the_description(api):
    c = contract(api)
    for method, template in NOT_DESCRIBED.get(api, {}):
        concrete = template.replace("{id}", "7").replace("{namespace}", "acme").replace("{repository}", "app") \
            .replace("{tag}", "v1")
        assert c.match(method, concrete) == (None, {}), (method, template)
        assert c.described(method, concrete) == (method, template)
    assert c.check_request("GET", "/no/such/endpoint", {}, {}, None)[1] == \
        [f"{api}: request GET /no/such/endpoint: no such operation in the vendor's description"]


# --------------------------------------------------------------------------- every operation, both ways


def cfg_for(rig, tmp_path, repo, **settings):
    registry = rig.registry_config(rig.registry.url, [repo])
    registry[rig.api].update(settings)
    return parse_config({"store": str(tmp_path / "store"), "registry": registry}).registry


async def exercise(cfg, repo, doomed, doomed_tags, lone_tag):
    """Every call a backend makes: reach, list, read, delete a lone tag and a manifest, and both probes."""
    async with open_backend(cfg, FAST) as backend:
        await backend.ping()
        repositories = await backend.list_repositories()
        tags = await backend.list_tags(repo)
        try:
            await backend.delete_tag(repo, lone_tag)
        except UnsupportedOperation:
            pass                                     # GitHub deletes versions, never a lone tag
        assert await backend.delete_manifest(repo, doomed, doomed_tags)
        for probe in (backend.probe_delete_digest, backend.probe_delete_tag):
            try:
                await probe(repo)
            except UnsupportedOperation:
                pass
        return repositories, tags


def fill(rig, repo):
    keep = rig.image(repo, ["keep", "lone"])
    doomed = rig.image(repo, ["old", "old-b"])
    k1, k2 = rig.image(repo, [], label="amd64"), rig.image(repo, [], label="arm64")
    rig.index(repo, "multi", [(k1, AMD), (k2, ARM)])
    return keep, doomed


EVERY_OPERATION = {
    ("gitlab", "project"): {"getApiV4ProjectsIdRegistryRepositories",
                            "getApiV4ProjectsIdRegistryRepositoriesRepositoryIdTags",
                            "getApiV4ProjectsIdRegistryRepositoriesRepositoryIdTagsTagName",
                            "deleteApiV4ProjectsIdRegistryRepositoriesRepositoryIdTagsTagName"},
    ("gitlab", "group"): {"getApiV4GroupsIdRegistryRepositories",
                          "getApiV4ProjectsIdRegistryRepositoriesRepositoryIdTags",
                          "getApiV4ProjectsIdRegistryRepositoriesRepositoryIdTagsTagName",
                          "deleteApiV4ProjectsIdRegistryRepositoriesRepositoryIdTagsTagName"},
    ("harbor", None): {"listProjects", "listRepositories", "listArtifacts", "deleteArtifact", "deleteTag"},
    ("github", "org"): {"packages/list-packages-for-organization",
                        "packages/get-all-package-versions-for-package-owned-by-org",
                        "packages/delete-package-version-for-org"},
    ("github", "user"): {"packages/list-packages-for-user",
                         "packages/get-all-package-versions-for-package-owned-by-user",
                         "packages/delete-package-version-for-user"},
    ("dockerhub", None): {"AuthCreateAccessToken", "listNamespaceRepositories", "ListRepositoryTags"},
}
UNCOVERED = {("gitlab", "project"): {("GET", "/api/v4/projects/{id}")},
             ("gitlab", "group"): {("GET", "/api/v4/groups/{id}")},
             ("dockerhub", None): {("DELETE", "/v2/repositories/{namespace}/{repository}/tags/{tag}/")}}
VARIANTS = {("gitlab", "group"): {"project": None, "group": "grp"}, ("github", "user"): {"ownerType": "user"}}


@pytest.mark.parametrize("api,variant", list(EVERY_OPERATION), ids=lambda v: str(v))
def test_every_operation_a_backend_uses_keeps_the_vendors_contract(api, variant, request, tmp_path, monkeypatch):
    rig = make_rig(api, request, tmp_path, monkeypatch)
    repo = rig.repository("contract")
    keep, doomed = fill(rig, repo)
    cfg = cfg_for(rig, tmp_path, repo, **VARIANTS.get((api, variant), {}))

    repositories, tags = asyncio.run(exercise(cfg, repo, str(doomed), ("old", "old-b"), "lone"))

    recorder = rig.server.contract
    assert recorder.violations == []
    assert set(recorder.checked) == EVERY_OPERATION[(api, variant)]      # each one seen, and validated
    assert set(recorder.uncovered) == UNCOVERED.get((api, variant), set())
    assert set(recorder.checked) | {u for u in recorder.uncovered} <= \
        {op.id for op in contract(api).operations} | set(NOT_DESCRIBED.get(api, {}))
    # What the backend made of the vendor-shaped answers: the listing a user relies on.
    assert repo in repositories
    assert {t.tag for t in tags} >= {"keep", "lone", "old", "old-b", "multi"}
    assert {t.digest for t in tags if t.tag == "keep"} == {str(keep)}
    assert str(doomed) not in rig.tags(repo).values()


# --------------------------------------------------------------------------- disagreements are caught


def test_a_harbor_artifact_digest_as_a_number_is_caught(harbor_api, tmp_path):
    from testbed import LocalRegistry, push_image, write_htpasswd

    path = write_htpasswd(tmp_path / "htpasswd", {USER: TOKEN})
    with LocalRegistry(htpasswd=path, credentials=(USER, TOKEN)) as reg, reg.client() as c:
        push_image(c, "proj/app", "v1", config={"config": {"Labels": {"x": "1"}}})
        api = harbor_api(reg, users={USER: TOKEN})
        url = f"{api.url}/api/v2.0/projects/proj/repositories/app/artifacts"
        auth = (USER, TOKEN)

        assert httpx.get(url, params={"with_tag": "true"}, auth=auth).status_code == 200
        assert api.contract.violations == []                      # the fake as it is keeps the contract

        def digest_as_number(req, answer):
            status, body, headers = answer
            if isinstance(body, list):
                body = [{**a, "digest": 12345} for a in body]
            return status, body, headers

        api.contract_strict = False                               # this test reads the violations itself
        api.mutate = digest_as_number
        httpx.get(url, params={"with_tag": "true"}, auth=auth)

    assert api.contract.violations == \
        ["harbor: listArtifacts answered 200: body[0]['digest']: 12345 is not of type 'string'"]


def test_a_github_package_version_without_id_is_caught(github_api):
    from testbed import LocalRegistry, push_image

    with LocalRegistry() as reg, reg.client() as c:
        push_image(c, "acme/app", "v1", config={"config": {"Labels": {"x": "1"}}})
        api = github_api(reg, owner="acme")
        url = f"{api.url}/orgs/acme/packages/container/app/versions"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(url, headers=headers).status_code == 200
        assert api.contract.violations == []

        def drop_id(req, answer):
            status, body, headers = answer
            if req.path.endswith("/versions") and isinstance(body, list):
                body = [{k: v for k, v in version.items() if k != "id"} for version in body]
            return status, body, headers

        api.contract_strict = False
        api.mutate = drop_id
        httpx.get(url, headers=headers)

    assert api.contract.violations == ["github: packages/get-all-package-versions-for-package-owned-by-org "
                                       "answered 200: body[0]: 'id' is a required property"]


def test_a_request_beyond_the_vendors_limits_is_caught(harbor_api, tmp_path):
    from testbed import LocalRegistry, write_htpasswd

    path = write_htpasswd(tmp_path / "htpasswd", {USER: TOKEN})
    with LocalRegistry(htpasswd=path, credentials=(USER, TOKEN)) as reg:
        api = harbor_api(reg, users={USER: TOKEN})
        api.contract_strict = False
        httpx.get(f"{api.url}/api/v2.0/projects", params={"page_size": "1000", "sorting": "name"}, auth=(USER, TOKEN))
        httpx.delete(f"{api.url}/api/v2.0/projects/proj/artifacts/v1", auth=(USER, TOKEN))

    assert api.contract.violations == [
        "harbor: request GET /api/v2.0/projects: query parameter page_size: 1000 is greater than the maximum of 100",
        "harbor: request GET /api/v2.0/projects: query parameter 'sorting' is not in the vendor's description",
        "harbor: request DELETE /api/v2.0/projects/proj/artifacts/v1: no such operation in the vendor's description"]


# --------------------------------------------------------------------------- the errata are still needed


def as_published(api: str) -> Contract:
    return Contract.from_description(api, load_description(api), (), NOT_DESCRIBED.get(api))


def test_gitlab_answers_a_tag_delete_with_200_where_its_description_says_204(gitlab_api):
    from testbed import LocalRegistry, push_image

    assert [pointer for pointer, _, _ in ERRATA["gitlab"]] == [
        "/paths/~1api~1v4~1projects~1{id}~1registry~1repositories~1{repository_id}~1tags~1{tag_name}/delete/responses/200"]
    with LocalRegistry() as reg, reg.client() as c:
        push_image(c, "grp/app", "v1", config={"config": {"Labels": {"x": "1"}}})
        push_image(c, "grp/app", "v2", config={"config": {"Labels": {"x": "2"}}})
        api = gitlab_api(reg, projects={"grp/app": 7})
        headers = {"PRIVATE-TOKEN": TOKEN}
        rid = httpx.get(f"{api.url}/api/v4/projects/7/registry/repositories", headers=headers).json()[0]["id"]
        r = httpx.delete(f"{api.url}/api/v4/projects/7/registry/repositories/{rid}/tags/v1", headers=headers)

    assert r.status_code == 200
    op, _ = as_published("gitlab").match("DELETE", f"/api/v4/projects/7/registry/repositories/{rid}/tags/v1")
    assert as_published("gitlab").check_response(op, 200, {}, None) == [
        "gitlab: deleteApiV4ProjectsIdRegistryRepositoriesRepositoryIdTagsTagName answered 200: a success status "
        "the operation does not document (documented: 204, 400, 401, 403, 404)"]
    patched, _ = contract("gitlab").match("DELETE", f"/api/v4/projects/7/registry/repositories/{rid}/tags/v1")
    assert contract("gitlab").check_response(patched, 200, {}, None) == []


def test_docker_hub_lists_a_tags_images_as_an_array_where_its_description_says_object(dockerhub_api):
    from testbed import LocalRegistry, push_image

    with LocalRegistry() as reg, reg.client() as c:
        push_image(c, "acme/app", "v1", config={"config": {"Labels": {"x": "1"}}})
        api = dockerhub_api(reg, users={USER: TOKEN})
        jwt = httpx.post(f"{api.url}/v2/auth/token", json={"identifier": USER, "secret": TOKEN}).json()["access_token"]
        page = httpx.get(f"{api.url}/v2/namespaces/acme/repositories/app/tags",
                         headers={"Authorization": f"Bearer {jwt}"}).json()

    assert isinstance(page["results"][0]["images"], list)
    op, _ = as_published("dockerhub").match("GET", "/v2/namespaces/acme/repositories/app/tags")
    assert as_published("dockerhub").check_response(op, 200, {}, page) == [
        f"dockerhub: ListRepositoryTags answered 200: body['results'][0]['images']: "
        f"{page['results'][0]['images']!r} is not of type 'object'"]
    patched, _ = contract("dockerhub").match("GET", "/v2/namespaces/acme/repositories/app/tags")
    assert contract("dockerhub").check_response(patched, 200, {}, page) == []
