"""Typed errors, each carrying what a user needs to act on it.

    RegsweepError                    exit code 1 unless stated
    ├── ConfigError                  exit 2: a configuration key or argument is wrong
    │   └── InputFileError           a file the user named (configuration, policy, output) is unusable
    ├── StoreError                   the snapshot/plan store cannot be read or written
    │   └── NotFound                 what was asked for is not there (a snapshot, a plan, a file)
    ├── SourceError                  a source could not be read completely (fail closed)
    │   ├── RegistryError            names the registry (and repository / reference); retryable or not
    │   │   ├── RegistryAuthError    exit 2: 401/403, wrong or missing credentials
    │   │   ├── RegistryUnreachable  connection refused, DNS, TLS handshake, timeouts
    │   │   ├── ManifestUnknown      404 on a manifest (a tag deleted since listing)
    │   │   └── UnsupportedOperation 405 / UNSUPPORTED (deletion disabled, no tag delete)
    │   ├── ClusterError             names the context, namespace and kind
    │   ├── HelmError                names the release that could not be decoded
    │   └── GitError                 names the repository path or URL
    ├── SnapshotIncomplete           a snapshot was published, but some source could not be read
    ├── PlanRefused                  a sweep will not act on this plan (incomplete, too old)
    ├── SweepLocked                  another sweep of the same registry is running
    ├── SweepNotApproved             rejected, approval timed out, or beyond --max-deletions
    └── SweepFailed                  deletions failed, or a re-check could not run

Expected failures are turned into a one-line message and an exit code by the CLI;
anything outside this tree is a bug and keeps its traceback. Every message passes through
tasks/common/redact.py on its way out, which masks every secret the process has read.
"""

from __future__ import annotations

from tasks.common.redact import redact


class RegsweepError(Exception):
    """Base of every error regsweep raises on purpose."""

    exit_code = 1

    def __str__(self) -> str:
        # Messages quote what others said (a registry, a protocol library, a helper program):
        # mask any secret that slipped into them, wherever the message ends up.
        return redact(super().__str__())


class ConfigError(RegsweepError):
    """Bad configuration or bad usage; the message names the key or argument."""

    exit_code = 2

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class InputFileError(ConfigError):
    """A file the user named cannot be read, parsed or written; `role` says which file it is
    ("config", "policy", "json", "chart"), so the command line names the argument that gave it."""

    def __init__(self, role: str, problem: str):
        self.role = role
        super().__init__(role, problem)


class StoreError(RegsweepError):
    """The store (local path or fsspec URL) could not be read or written."""


class NotFound(StoreError):
    """What was asked for is not there: the only "absent" signal of the store (and of a plan's rows).

    `what` says which kind of thing ("snapshot", "plan", "file", "image"), so the command line can
    name the argument that asked for it (flows/cli.py)."""

    def __init__(self, message: str, what: str = "file"):
        self.what = what
        super().__init__(message)


class SourceError(RegsweepError):
    """A source could not be read completely; the snapshot must be marked incomplete."""

    source = "unknown"


class RegistryError(SourceError):
    """A registry answered with an error or could not be reached (tasks/registry/errors.py decides which).

    `status` is the HTTP status and `codes` the OCI error codes of the answer, when there was one;
    `retryable` says whether a later attempt may succeed (429, 502-504, a dropped connection) and
    `retry_after` how many seconds the registry asked us to wait first, when it said.
    """

    source = "registry"

    def __init__(self, registry: str, message: str, *, repository: str | None = None,
                 reference: str | None = None, status: int | None = None, codes: tuple[str, ...] = (),
                 retryable: bool = False, retry_after: float | None = None):
        self.registry = registry
        self.repository = repository
        self.reference = reference
        self.status = status
        self.codes = tuple(codes)
        self.retryable = retryable
        self.retry_after = retry_after
        where = registry
        if repository:
            where += f"/{repository}"
            if reference:
                where += ("@" if reference.startswith("sha256:") else ":") + reference
        super().__init__(f"registry {where}: {message}")


class RegistryAuthError(RegistryError):
    exit_code = 2


class RegistryUnreachable(RegistryError):
    pass


class ManifestUnknown(RegistryError):
    pass


class UnsupportedOperation(RegistryError):
    pass


class ClusterError(SourceError):
    source = "kubernetes"

    def __init__(self, message: str, *, context: str | None = None,
                 namespace: str | None = None, kind: str | None = None):
        self.context, self.namespace, self.kind = context, namespace, kind
        where = ", ".join(f"{k} {v}" for k, v in
                          (("context", context), ("namespace", namespace), ("kind", kind)) if v)
        super().__init__(f"kubernetes ({where}): {message}" if where else f"kubernetes: {message}")


class HelmError(SourceError):
    source = "helm"

    def __init__(self, message: str, *, context: str | None = None,
                 namespace: str | None = None, release: str | None = None):
        self.context, self.namespace, self.release = context, namespace, release
        where = "/".join(x for x in (context, namespace, release) if x)
        super().__init__(f"helm release {where}: {message}" if where else f"helm: {message}")


class GitError(SourceError):
    source = "git"

    def __init__(self, repo: str, message: str):
        self.repo = repo
        super().__init__(f"git {repo}: {message}")


class SnapshotIncomplete(RegsweepError):
    """Raised after publishing a snapshot some enabled source could not read completely.

    The snapshot is kept (history uses it) and no plan from it deletes anything; `failures`
    maps each failed source to its error.
    """

    def __init__(self, snapshot_id: str, failures: dict[str, str]):
        self.snapshot_id = snapshot_id
        self.failures = failures
        super().__init__(f"snapshot {snapshot_id} is incomplete: " + "; ".join(failures.values()))


class PlanRefused(RegsweepError):
    """The sweep will not act on this plan."""


class SweepLocked(RegsweepError):
    """Another sweep of the same registry holds the lock."""


class SweepNotApproved(RegsweepError):
    """Nobody approved the deletions (rejected, timed out, or over the up-front limit); nothing was deleted."""


class SweepFailed(RegsweepError):
    """A sweep could not finish: some deletions failed, or a re-check could not run.

    `report` (a tasks.sweep.SweepReport) is set when deletions were attempted.
    """

    def __init__(self, message: str, report=None):
        self.report = report
        super().__init__(message)
