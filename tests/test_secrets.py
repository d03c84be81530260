"""Secrets used by a whole snapshot → plan → sweep → explain → history journey reach nothing:
not stdout/stderr, the store (snapshot and plan tables, JSON, the journal, caches), the plan's
JSON export, nor the Prefect database (flow-run parameters, logs, artifacts: the server's SQLite
file itself is searched). The registry password, every bearer token the token service issued,
the Kubernetes bearer token and the kubeconfig's client key are looked for, raw and base64.
"""

from __future__ import annotations

import base64
import sqlite3
import time
from pathlib import Path

import trustme
import yaml

from tasks.store.store import Store
from testbed.kube import workload
from tests.support.registry import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support.sweeps import fresh, old
from tests.support.kube import kube_env  # noqa: F401 (fixtures)
from tests.support.registry import token_issuer  # noqa: F401 (fixtures)

KUBE_TOKEN = "kube-bearer-7f3a9c1e5d2b4a68-secret"


def _forms(secret: str) -> set[bytes]:
    raw = secret.encode()
    return {raw, base64.b64encode(raw), base64.b64encode(f"{REGISTRY_USER}:{secret}".encode())}


def test_no_secret_reaches_output_store_or_prefect(run_cli, token_registry, token_issuer, kube_env, tmp_path,
                                                   prefect_api_url):
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    repo = f"secrets/app-{tmp_path.name[-8:]}"
    with token_registry.client() as c:
        old(c, repo, "old-1"), old(c, repo, "old-2"), fresh(c, repo, "current")
    server = kube_env.server(token=KUBE_TOKEN)
    server.add(workload("Deployment", "shop", "web", [f"{token_registry.host}/{repo}:current"]))
    key = trustme.CA().issue_cert("regsweep-client").private_key_pem.bytes()
    kubeconfig = kube_env.kubeconfig({"prod": (server, KUBE_TOKEN)})
    doc = yaml.safe_load(kubeconfig.read_text())
    doc["users"][0]["user"]["client-key-data"] = base64.b64encode(key).decode()
    kubeconfig.write_text(yaml.safe_dump(doc))
    cfg = tmp_path / "regsweep.yaml"
    cfg.write_text(yaml.safe_dump({
        "store": str(tmp_path / "store"),
        "registry": {"url": token_registry.url, "repositories": [repo], "caFile": token_registry.ca_pem,
                     "allowInsecureCredentials": True,
                     "auth": {"username": REGISTRY_USER, "password_env": "REGSWEEP_SECRET_TEST_PASSWORD"}},
        "kubernetes": {"kubeconfig": str(kubeconfig)},
        "helm": {"enabled": True},
        "cleanup": {"disableGitHistoryBasedPolicy": True, "unlinkedImages": "delete"},
    }))
    # INFO: the CLI's own default (the test session quiets Prefect to WARNING), so run logs are stored
    env = {"REGSWEEP_SECRET_TEST_PASSWORD": REGISTRY_PASSWORD, "PREFECT_LOGGING_LEVEL": "INFO"}

    runs = [run_cli("snapshot", "--config", cfg, "--verbose", env=env),
            run_cli("plan", "--config", cfg, "--json", tmp_path / "plan.json", "--verbose", env=env)]
    plan = runs[-1].stdout.strip().splitlines()[-1]
    runs += [run_cli("sweep", "--config", cfg, "--plan", plan, "--yes", "--verbose", env=env),
             run_cli("explain", "--config", cfg, f"{repo}:old-1", env=env),
             run_cli("history", "--config", cfg, env=env)]
    assert [r.returncode for r in runs] == [0] * 5, [(r.returncode, r.stderr[-500:]) for r in runs]
    assert runs[2].stdout.strip().splitlines()[-1].startswith("deleted 2 manifests (")
    assert token_issuer.issued and server.requests   # the secrets were really used

    secrets = {"registry password": _forms(REGISTRY_PASSWORD), "kube token": _forms(KUBE_TOKEN),
               "client key": {key, base64.b64encode(key), key.splitlines()[1]}}
    for t in token_issuer.issued:
        secrets[f"registry token for {t.scopes}"] = _forms(t.token)

    places: dict[str, bytes] = {}
    for i, r in enumerate(runs):
        places[f"run {i} stdout"], places[f"run {i} stderr"] = r.stdout.encode(), r.stderr.encode()
    written = [p for p in (tmp_path / "store").rglob("*") if p.is_file()] + [tmp_path / "plan.json"]
    assert any(p.suffix == ".parquet" and "journal" in p.parts for p in written)   # the journal is searched
    for p in written:
        places[str(p.relative_to(tmp_path))] = p.read_bytes()
    db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    for p in db.parent.glob(db.name + "*"):      # the database and its WAL
        places[p.name] = p.read_bytes()
    rows: dict = {}
    for _ in range(600):   # the server writes the runs' logs in the background: wait until they are in
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            rows = {"flow-run parameters": con.execute("select parameters from flow_run").fetchall(),
                    "logs": con.execute("select message from log").fetchall(),
                    "artifacts": con.execute("select data, description from artifact").fetchall()}
        if all(rows.values()):
            break
        time.sleep(0.1)
    assert all(rows.values()), {k: len(v) for k, v in rows.items()}   # there is something to search
    assert any(str(tmp_path / "store") in str(p) for p in rows["flow-run parameters"])  # these runs' rows
    for name, values in rows.items():
        places[f"database {name}"] = repr(values).encode()

    leaks = [(what, where) for what, forms in secrets.items() for where, data in places.items()
             if any(f in data for f in forms)]
    assert leaks == []
