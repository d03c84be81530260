"""AWS ECR (`registry.api: ecr`), through boto3.

- Listing: `DescribeRepositories`, then `DescribeImages` per repository, both paged with
  `maxResults`/`nextToken`. Each image detail carries `imageDigest`, `imageTags`,
  `imagePushedAt` and `lastRecordedPullTime`: no read of a manifest per tag, and a rescan of an
  unchanged repository costs its listing pages only.
- Resolving a tag (the sweep's re-check): `DescribeImages` with `imageIds=[{imageTag}]`.
- Deleting: `BatchDeleteImage` with `imageDigest` (the image and every tag on it) or `imageTag`
  (that tag only; ECR deletes an image whose last tag goes). Its `failures` say `ImageNotFound`
  for what is already gone.
- Credentials: the AWS default chain (environment, `AWS_PROFILE` or `registry.ecr.profile`, web
  identity, instance and container roles), never configuration values. The Distribution API
  (for manifests and configs) logs in with `GetAuthorizationToken`'s user `AWS` and token.
- Endpoint: `registry.ecr.endpoint`, else botocore's own lookup (`AWS_ENDPOINT_URL_ECR`, then AWS).

botocore's own retries are off (`total_max_attempts: 1`): every call goes through the same Gate
as every other API's requests (tasks/registry/transport.py: bounded, counted, retried), and
tasks/registry/errors.py (`aws_error`) decides what is retried: throttling (`ThrottlingException`,
HTTP 429, with Retry-After when sent) and 502/503/504, not a 500 (`ServerException`), as for
every other API.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any, Callable

from tasks.registry.auth import Credentials
from tasks.registry.backends.base import Backend, TagInfo
from tasks.config.models import RegistryConfig
from tasks.registry.transport import Bounds, Gate, PageGuard, RetryPolicy
from tasks.common.errors import ConfigError, ManifestUnknown, RegistryError
from tasks.registry.errors import aws_error

_HOST_RX = re.compile(r"^(\d{12})\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?(?::\d+)?$")


class EcrBackend(Backend):
    api = "ecr"
    enable_hint = "the IAM policy needs ecr:BatchDeleteImage on the repository"

    def __init__(self, config: RegistryConfig, retry: RetryPolicy | None = None, bounds: Bounds | None = None):
        settings = config.ecr
        assert settings is not None
        m = _HOST_RX.match(config.host)
        self.region = settings.region or (m.group(2) if m else None)
        self.registry_id = settings.registryId or (m.group(1) if m else None)
        self.settings = settings
        self._client: Any = None
        super().__init__(config, retry, bounds)
        self.gate = Gate(self.retry, config.concurrency)

    @property
    def requests(self) -> int:
        """ECR API calls made so far, retries included."""
        return self.gate.requests

    # -- boto3, on threads -------------------------------------------------------------------------
    def _boto(self) -> Any:
        if self._client is None:
            import boto3
            import botocore.config
            import botocore.exceptions

            try:
                session = boto3.session.Session(profile_name=self.settings.profile, region_name=self.region)
                self._client = session.client(
                    "ecr", endpoint_url=self.settings.endpoint,
                    config=botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=self.config.timeout,
                                                  read_timeout=self.config.timeout,
                                                  max_pool_connections=self.config.concurrency))
            except botocore.exceptions.ProfileNotFound as e:
                raise ConfigError("registry.ecr.profile", str(e)) from None
            except botocore.exceptions.NoRegionError:
                raise ConfigError("registry.ecr.region", "no AWS region: set registry.ecr.region or "
                                  "AWS_DEFAULT_REGION, or use the registry's own host name") from None
        return self._client

    def _ids(self) -> dict[str, str]:
        return {"registryId": self.registry_id} if self.registry_id else {}

    async def _call(self, op: str, *, repository: str | None = None, reference: str | None = None, **kw: Any) -> dict:
        """One ECR API call on a thread, through the Gate, every failure a typed error."""
        async def attempt() -> dict:
            try:
                return await asyncio.to_thread(lambda: getattr(self._boto(), op)(**kw))
            except (ConfigError, RegistryError):
                raise
            except Exception as e:  # botocore's tree: mapped by tasks/registry/errors.py, never a traceback
                raise aws_error(self.name, op, e, repository=repository, reference=reference) from None
        return await self.gate.call(attempt, op)

    async def _pages(self, op: str, key: str, *, repository: str | None = None, **kw: Any) -> list[dict]:
        """Every item of a paged ECR call, `nextToken` by `nextToken`, under the same guard as every
        other paginator (tasks/registry/transport.py: no loops, page and item caps)."""
        out: list[dict] = []
        token: str | None = None
        guard = PageGuard(self.name, self.bounds, f"ECR {op}", {"repository": repository, "reference": None})
        while True:
            page = await self._call(op, repository=repository, maxResults=self.settings.pageSize,
                                    **({"nextToken": token} if token else {}), **self._ids(), **kw)
            items = page.get(key) or []
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise RegistryError(self.name, f"ECR {op}: the answer's {key} is not a list", repository=repository)
            guard.page(len(items))
            out.extend(items)
            token = page.get("nextToken")
            if not token:
                return out
            guard.next(str(token))

    # -- the interface -------------------------------------------------------------------------------
    def oci_credentials(self) -> Callable[[], Credentials | None]:
        def token() -> Credentials:
            # Asked for once, when the Distribution API first challenges (ECR always does).
            try:
                doc = self._boto().get_authorization_token(**({"registryIds": [self.registry_id]} if self.registry_id else {}))
                raw = doc["authorizationData"][0]["authorizationToken"]
                user, _, password = base64.b64decode(raw).decode().partition(":")
            except (ConfigError, RegistryError):
                raise
            except Exception as e:
                raise aws_error(self.name, "GetAuthorizationToken", e) from None
            return Credentials(user, password, origin="ECR GetAuthorizationToken")
        return token

    async def ping(self) -> None:
        await self._call("describe_repositories", maxResults=1, **self._ids())
        await self.oci.ping()

    async def list_repositories(self) -> list[str]:
        return [r["repositoryName"] for r in await self._pages("describe_repositories", "repositories")]

    async def list_tags(self, repo: str) -> list[TagInfo]:
        out: list[TagInfo] = []
        for d in await self._pages("describe_images", "imageDetails", repository=repo, repositoryName=repo):
            digest, pushed, pulled = d.get("imageDigest"), d.get("imagePushedAt"), d.get("lastRecordedPullTime")
            tags = d.get("imageTags") or [None]     # an untagged image still tells its times
            out += [TagInfo(t, digest, pushed, pulled) for t in tags]
        return out

    async def resolve(self, repo: str, ref: str) -> str | None:
        key = "imageDigest" if ref.startswith("sha256:") else "imageTag"
        try:
            doc = await self._call("describe_images", repository=repo, reference=ref, repositoryName=repo,
                                   imageIds=[{key: ref}], **self._ids())
        except ManifestUnknown:
            return None
        details = doc.get("imageDetails") or []
        return details[0].get("imageDigest") if details else None

    async def _delete(self, repo: str, image_id: dict[str, str]) -> bool:
        ref = next(iter(image_id.values()))
        doc = await self._call("batch_delete_image", repository=repo, reference=ref, repositoryName=repo,
                               imageIds=[image_id], **self._ids())
        for f in doc.get("failures") or []:
            if f.get("failureCode") == "ImageNotFound":
                return False
            raise RegistryError(self.name, f"ECR BatchDeleteImage: {f.get('failureCode')}: {f.get('failureReason')}",
                                repository=repo, reference=ref)
        return True   # no failure: it went (`imageIds` lists the tags removed; an untagged image has none)

    async def delete_manifest(self, repo: str, digest: str, tags: tuple[str, ...] = ()) -> bool:
        return await self._delete(repo, {"imageDigest": digest})

    async def delete_tag(self, repo: str, tag: str) -> bool:
        return await self._delete(repo, {"imageTag": tag})

