"""S3 fixtures: moto's server (PyPI `moto[server]`) as a real HTTP endpoint on loopback.

    s3_server      one `moto_server` process for the whole session; its endpoint URL
    s3_env         environment variables that point boto3/s3fs (and CLI subprocesses) at it
    s3_store       a store URL `s3://<fresh bucket>/regsweep` with the environment set for this test

s3_server and s3_env are session-scoped, global through tests/conftest.py; import s3_store.

boto3 and s3fs read the endpoint from `AWS_ENDPOINT_URL_S3` (botocore's service-specific endpoint
variable), so product code is configured exactly as a user configures it for MinIO or Ceph:
by environment, with no test-only switch.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from testbed.loopback import free_port

_buckets = itertools.count()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> str:
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/moto-api/", timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start (see {log.name})") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def s3_env(s3_server) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL_S3": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_store(s3_env, monkeypatch) -> str:
    """`s3://<bucket>/regsweep` in a bucket no other test uses; the environment points at moto."""
    import boto3

    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    bucket = f"regsweep-test-{os.getpid()}-{next(_buckets)}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"]).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/regsweep"
