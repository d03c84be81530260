"""The `regsweep` command line: thin wrappers that run the same Prefect flows a deployment runs.

Heavy modules (prefect, pandas, pyarrow) are imported inside commands so `regsweep --help`
answers at once. Expected failures become one line on stderr and an exit code (README "The
commands"): 0 success, 1 the run failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from flows.prefect_env import set_cli_defaults

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Keep a container registry lean without breaking deployments, rollbacks or work in progress.")

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="regsweep YAML configuration file.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's run logs.")]


def _fail(message: str, code: int) -> None:
    typer.echo(f"regsweep: error: {message}", err=True)
    raise typer.Exit(code)


#: The one place domain errors meet the command line's words: which argument asked for what a
#: NotFound says is missing, and which argument named a file an InputFileError says is unusable.
ARGUMENT_OF_MISSING = {"snapshot": "--snapshot", "plan": "--plan", "image": "IMAGE_REF", "sweep": "--sweep"}
ARGUMENT_OF_FILE = {"config": "--config", "policy": "--policy", "json": "--json", "chart": "--chart"}


def _run(fn, *args, **kwargs):
    """Run a command body, mapping regsweep's typed errors to a message and an exit code."""
    from tasks.common.errors import InputFileError, NotFound, RegsweepError

    try:
        return fn(*args, **kwargs)
    except NotFound as e:
        # asked for by an argument: bad usage (2); anything else missing is a failed run (1)
        arg = ARGUMENT_OF_MISSING.get(e.what)
        _fail(f"{arg}: {e}" if arg else str(e), 2 if arg else e.exit_code)
    except InputFileError as e:
        _fail(f"{ARGUMENT_OF_FILE.get(e.role, e.role)}: {e.problem}", e.exit_code)
    except RegsweepError as e:
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except RuntimeError as e:
        # Prefect's own words when PREFECT_API_URL names a server that is down: expected, not a bug
        if "Failed to reach API at" not in str(e):
            raise
        _fail(f"cannot reach the Prefect API: {e}; start that server, or unset PREFECT_API_URL "
              "to run on a temporary local one", 1)


def _config(path: str):
    from tasks.config.models import load_config

    return load_config(path)


def _sources(option: str | None) -> list[str] | None:
    """--sources as a list of source names (None: every enabled one)."""
    from tasks.config.models import ALL_SOURCES
    from tasks.common.errors import ConfigError

    chosen = [s.strip() for s in option.split(",") if s.strip()] if option else None
    for s in chosen or []:
        if s not in ALL_SOURCES:
            raise ConfigError("--sources", f"unknown source {s!r} (choose from {', '.join(ALL_SOURCES)})")
    return chosen


def _since(option: str | None):
    """--since as an aware datetime (a date alone is midnight UTC)."""
    from datetime import datetime, timezone

    from tasks.common.errors import ConfigError

    if not option:
        return None
    try:
        when = datetime.fromisoformat(option)
    except ValueError:
        raise ConfigError("--since", f"{option!r} is not a date (YYYY-MM-DD or ISO 8601)") from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


