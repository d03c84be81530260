"""The regsweep configuration (README "Configuration") as pydantic models.

The same models are the Prefect flows' parameters, so every key is settable from the UI form;
field descriptions become its help text. Secrets are never values here: passwords are named by
environment variable or file, so that flow parameters stored by Prefect carry no credential.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import ConfigError
from tasks.policy import CleanupPolicy
from tasks.units import parse_duration

ALL_SOURCES = ("registry", "kubernetes", "helm", "git")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RegistryAuth(_Strict):
    username: str = Field(description="User name for Basic auth or the token service.")
    password_env: str | None = Field(None, description="Environment variable holding the password or token.")
    password_file: str | None = Field(None, description="File holding the password or token.")

    def password(self) -> str:
        """Read the secret at the moment it is needed; never stored on the model."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError("registry.auth.password_env",
                                  f"environment variable {self.password_env} is not set")
            return value
        if self.password_file:
            try:
                return Path(self.password_file).expanduser().read_text().strip()
            except OSError as e:
                raise ConfigError("registry.auth.password_file", f"cannot read {self.password_file}: {e.strerror}") from None
        raise ConfigError("registry.auth", "needs password_env or password_file")


class RegistryConfig(_Strict):
    url: str = Field(description="Registry base URL, e.g. https://registry.example.com (OCI Distribution v2).")
    repositories: list[str] = Field(default_factory=list, description="Repository globs; empty = the whole catalog.")
    aliases: list[str] = Field(default_factory=list, description="Other spellings of this host in image references.")
    auth: RegistryAuth | None = Field(None, description="Credentials; default: ~/.docker/config.json (auths, credHelpers, credsStore).")
    insecure: bool = Field(False, description="Turn TLS verification off (never the default).")
    caFile: str | None = Field(None, description="Extra CA bundle (PEM) to trust for this registry.")
    concurrency: int = Field(16, ge=1, le=256, description="Parallel HTTP requests to the registry.")
    timeout: float = Field(30.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds per HTTP request.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+$", v):
            raise ValueError(f"{v!r} is not a registry URL like https://registry.example.com")
        return v

    @property
    def host(self) -> str:
        """host[:port] as written in the URL."""
        return self.url.split("://", 1)[1]


class LinkConfig(_Strict):
    tagPatterns: list[str] = Field(default_factory=list,
                                   description="Regexes with a named group `commit` linking tags to commits.")

    @field_validator("tagPatterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                rx = re.compile(p)
            except re.error as e:
                raise ValueError(f"bad regular expression {p!r}: {e}") from None
            if "commit" not in rx.groupindex:
                raise ValueError(f"{p!r} has no named group (?P<commit>...)")
        return v


class GitConfig(_Strict):
    path: str | None = Field(None, description="A local clone (not shallow).")
    url: str | None = Field(None, description="A repository URL, cloned/fetched into `cache`.")
    cache: str | None = Field(None, description="Cache directory for `url` clones (default: <store>/git-cache).")
    remote: str = Field("origin", description="Branches are refs/remotes/<remote>/* when present, else refs/heads/*.")


class KubernetesConfig(_Strict):
    kubeconfig: str | None = Field(None, description="Default: $KUBECONFIG, ~/.kube/config, in-cluster.")
    contexts: list[str] = Field(default_factory=list, description="Contexts to scan; default: the current one.")
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to scan; default: all.")
    timeout: float = Field(30.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds per API request.")
    pageSize: int = Field(500, ge=1, le=100_000, description="Objects per list page (limit/continue).")


class HelmConfig(_Strict):
    enabled: bool = Field(True, description="Scan Helm release history (Secret and ConfigMap drivers).")
    keepRevisions: int = Field(0, ge=0, le=1_000_000, description="0 = every stored revision is a rollback target; N = the newest N per release, plus its last deployed one.")


class SweepConfig(_Strict):
    maxPlanAge: str = Field("24h", description="Refuse plans older than this (Go duration).")
    maxDeletions: int = Field(100, ge=0, le=10**9, description="Approval given up front (--yes) covers at most this many deletions.")
    recheckCluster: bool = Field(True, description="Scan clusters again just before deleting; skip anything now in use.")
    approvalTimeout: str = Field("1h", description="How long a sweep waits for approval before deleting nothing.")
    concurrency: int = Field(8, ge=1, le=64, description="Parallel DELETE requests.")

    @field_validator("maxPlanAge", "approvalTimeout")
    @classmethod
    def _dur(cls, v: str) -> str:
        parse_duration(v)
        return v


class RegsweepConfig(_Strict):
    """Everything one regsweep run needs; the YAML file maps onto it key for key."""

    store: str = Field("./var/regsweep", description="Snapshots and plans: a local path or an fsspec URL (s3://bucket/prefix).")
    registry: RegistryConfig
    link: LinkConfig = Field(default_factory=LinkConfig)
    git: GitConfig | None = Field(None, description="Git repository whose history decides what developers still need.")
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    helm: HelmConfig = Field(default_factory=HelmConfig)
    cleanup: CleanupPolicy = Field(default_factory=CleanupPolicy)
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    def enabled_sources(self) -> list[str]:
        """Sources this configuration leaves something to do for (others are skipped, not failed)."""
        out = ["registry"]
        if not self.cleanup.disableKubernetesBasedPolicy:
            out.append("kubernetes")
        if self.helm.enabled:
            out.append("helm")
        if not self.cleanup.disableGitHistoryBasedPolicy:
            out.append("git")
        return out


def git_section_problem(git: GitConfig | None, *, full_keys: bool = False) -> str | None:
    """Why `git:` cannot feed the git source; None when it can.

    The one home of this rule: parse_config refuses a section that is there but unusable, a
    snapshot that needs git refuses to start without one (a missing section is no load-time
    error: commands that read no git must work without it), and the git source refuses flow
    parameters that skipped both. `full_keys` spells keys from the top (git.path), for messages
    that do not start with the `git` key.
    """
    if git is None or not (git.path or git.url):
        return ("required by the git history policies: set git.path (a clone) or git.url, "
                "or set cleanup.disableGitHistoryBasedPolicy: true")
    if git.path and git.url:
        path, url = ("git.path", "git.url") if full_keys else ("`path`", "`url`")
        return f"set {path} or {url}, not both"
    return None


def _key_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif str(item).startswith(("function-", "function_")):
            continue
        else:
            parts.append(("." if parts else "") + ("in" if item == "in_" else str(item)))
    return "".join(parts)


def config_error_from(e: ValidationError, prefix: str = "") -> ConfigError:
    """Turn pydantic's report into one line naming the first offending key."""
    err = e.errors()[0]
    key = _key_path(err["loc"])
    if prefix:
        key = f"{prefix}.{key}" if key else prefix
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    return ConfigError(key or "config", msg)


def parse_config(data: Any) -> RegsweepConfig:
    if not isinstance(data, dict):
        raise ConfigError("config", "must be a YAML mapping")
    try:
        cfg = RegsweepConfig.model_validate(data)
    except ValidationError as e:
        raise config_error_from(e) from None
    if not cfg.cleanup.disableGitHistoryBasedPolicy and cfg.git is not None:
        problem = git_section_problem(cfg.git)
        if problem:
            raise ConfigError("git", problem)
    return cfg


def load_config(path: str | Path) -> RegsweepConfig:
    """Read and validate a YAML configuration file."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("--config", f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    cfg = parse_config(data if data is not None else {})
    return _anchor_paths(cfg, p.parent)


def _anchor_paths(cfg: RegsweepConfig, base: Path) -> RegsweepConfig:
    """Relative paths in a config file are relative to that file, so scheduled runs, the CLI
    and a worker started elsewhere all find the same store, clone and credentials."""

    def anchor(value: str | None) -> str | None:
        if value is None or "://" in value:
            return value
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())

    data = cfg.model_dump(by_alias=True, exclude_unset=True)
    data["store"] = anchor(cfg.store)
    reg = data["registry"]
    for key in ("caFile",):
        if reg.get(key):
            reg[key] = anchor(reg[key])
    if reg.get("auth") and reg["auth"].get("password_file"):
        reg["auth"]["password_file"] = anchor(reg["auth"]["password_file"])
    for key in ("path", "cache"):
        if data.get("git") and data["git"].get(key):
            data["git"][key] = anchor(data["git"][key])
    if data.get("kubernetes", {}).get("kubeconfig"):
        data["kubernetes"]["kubeconfig"] = anchor(data["kubernetes"]["kubeconfig"])
    return RegsweepConfig.model_validate(data)
