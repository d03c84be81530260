"""The regsweep configuration (docs/configuration.md) as pydantic models.

The same models are the Prefect flows' parameters, so every key is settable from the UI form;
field descriptions become its help text. Secrets are never values here: passwords are named by
environment variable or file, so that flow parameters stored by Prefect carry no credential.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from tasks.common.errors import ConfigError, InputFileError
from tasks.common.redact import remember
from tasks.config.policy import CleanupPolicy
from tasks.common.units import parse_duration

ALL_SOURCES = ("registry", "kubernetes", "helm", "git", "keeplist")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def read_secret(env: str | None, file: str | None, key: str, names: tuple[str, str], *,
                block: str | None = None, block_name: str = "token_block") -> str | None:
    """A secret read at the moment it is needed from the environment variable `env`, the file
    `file` or the Prefect Secret block `block`; None when none is set. `key` and `names` spell
    the keys for messages.

    The value is checked as it is read (`checked_secret`): one trailing line ending is taken off
    a file's value (`echo token > file` writes one), and then an empty value or any control
    character is a ConfigError naming the variable, file or block, never the value. The value
    is remembered for redaction (tasks/common/redact.py)."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"{key}.{names[0]}", f"environment variable {env} is not set")
        return checked_secret(value, f"{key}.{names[0]}", f"environment variable {env}")
    if file:
        try:
            value = Path(file).expanduser().read_text()
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
            raise ConfigError(f"{key}.{names[1]}", f"cannot read {file}: {why}") from None
        return checked_secret(_one_line_ending_off(value), f"{key}.{names[1]}", f"file {file}")
    if block:
        return checked_secret(_secret_block(block, f"{key}.{block_name}"), f"{key}.{block_name}",
                              f"Secret block {block!r}")
    return None


def _one_line_ending_off(value: str) -> str:
    # A file written by `echo`, an editor or a Kubernetes Secret created --from-file ends with a
    # line ending that is no part of the secret; only one is taken, anything else is refused.
    for ending in ("\r\n", "\n"):
        if value.endswith(ending):
            return value[:-len(ending)]
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def checked_secret(value: str, key: str, source: str) -> str:
    """`value` if it can be a secret, remembered for redaction; else a ConfigError naming `key`
    and `source` (the variable, file, block or docker config it came from), never the value.

    A control character (a trailing newline in an environment variable or a Secret block above
    all) would otherwise reach an HTTP header, where the HTTP library refuses it and quotes the
    whole value in its error, which then travels into logs and snapshot.json.
    """
    if not value:
        raise ConfigError(key, f"{source} is empty")
    bad = _CONTROL.search(value)
    if bad:
        # Remembered all the same: the value may already be in a message on another path.
        remember(value)
        for part in _CONTROL.split(value):
            remember(part)
        where = "ends with" if bad.start() == len(value.rstrip("\r\n")) else "contains"
        raise ConfigError(key, f"{source} {where} a control character ({_char_name(bad.group())}); "
                          "remove it from the stored secret (a trailing newline often comes from "
                          "`echo` or `kubectl create secret --from-file`)")
    remember(value)
    return value


def _char_name(c: str) -> str:
    return {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}.get(c, f"U+{ord(c):04X}")


class RegistryAuth(_Strict):
    username: str = Field(description="User name for Basic auth or the token service.")
    password_env: str | None = Field(None, description="Environment variable holding the password or token.")
    password_file: str | None = Field(None, description="File holding the password or token.")
    password_block: str | None = Field(None, description="Name of a Prefect Secret block holding the password or token.")

    def password(self) -> str:
        """Read the secret at the moment it is needed; never stored on the model."""
        value = read_secret(self.password_env, self.password_file, "registry.auth", ("password_env", "password_file"),
                            block=self.password_block, block_name="password_block")
        if value is None:
            raise ConfigError("registry.auth", "needs password_env, password_file or password_block")
        return value