@app.command()
def snapshot(
    config: ConfigOpt,
    sources: Annotated[Optional[str], typer.Option(help="Comma-separated subset of registry,kubernetes,helm,git,keeplist.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Take a snapshot of every enabled source; prints the snapshot id last."""
    set_cli_defaults(verbose)

    def body():
        from tasks.config.models import ALL_SOURCES

        cfg = _config(config)
        chosen = _sources(sources)
        from tasks.snapshot.take import check_sources, select_sources

        selected = select_sources(cfg, chosen)
        check_sources(cfg, selected)
        if selected["kubernetes"] or selected["helm"]:
            from tasks.sources.kubernetes.dumps import preflight as cluster_preflight

            # a typo in a context name or a dump's file name is exit 2, not an incomplete snapshot
            cluster_preflight(cfg, selected)
        if "registry" in (chosen or ALL_SOURCES):
            from tasks.sources.registry import preflight

            # Wrong credentials are the user's to fix (exit 2, one line): learn it from one request
            # before starting Prefect, rather than publishing a snapshot that says so.
            preflight(cfg.registry)
        from flows.snapshot import snapshot_flow
        from tasks.common.errors import SnapshotIncomplete
        from tasks.common.progress import terminal_progress

        try:
            with terminal_progress():
                sid = snapshot_flow(config=cfg, sources=chosen)
        except SnapshotIncomplete as e:
            for err in e.failures.values():
                typer.echo(f"regsweep: error: {err}", err=True)
            _missing_line(cfg, e.snapshot_id)
            typer.echo(f"regsweep: snapshot {e.snapshot_id} is incomplete; no plan made from it will delete anything", err=True)
            typer.echo(e.snapshot_id)
            raise typer.Exit(1)
        from tasks.store.store import Store

        _missing_line(cfg, sid)
        typer.echo(f"snapshot written to {Store(cfg.store).path('snapshots', sid)}", err=True)
        typer.echo(sid)

    _run(body)


def _missing_line(cfg, sid: str) -> None:
    """The snapshot's images in use that the registry does not have, as one line on stderr (none
    when nothing is missing)."""
    from tasks.snapshot.missing import summary_line
    from tasks.store.store import Store

    line = summary_line(Store(cfg.store).snapshots.meta(sid).get("missing"))
    if line:
        typer.echo(f"regsweep: warning: {line} (snapshot table missing.parquet lists each)", err=True)


def _reclaim_text(meta: dict) -> str:
    """`12.3 MB reclaimable, 80.1 MB of image sizes`: the true figure first (docs/store-format.md)."""
    from tasks.common.units import human_bytes

    images = f"{human_bytes(meta['image_bytes_deleted'])} of image sizes"
    if meta.get("bytes_reclaimable") is None:
        return f"{images}; reclaimable unknown: snapshot has no blob table"
    return f"{human_bytes(meta['bytes_reclaimable'])} reclaimable by garbage collection, {images}"


def _cannot_delete(meta: dict, registry: str) -> str | None:
    """Why the registry cannot delete, as its probe recorded with the plan; None when it can."""
    from tasks.registry.capabilities import Capabilities, cannot_delete

    caps = Capabilities.from_json(meta.get("registry_capabilities"))
    return cannot_delete(caps, registry) if caps else None


@app.command()
def plan(
    config: ConfigOpt,
    snapshot: Annotated[str, typer.Option("--snapshot", help="Snapshot id to evaluate, or 'latest'.")] = "latest",
    json_path: Annotated[Optional[str], typer.Option("--json", help="Also write the plan's rows to this file as a JSON array.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Decide keep or delete for every tag of a snapshot; prints the plan id last."""
    set_cli_defaults(verbose)

    def body():
        from tasks.common.errors import InputFileError
        from tasks.store.store import Store

        cfg = _config(config)
        store = Store(cfg.store)
        sid = store.snapshots.resolve(snapshot)   # an unknown id is bad usage: said before Prefect starts
        from flows.plan import plan_flow
        from tasks.plan.render import write_plan_json

        pid = plan_flow(config=cfg, snapshot=sid)
        meta = store.plans.meta(pid)
        if json_path:
            try:
                n = write_plan_json(store, pid, json_path)
            except OSError as e:
                raise InputFileError("json", f"cannot write {json_path}: {e.strerror}") from None
            typer.echo(f"{n} rows written to {json_path}", err=True)
        typer.echo(f"plan {pid} of snapshot {sid}: {meta['keep']} keep, {meta['delete']} delete "
                   f"({_reclaim_text(meta)})", err=True)
        for problem in meta["problems"]:
            typer.echo(f"regsweep: warning: {problem}; this plan deletes nothing", err=True)
        refusal = _cannot_delete(meta, cfg.registry.url)
        if refusal and meta["delete"]:
            typer.echo(f"regsweep: warning: {refusal}; a sweep of this plan would delete nothing", err=True)
        typer.echo(pid)

    _run(body)


@app.command()
def explain(
    config: ConfigOpt,
    image_ref: Annotated[str, typer.Argument(metavar="IMAGE_REF", help="host/repo:tag, repo:tag or repo@sha256:...")],
    plan: Annotated[str, typer.Option("--plan", help="Plan id, or 'latest'.")] = "latest",
) -> None:
    """Why a tag is kept or deleted, with every reason; prints the decision last."""

    def body():
        from tasks.plan.explain import explain as explain_ref

        for line in explain_ref(_config(config), image_ref, plan):  # reads the stored plan: no Prefect
            typer.echo(line)

    _run(body)


@app.command()
def history(
    config: ConfigOpt,
    since: Annotated[Optional[str], typer.Option(help="Only snapshots at or after this date (YYYY-MM-DD or ISO 8601).")] = None,
    chart: Annotated[Optional[str], typer.Option(help="Also write a PNG chart of growth to this path.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Repositories in the top-by-growth table and chart.")] = 10,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Also write the report as JSON to this path.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Report registry growth from every snapshot in the store: sizes, churn, growth per day, projection."""
    set_cli_defaults(verbose)

    def body():
        cfg, when = _config(config), _since(since)   # bad usage is exit 2 before Prefect starts
        from flows.history import growth_flow
        from tasks.history.charts import growth_chart
        from tasks.history.growth import render_text, to_json

        report = growth_flow(config=cfg, since=when, top=top)
        if json_path:
            _write_json(json_path, to_json(report, top))
        typer.echo(render_text(report, top))
        if chart:
            growth_chart(report, chart, top)
            typer.echo(f"chart written to {chart}", err=True)

    _run(body)


def _write_json(path: str, data) -> None:
    import json

    from tasks.common.errors import InputFileError

    try:
        with open(path, "w") as f:
            json.dump(data, f, indent=1, default=str)
    except OSError as e:
        raise InputFileError("json", f"cannot write {path}: {e.strerror}") from None


@app.command()
def whatif(
    config: ConfigOpt,
    policy: Annotated[str, typer.Option("--policy", help="A werf.yaml or regsweep config whose `cleanup:` section is the candidate.")],
    since: Annotated[Optional[str], typer.Option(help="Only snapshots at or after this date (YYYY-MM-DD or ISO 8601).")] = None,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Also write the result as JSON to this path.")] = None,
    chart: Annotated[Optional[str], typer.Option(help="Also write a PNG of current vs candidate to this path.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Replay a candidate cleanup policy over every complete snapshot next to the current one:
    deletions, reclaimable bytes, and regrets (tags it would have deleted that a later snapshot needed)."""
    set_cli_defaults(verbose)

    def body():
        from tasks.history.whatif import load_policy

        cfg, when, candidate = _config(config), _since(since), load_policy(policy)
        from flows.history import whatif_flow
        from tasks.history.charts import whatif_chart
        from tasks.history.whatif import render_text

        result = whatif_flow(config=cfg, candidate=candidate, since=when)
        if json_path:
            _write_json(json_path, result.to_json())
        typer.echo(render_text(result))
        if chart:
            whatif_chart(result, chart)
            typer.echo(f"chart written to {chart}", err=True)

    _run(body)


@app.command()
def sweep(
    config: ConfigOpt,
    plan: Annotated[str, typer.Option("--plan", help="Plan id to act on, or 'latest'.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Re-check and report what would be deleted; delete nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Approve up front (no pause), within --max-deletions.")] = False,
    max_deletions: Annotated[Optional[int], typer.Option("--max-deletions", min=0, help="Most deletions --yes covers (default: sweep.maxDeletions).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Delete what a plan decided, after approval and fresh re-checks; prints a one-line result last.

    Without --yes the run pauses until someone approves or rejects it in the Prefect UI.
    """
    set_cli_defaults(verbose)

    def body():
        from tasks.common.errors import PlanRefused, StoreError, SweepFailed, SweepLocked, SweepNotApproved
        from tasks.store.store import Store

        cfg = _config(config)
        # an unknown plan id is bad usage, as in `plan --snapshot`: said before Prefect starts
        plan_id = Store(cfg.store).plans.resolve(plan)
        from flows.sweep import sweep_flow
        from tasks.common.progress import terminal_progress

        try:
            with terminal_progress():
                result = sweep_flow(config=cfg, plan=plan_id, dry_run=dry_run, approve=yes, max_deletions=max_deletions)
        except (PlanRefused, SweepLocked) as e:
            # Scripts read the last stdout line: a refusal is a result too, not just a stderr note.
            typer.echo(f"regsweep: error: {e}", err=True)
            typer.echo("refused: deleted nothing")
            raise typer.Exit(1)
        except SweepFailed as e:
            typer.echo(f"regsweep: error: {e}", err=True)
            typer.echo(e.report.summary() if e.report is not None else "failed: deleted nothing")
            raise typer.Exit(1)
        except SweepNotApproved as e:
            typer.echo(f"regsweep: error: {e}", err=True)
            typer.echo("not approved: deleted nothing")
            raise typer.Exit(1)
        except StoreError as e:
            # Before the lock is held nothing can have gone; after it, the journal is the record.
            typer.echo(f"regsweep: error: {e}", err=True)
            typer.echo(f"failed: store error; journal/{plan_id} in the store records every deletion made")
            raise typer.Exit(1)
        typer.echo(result["summary"])

    _run(body)


@app.command()
def restore(
    config: ConfigOpt,
    sweep: Annotated[str, typer.Option("--sweep", help="The sweep to undo: the plan id it acted on (as its report names it).")],
    repository: Annotated[Optional[str], typer.Option("--repository", help="Only what was deleted from this repository.")] = None,
    tag: Annotated[Optional[str], typer.Option("--tag", help="Only the manifest that carried this tag (with what went along with it), and only this tag.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Undo a sweep until the registry's garbage collector runs: re-upload its deleted manifests and tags
    where every blob is still there, never overwriting a tag that moved; a line per item, a one-line result last."""
    set_cli_defaults(verbose)

    def body():
        from tasks.common.errors import NotFound
        from tasks.store.store import Store

        cfg = _config(config)
        try:
            sweep_id = Store(cfg.store).plans.resolve(sweep)
        except NotFound as e:
            _fail(f"--sweep: {e}", 2)
        from flows.restore import restore_flow

        result = restore_flow(config=cfg, sweep=sweep_id, repository=repository, tag=tag)
        for line in result["lines"]:
            typer.echo(line)
        typer.echo(result["summary"])
        if not result["complete"]:
            raise typer.Exit(1)

    _run(body)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: a usage mistake is one line naming the argument, exit 2."""
    args = sys.argv[1:] if argv is None else argv
    if not args:  # plain `regsweep`: the help, still exit 2 as before
        app(["--help"], prog_name="regsweep", standalone_mode=False)
        sys.exit(2)
    try:
        # standalone_mode=False hands usage errors to us instead of Typer's multi-line error box
        code = app(args, prog_name="regsweep", standalone_mode=False)
    except typer.TyperException as e:  # Typer's parse errors: missing/unknown options, bad values
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"regsweep: error: {e.format_message()}{where}", err=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("regsweep: error: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
