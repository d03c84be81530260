"""ECR fixtures: moto's ECR API on loopback (the session's moto server, tests/support/s3.py) with a
real Distribution as the registry's OCI side.

moto implements ECR's API (repositories, PutImage, DescribeImages, BatchDeleteImage,
GetAuthorizationToken) but serves no `/v2/` registry and pages nothing, so:

    ecr_pager     a loopback proxy in front of moto that pages DescribeRepositories and DescribeImages
                  by `maxResults`/`nextToken` as ECR documents (moto answers everything at once);
                  every other call passes through untouched
    ecr_env       environment pointing boto3 at it: AWS_ENDPOINT_URL_ECR (botocore's own
                  service-specific endpoint variable, as a user would set it), keys, region
    ecr_registry  a Distribution behind htpasswd whose only user is `AWS` with the password moto's
                  GetAuthorizationToken hands out, so the Distribution side logs in as on ECR
    EcrImages     pushes an image to both sides: the manifest into the Distribution, and the same
                  bytes (same digest) into moto with PutImage
    moto_auth     turns moto's IAM authentication on for one test (requests with unknown keys fail)
"""

from __future__ import annotations

import base64
import json
import os
import itertools
from datetime import datetime
from typing import Any

import httpx
import pytest

from testbed import LocalRegistry, push_image, push_index, write_htpasswd
from testbed.loopback import Handler, LoopbackServer

ACCOUNT = "123456789012"           # moto's default account
ECR_PASSWORD = f"{ACCOUNT}-auth-token"
_repos = itertools.count()
_PAGED = {"AmazonEC2ContainerRegistry_V20150921.DescribeImages": "imageDetails",
          "AmazonEC2ContainerRegistry_V20150921.DescribeRepositories": "repositories"}


class EcrPager(LoopbackServer):
    """Pages DescribeImages/DescribeRepositories in front of moto; counts the calls by target."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.calls: list[str] = []
        self._client = httpx.Client(timeout=60)

    def stop(self) -> None:
        super().stop()
        self._client.close()

    def count(self, operation: str) -> int:
        return sum(1 for c in self.calls if c.endswith("." + operation))

    class handler(Handler):
        def do_POST(self):
            pager: EcrPager = self.owner
            body = self.read_body()
            target = self.headers.get("X-Amz-Target", "")
            pager.calls.append(target)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            key = _PAGED.get(target)
            doc = json.loads(body or b"{}") if key else None
            size = int(doc.pop("maxResults", 0) or 0) if doc is not None else 0
            start = int(base64.b64decode(doc.pop("nextToken")).decode()) if doc and doc.get("nextToken") else 0
            if doc is not None:
                body = json.dumps(doc).encode()
            r = pager._client.post(pager.upstream + self.path, content=body, headers=headers)
            content = r.content
            if key and r.status_code == 200 and size:
                answer = json.loads(content)
                items = answer.get(key) or []
                answer[key] = items[start:start + size]
                answer.pop("nextToken", None)
                if start + size < len(items):
                    answer["nextToken"] = base64.b64encode(str(start + size).encode()).decode()
                content = json.dumps(answer).encode()
            self.reply(r.status_code, content, {"Content-Type": r.headers.get("content-type", "application/json")})


@pytest.fixture(scope="session")
def ecr_pager(s3_server):
    with EcrPager(s3_server) as pager:
        yield pager


@pytest.fixture
def ecr_env(ecr_pager, s3_server, monkeypatch) -> dict[str, str]:
    """boto3 pointed at moto's ECR through the pager, for this process and CLI subprocesses."""
    env = {"AWS_ENDPOINT_URL_ECR": ecr_pager.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    ecr_pager.calls.clear()
    return env


@pytest.fixture
def ecr_registry(tmp_path):
    """A Distribution whose only account is ECR's: user `AWS`, moto's authorization token."""
    path = write_htpasswd(tmp_path / "ecr-htpasswd", {"AWS": ECR_PASSWORD})
    with LocalRegistry(htpasswd=path, credentials=("AWS", ECR_PASSWORD)) as reg:
        yield reg


@pytest.fixture
def moto_auth(s3_server):
    """moto's IAM authentication on for this test: the `testing` keys are refused as unknown."""
    httpx.post(f"{s3_server}/moto-api/reset-auth", content=b"0")
    yield
    httpx.post(f"{s3_server}/moto-api/reset-auth", content=b"inf")


class EcrImages:
    """Push images into the Distribution and register the very same manifests in moto's ECR."""

    def __init__(self, registry: LocalRegistry, env: dict[str, str]):
        import boto3

        self.client = registry.client()
        self.ecr = boto3.client("ecr", endpoint_url=env["AWS_ENDPOINT_URL_ECR"], region_name=env["AWS_DEFAULT_REGION"])

    def close(self) -> None:
        self.client.close()

    def repository(self, stem: str) -> str:
        name = f"ecr/{stem}-{os.getpid()}-{next(_repos)}"
        self.ecr.create_repository(repositoryName=name)
        return name

    def put(self, repo: str, digest, tag: str | None) -> None:
        kw: dict[str, Any] = {"imageTag": tag} if tag else {}
        self.ecr.put_image(repositoryName=repo, imageManifest=digest.body.decode(), imageDigest=str(digest),
                           imageManifestMediaType=digest.media_type, **kw)

    def image(self, repo: str, tags: list[str], *, created: datetime | None = None, label: str = "") -> Any:
        """One image under `tags` (the first pushes it, the others name the same digest)."""
        config = {"config": {"Labels": {"build": label or repo + ":" + ",".join(tags)}}}
        if created is not None:
            config["created"] = created
        d = push_image(self.client, repo, tags[0] if tags else None, config=config)
        for tag in tags[1:]:
            self.client.put(f"/v2/{repo}/manifests/{tag}", content=d.body, headers={"Content-Type": d.media_type})
        for tag in tags or [None]:
            self.put(repo, d, tag)
        return d

    def index(self, repo: str, tag: str, children: list[tuple[Any, dict]]) -> Any:
        for child, _ in children:
            self.put(repo, child, None)
        d = push_index(self.client, repo, tag, children)
        self.put(repo, d, tag)
        return d

    def described(self, repo: str) -> dict[str, list[str]]:
        """digest -> tags, as moto's ECR holds them now."""
        doc = self.ecr.describe_images(repositoryName=repo)
        return {d["imageDigest"]: sorted(d.get("imageTags") or []) for d in doc["imageDetails"]}