def _secret_block(name: str, key: str) -> str:
    """The value of a Prefect Secret block, read from the Prefect API when the secret is needed."""
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(name, _sync=True).get())
    except ValueError as e:   # Prefect's "Unable to find block document named ..."
        raise ConfigError(key, f"no Secret block {name!r} on the Prefect server "
                          f"({str(e).splitlines()[0]})") from None


# --- native registry APIs (registry.api) ------------------------------------------------------

REGISTRY_APIS = ("distribution", "ecr", "gitlab", "harbor", "github", "dockerhub")


class _ApiToken(_Strict):
    """A native API's token, named by environment variable, file or Prefect Secret block (never a value here)."""

    token_env: str | None = Field(None, description="Environment variable holding the API token.")
    token_file: str | None = Field(None, description="File holding the API token.")
    token_block: str | None = Field(None, description="Name of a Prefect Secret block holding the API token.")
    pageSize: int = Field(100, ge=1, le=100, description="Items per list page.")

    def token(self, key: str) -> str | None:
        return read_secret(self.token_env, self.token_file, key, ("token_env", "token_file"), block=self.token_block)


def _service_url(v: str) -> str:
    """A registry API's URL: http(s), a host, no user info, query or fragment. The message never
    repeats the value, which may carry a secret (`https://user:token@host`)."""
    v = v.strip()
    try:
        u = urlsplit(v)
        u.port   # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError("is not a URL like https://host.example") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError("is not a URL like https://host.example (http or https)")
    if "@" in u.netloc:
        raise ValueError("must not carry user info (user:secret@): credentials are never written in a URL")
    if u.query or u.fragment or "?" in v or "#" in v:
        raise ValueError("must not carry a query or fragment")
    return v.rstrip("/")


#: A native API's (or ECR endpoint's) URL, checked by `_service_url`.
ServiceUrl = Annotated[str, AfterValidator(_service_url)]


class EcrSettings(_Strict):
    region: str | None = Field(None, description="AWS region; default: from the registry host, else the AWS default chain.")
    registryId: str | None = Field(None, description="AWS account id of the registry; default: from the registry host.")
    endpoint: ServiceUrl | None = Field(None, description="ECR API endpoint; default: AWS_ENDPOINT_URL_ECR, else AWS's own.")
    profile: str | None = Field(None, description="AWS profile; default: the AWS default credential chain.")
    pageSize: int = Field(1000, ge=1, le=1000, description="Items per DescribeRepositories/DescribeImages page.")


class GitLabSettings(_ApiToken):
    url: ServiceUrl = Field("https://gitlab.com", description="The GitLab instance (its API is <url>/api/v4).")
    project: str | None = Field(None, description="Project path or id whose container registry is swept.")
    group: str | None = Field(None, description="Group path or id: every project registry in it.")


class HarborSettings(_Strict):
    url: ServiceUrl | None = Field(None, description="Harbor's URL (API at <url>/api/v2.0); default: registry.url.")
    projects: list[str] = Field(default_factory=list, description="Projects to list; default: every project visible.")
    pageSize: int = Field(100, ge=1, le=100, description="Items per list page.")


class GitHubSettings(_ApiToken):
    owner: str = Field(description="Organisation or user owning the container packages.")
    ownerType: Literal["org", "user"] = Field("org", description="`org` or `user`.")
    url: ServiceUrl = Field("https://api.github.com", description="GitHub's REST API.")


class DockerHubSettings(_ApiToken):
    namespace: str = Field(description="Docker Hub user or organisation whose repositories are swept.")
    username: str | None = Field(None, description="Docker Hub user for the API login; default: registry.auth, else the docker config.")
    url: ServiceUrl = Field("https://hub.docker.com", description="Docker Hub's API.")


class RegistryConfig(_Strict):
    url: str = Field(description="Registry base URL, e.g. https://registry.example.com (OCI Distribution v2).")
    repositories: list[str] = Field(default_factory=list, description="Repository globs; empty = the whole catalog.")
    aliases: list[str] = Field(default_factory=list, description="Other spellings of this host in image references.")
    auth: RegistryAuth | None = Field(None, description="Credentials; default: ~/.docker/config.json (auths, credHelpers, credsStore).")
    insecure: bool = Field(False, description="Turn TLS verification off (never the default).")
    caFile: str | None = Field(None, description="Extra CA bundle (PEM) to trust for this registry.")
    concurrency: int = Field(16, ge=1, le=256, description="Parallel HTTP requests to the registry.")
    timeout: float = Field(30.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds per HTTP request.")
    api: Literal[REGISTRY_APIS] = Field("distribution", description="Which API lists and deletes: distribution | ecr | gitlab | harbor | github | dockerhub.")  # type: ignore[valid-type]
    ecr: EcrSettings | None = Field(None, description="AWS ECR settings (registry.api: ecr).")
    gitlab: GitLabSettings | None = Field(None, description="GitLab container registry API settings (registry.api: gitlab).")
    harbor: HarborSettings | None = Field(None, description="Harbor v2 API settings (registry.api: harbor).")
    github: GitHubSettings | None = Field(None, description="GitHub Packages settings (registry.api: github).")
    dockerhub: DockerHubSettings | None = Field(None, description="Docker Hub API settings (registry.api: dockerhub).")
    allowInsecureCredentials: bool = Field(
        False, validate_default=True,
        description="Send credentials to a plain http:// registry or API (in clear text); never the default.")

    @model_validator(mode="after")
    def _api_settings(self) -> "RegistryConfig":
        if self.api == "ecr" and self.ecr is None:
            self.ecr = EcrSettings()
        if self.api == "harbor" and self.harbor is None:
            self.harbor = HarborSettings()
        if self.api in ("gitlab", "github", "dockerhub") and getattr(self, self.api) is None:
            needs = {"gitlab": "project or group", "github": "owner", "dockerhub": "namespace"}[self.api]
            raise ValueError(f"`api: {self.api}` needs a `{self.api}:` section naming the {needs}")
        if self.api == "gitlab" and bool(self.gitlab.project) == bool(self.gitlab.group):
            raise ValueError("`gitlab:` needs exactly one of project or group")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        # The message never repeats the value: it may carry a secret (https://user:password@host).
        v = v.strip().rstrip("/")
        if re.match(r"^https?://[^/\s]*@", v):
            raise ValueError("must not carry user info (user:secret@): put credentials in registry.auth")
        if re.match(r"^https?://[^/\s]*[?#]", v):
            raise ValueError("must not carry a query or fragment")
        if not re.match(r"^https?://[^/\s?#@]+$", v):
            raise ValueError("is not a registry URL like https://registry.example.com")
        return v

    @field_validator("allowInsecureCredentials")
    @classmethod
    def _clear_text(cls, allowed: bool, info: ValidationInfo) -> bool:
        """Credentials configured for a plain http:// registry or API need the explicit opt-in."""
        if allowed:
            return allowed
        d = info.data
        plain = [f"registry.{key}" for key in ("url",) if str(d.get("url") or "").startswith("http://")
                 and d.get("auth") is not None]
        for api in ("gitlab", "github", "dockerhub", "harbor"):
            s = d.get(api)
            url = getattr(s, "url", None) or (d.get("url") if api == "harbor" else None)
            secret = (api == "harbor" and d.get("auth") is not None) or any(
                getattr(s, k, None) for k in ("token_env", "token_file", "token_block"))
            if s is not None and secret and str(url or "").startswith("http://"):
                plain.append(f"registry.{api}.url")
        if plain:
            raise ValueError(f"{plain[0]} is plain http:// and credentials are configured for it: they would travel "
                             "in clear text. Use https, or set registry.allowInsecureCredentials: true")
        return allowed

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
    # A refused git.url may hold a token: pydantic must not quote it back in its errors.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, hide_input_in_errors=True)

    path: str | None = Field(None, description="A local clone (not shallow).")
    # Before `url`, whose check reads it.
    allowInsecureTransport: bool = Field(False, description=(
        "Accept an http:// or git:// git.url. Off by default: anyone on the network path could then serve "
        "a history that decides which images are kept."))
    url: str | None = Field(None, description="A repository URL, cloned/fetched into `cache`: https://, ssh:// or "
                            "file://, with no credentials in it (no user info, no query string).")
    cache: str | None = Field(None, description="Cache directory for `url` clones (default: <store>/git-cache).")
    remote: str = Field("origin", description="Branches are refs/remotes/<remote>/* when present, else refs/heads/*.")

    @field_validator("url")
    @classmethod
    def _url_is_safe(cls, v: str | None, info: ValidationInfo) -> str | None:
        problem = git_url_problem(v, allow_insecure=bool(info.data.get("allowInsecureTransport"))) if v else None
        if problem:
            _remember_url_credentials(v)
            raise ValueError(problem)
        return v


#: git.url schemes that protect what is fetched; scp-like `host:path` is ssh.
_GIT_SCHEMES = ("https", "ssh", "git+ssh", "ssh+git", "file")
_INSECURE_GIT_SCHEMES = ("http", "git")


def _remember_url_credentials(url: str) -> None:
    # A refused URL may still be quoted by someone else (Prefect's own report of a flow
    # parameter it could not validate, say): its user info and query are masked from then on.
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    for secret in (parts.username, parts.password, parts.query, parts.fragment):
        remember(secret)
    for _key, value in parse_qsl(parts.query):
        remember(value)


def git_url_problem(url: str, *, allow_insecure: bool = False) -> str | None:
    """Why `url` cannot be git.url, in words that never quote it; None when it can.

    Credentials in the URL (user info such as `https://ghp_TOKEN@github.com/o/r.git`, or a query
    string such as `?private_token=`) are refused: the URL is stored in the cache clone's
    config, shown in progress lines and errors, and recorded in snapshot.json. An ssh user name
    alone (`ssh://git@host/r.git`, `git@host:r.git`) names an account, not a secret, and is kept.
    http:// and git:// need `allow_insecure`.
    """
    if "://" not in url:
        # git's other spellings: scp-like `[user@]host:path` (ssh), or a local path.
        host_part = url.split("/", 1)[0]
        if ":" in host_part and ":" in host_part.split("@", 1)[0] and "@" in host_part:
            return "must not contain a password (user:password@); use a URL that needs none"
        return None
    scheme = url.split("://", 1)[0].lower()
    if scheme in _INSECURE_GIT_SCHEMES and not allow_insecure:
        return (f"{scheme}:// fetches the history unauthenticated and in clear text (anyone on the network "
                "path can change which images are kept); use https:// or ssh://, or set "
                "git.allowInsecureTransport: true")
    if scheme not in _GIT_SCHEMES + _INSECURE_GIT_SCHEMES:
        return f"unsupported scheme {scheme}:// (use https://, ssh:// or file://)"
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return "is not a valid URL"
    if password is not None or (username is not None and "ssh" not in scheme):
        return ("must not contain credentials (user info before @): the URL is stored in the cache clone and "
                "shown in messages; use a URL that needs none (a read-only mirror, file://, or git.path on "
                "a clone you manage)")
    if parts.query or parts.fragment:
        return ("must not contain a query string or fragment (tokens such as ?private_token= travel in them); "
                "use a URL that needs no credentials")
    return None


class DumpFile(_Strict):
    """One offline dump (tasks/sources/kubernetes/dumps.py): objects read from a file instead of a live cluster."""

    file: str = Field(description="A `kubectl get ... -A -o json` output file (relative paths: to the config file).")
    context: str | None = Field(None, description="Context name recorded for its objects; default: the file name up to its first dot.")


def _dump_list(v: Any) -> Any:
    # `dumps: [prod.json]` is shorthand for `dumps: [{file: prod.json}]`.
    return [{"file": d} if isinstance(d, str) else d for d in v] if isinstance(v, list) else v


Dumps = Annotated[list[DumpFile], BeforeValidator(_dump_list)]


class CustomResource(_Strict):
    """A workload-bearing custom resource to scan besides the built-in kinds and the well-known ones."""

    group: str = Field(min_length=1, description="API group, e.g. `example.com`.")
    version: str = Field(min_length=1, description="API version served, e.g. `v1`.")
    resource: str = Field(min_length=1, description="Plural resource name, as in RBAC and URLs, e.g. `batchruns`.")
    kind: str | None = Field(None, description=(
        "Its kind, for dumps (default: every kind of the group whose plural is `resource`); live, discovery says."))


class KubernetesConfig(_Strict):
    kubeconfig: str | None = Field(None, description="Default: $KUBECONFIG, ~/.kube/config, in-cluster.")
    contexts: list[str] = Field(default_factory=list, description="Contexts to scan; default: the current one.")
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to scan; default: all.")
    timeout: float = Field(30.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds per API request.")
    pageSize: int = Field(500, ge=1, le=100_000, description="Objects per list page (limit/continue).")
    dumps: Dumps = Field(default_factory=list, description=(
        "Offline input: read workloads from these `kubectl get pods,deploy,rs,sts,ds,job,cronjob,rc -A -o json` "
        "dumps instead of a live cluster (the sweep's cluster re-check re-reads them)."))
    serviceAccount: str = Field("/var/run/secrets/kubernetes.io/serviceaccount", description=(
        "In-cluster only (no kubeconfig): the directory holding the mounted service-account `token` and `ca.crt`."))
    resources: list[CustomResource] = Field(default_factory=list, description=(
        "Custom resources to scan for images besides the built-in workload kinds and the well-known ones "
        "(Argo Workflows and Rollouts, Tekton, KEDA, Knative, OpenShift, Spark); skipped where the cluster does not serve them."))


class HelmConfig(_Strict):
    enabled: bool = Field(True, description="Scan Helm release history (Secret and ConfigMap drivers).")
    keepRevisions: int = Field(0, ge=0, le=1_000_000, description="0 = every stored revision is a rollback target; N = the newest N per release, plus its last deployed one.")
    dumps: Dumps = Field(default_factory=list, description=(
        "Offline input: read release history from these `kubectl get secrets,configmaps -A -l owner=helm -o json` "
        "dumps instead of a live cluster."))
    maxReleaseBytes: int = Field(64 * 2**20, ge=1024, le=2**34, description=(
        "Largest decompressed release record read (bytes; default 64 MiB). Anyone who can create a Secret can "
        "store a release; a larger one fails the Helm source (the snapshot is incomplete) instead of the worker's memory."))


class SweepConfig(_Strict):
    maxPlanAge: str = Field("24h", description="Refuse plans older than this (Go duration).")
    maxDeletions: int = Field(100, ge=0, le=10**9, description="Approval given up front (--yes) covers at most this many deletions.")
    recheckCluster: bool = Field(True, description="Scan clusters again just before deleting; skip anything now in use.")
    approvalTimeout: str = Field("1h", description="How long a sweep waits for approval before deleting nothing.")
    concurrency: int = Field(8, ge=1, le=64, description="Parallel DELETE requests.")
    upFrontApproval: bool = Field(False, description="Deployment runs may take approval up front (approve=true) within "
                                  "maxDeletions. Honoured only in a configuration the worker holds; the command line's "
                                  "--yes needs no such key.")

    @field_validator("maxPlanAge", "approvalTimeout")
    @classmethod
    def _dur(cls, v: str) -> str:
        parse_duration(v)
        return v


class DaskConfig(_Strict):
    address: str | None = Field(None, description="A running Dask scheduler to use (tcp://host:8786, e.g. a dask-kubernetes "
                                "cluster's); default: a LocalCluster of worker processes started for the run.")
    workers: int = Field(2, ge=1, le=256, description="Worker processes of the LocalCluster started when no address is given.")
    batchRepositories: int = Field(50, ge=1, le=100_000, description="Repositories per registry-batch task.")


class RunnerConfig(_Strict):
    kind: Literal["single", "dask"] = Field("single", description="single: the registry scan runs in the snapshot's own "
                                            "process; dask: it fans out as repository-batch tasks on a Dask cluster.")
    dask: DaskConfig = Field(default_factory=DaskConfig, description="The Dask cluster, for kind: dask.")


class KeepConfig(_Strict):
    lists: list[str] = Field(default_factory=list, description=(
        "Keep lists: files of image references to keep, one per line (werf's --keep-list format: `#` comments, "
        "blank lines), for images used outside the scanned clusters. Local paths (relative to the config file) or "
        "fsspec URLs (s3://bucket/keep.txt). Read into each snapshot; one that cannot be read makes it incomplete."))

    @field_validator("lists")
    @classmethod
    def _lists(cls, v: list[str]) -> list[str]:
        if any(not p.strip() for p in v):
            raise ValueError("a keep list is named by a path or URL, not an empty string")
        return [p.strip() for p in v]


class RegsweepConfig(_Strict):
    """Everything one regsweep run needs; the YAML file maps onto it key for key."""

    # Refused values (a URL carrying a token) are never quoted back in pydantic's errors.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, hide_input_in_errors=True)

    store: str = Field("./var/regsweep", description="Snapshots and plans: a local path or an fsspec URL (s3://bucket/prefix).")
    registry: RegistryConfig
    link: LinkConfig = Field(default_factory=LinkConfig)
    git: GitConfig | None = Field(None, description="Git repository whose history decides what developers still need.")
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    helm: HelmConfig = Field(default_factory=HelmConfig)
    cleanup: CleanupPolicy = Field(default_factory=CleanupPolicy)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig, description="Where the snapshot's registry scan runs.")
    keep: KeepConfig = Field(default_factory=KeepConfig, description="Images to keep whatever the policy says.")

    def enabled_sources(self) -> list[str]:
        """Sources this configuration leaves something to do for (others are skipped, not failed)."""
        out = ["registry"]
        if not self.cleanup.disableKubernetesBasedPolicy:
            out.append("kubernetes")
        if self.helm.enabled:
            out.append("helm")
        if not self.cleanup.disableGitHistoryBasedPolicy:
            out.append("git")
        if self.keep.lists:
            out.append("keeplist")
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


def read_yaml_documents(path: str | Path, role: str) -> list:
    """Every YAML document of a file; errors say which file it is (`role`: "config", "policy")."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as e:
        raise InputFileError(role, f"cannot read {path}: {e.strerror}") from None
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise InputFileError(role, f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None


def load_config(path: str | Path) -> RegsweepConfig:
    """Read and validate a YAML configuration file."""
    docs = [d for d in read_yaml_documents(path, "config") if d is not None]
    if len(docs) > 1:
        raise InputFileError("config", f"{path} holds {len(docs)} YAML documents; a configuration is one")
    data = docs[0] if docs else None
    cfg = parse_config(data if data is not None else {})
    return _anchor_paths(cfg, Path(path).expanduser().parent)


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
    for api in ("gitlab", "github", "dockerhub"):
        if reg.get(api) and reg[api].get("token_file"):
            reg[api]["token_file"] = anchor(reg[api]["token_file"])
    for key in ("path", "cache"):
        if data.get("git") and data["git"].get(key):
            data["git"][key] = anchor(data["git"][key])
    if data.get("kubernetes", {}).get("kubeconfig"):
        data["kubernetes"]["kubeconfig"] = anchor(data["kubernetes"]["kubeconfig"])
    for section in ("kubernetes", "helm"):
        for d in (data.get(section) or {}).get("dumps") or ():
            d["file"] = anchor(d["file"])
    if data.get("keep", {}).get("lists"):
        data["keep"]["lists"] = [anchor(p) for p in data["keep"]["lists"]]
    return RegsweepConfig.model_validate(data)
