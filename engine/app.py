"""One engine job: validate the config, record provenance, open the run row, run the stages, close it."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from sqlalchemy import Engine

from engine import incremental, interrupts, preflight, provenance, secrets
from engine.config import EngineConfig, as_typed, to_typed
from engine.console import console
from engine.context import RunRecord, StageContext
from engine.db import liveness, runs
from engine.db.connect import create_db_engine, lost_server, masked_url, mount_point, storage_full, upgrade
from engine.detectors import params_json
from engine.errors import NO_SPACE, EngineError, error_chain
from engine.job_plugins import JobPlugins, add_stage_nodes, load_plugins
from engine.pipeline import run_stages
from engine.plan import PLAN_FILE, plan, read_earlier, read_only_engine
from engine.provenance import CodeVersion
from engine.rerun import RerunOf, load_saved
from engine.windows import Window, iso_minute

log = logging.getLogger("engine")

EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass(frozen=True)
class PreparedJob:
    """A job checked and described before anything runs: what opening its run and executing it work from."""

    cfg: EngineConfig
    plugins: JobPlugins
    window: Window | None  # None until a window=incremental job resolves it (`with_window`)
    resolved_yaml: str  # as saved in resolved_config.yaml: resolved, secrets masked
    config_sha: str
    code: CodeVersion
    rerun_of: RerunOf | None
    run_dir: Path
    overrides: list[str]  # this command's overrides, secrets masked


@dataclass(frozen=True)
class OpenRun:
    """The job's migrated database and its `running` row, kept alive (and on PostgreSQL locked) while it runs."""

    db: Engine
    live: liveness.LiveRun
    job: PreparedJob  # with its window resolved


def run_job(cfg: DictConfig) -> dict:
    """Run one job; always leaves result.json (and, once the database is open, a closed run row)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = [provenance.redact(as_typed(o)) for o in hydra_cfg.overrides.task]
    started = time.monotonic()
    result: dict = {"status": "failed", "run_dir": str(run_dir), "overrides": overrides, "run_id": None,
                    "exit_code": EXIT_OK}
    db_url: str | None = None
    run: OpenRun | None = None
    try:
        interrupts.install()
        hydra_dir = None if hydra_cfg.output_subdir is None else run_dir / hydra_cfg.output_subdir
        secrets.keep_out_of_job(cfg, hydra_dir)
        job = _prepare(cfg, hydra_cfg, run_dir, overrides, result)
        if job.cfg.dry_run.active:
            result.update(_dry_run(job))
            return result
        if job.rerun_of is not None:
            result["rerun_of"] = job.rerun_of.run_id
            _log_rerun(job.rerun_of, job.code)
        db_url = job.cfg.db.url
        run = _open_run(job)
        job = run.job
        result["run_id"] = run.live.id
        result["window"] = {"start": iso_minute(job.window.start), "end": iso_minute(job.window.end)}
        result.update(status="success", stages=_execute(job, run))
        if job.window.empty:
            result["note"] = incremental.up_to_date(job.window)
    except BaseException as exc:
        if not (isinstance(exc, Exception) or interrupts.is_interruption(exc)):
            raise  # SystemExit and the like
        _record_failure(result, exc, db_url)
    finally:
        _close(result, run, db_url, started)
    return result


def _prepare(cfg: DictConfig, hydra_cfg: DictConfig, run_dir: Path, overrides: list[str],
             result: dict) -> PreparedJob:
    """Load a rerun's saved config, validate, describe the code and save resolved_config.yaml. Notes the rerun's
    overrides and the symbol in `result` as soon as they are known, so a job failing later still reports them."""
    rerun_of = None
    if cfg.rerun:
        cfg, rerun_of = load_saved(cfg, list(hydra_cfg.overrides.task), list(hydra_cfg.runtime.choices))
        result["rerun_overrides"] = rerun_of.overrides
    _record_choices(cfg, hydra_cfg.runtime.choices)
    add_stage_nodes(cfg)
    typed, plugins, window, resolved_yaml = _validated(cfg)
    result["symbol"] = typed.symbol
    job = PreparedJob(typed, plugins, window, resolved_yaml, provenance.sha256_text(resolved_yaml),
                      provenance.code_version(), rerun_of, run_dir, overrides)
    _write_text(run_dir / "resolved_config.yaml", resolved_yaml)
    return job


def _dry_run(job: PreparedJob) -> dict:
    """Write plan.md instead of running; the result's fields for it."""
    earlier = read_earlier(job.cfg.dry_run.compare)  # a bad dry_run.compare fails before plan.md is written
    if job.window is None:
        db = read_only_engine(job.cfg.db.url)
        try:
            job = with_window(job, db)
        finally:
            if db is not None:
                db.dispose()
    steps, text = plan(job.cfg, job.plugins, job.window, log, job.resolved_yaml, earlier)
    _write_text(job.run_dir / PLAN_FILE, text)
    return {"status": "success", "dry_run": True, "plan": steps, "plan_file": str(job.run_dir / PLAN_FILE),
            "compare": job.cfg.dry_run.compare}


def _log_rerun(rerun_of: RerunOf, code: CodeVersion) -> None:
    log.info("rerun of run %s from %s (its saved config, not today's conf/)%s", rerun_of.run_id,
             rerun_of.run_dir, f" with {' '.join(rerun_of.overrides)}" if rerun_of.overrides else "")
    if rerun_of.git_hash != code.git_hash:
        log.warning("rerun: the code changed since run %s (git %s then, %s now)", rerun_of.run_id,
                    rerun_of.git_hash, code.git_hash)


def _open_run(job: PreparedJob) -> OpenRun:
    """Connect, migrate and insert the job's `running` row; a failure on the way leaves no engine open."""
    db = create_db_engine(job.cfg.db.url, job.cfg.db.echo)
    rerun_of = job.rerun_of
    try:
        upgrade(db)
        job = with_window(job, db)
        live = liveness.start(
            db,
            symbol=job.cfg.symbol,
            stages=runs.dumps(list(job.cfg.stages)),
            run_dir=str(job.run_dir.resolve()),
            git_hash=job.code.git_hash,
            git_dirty=job.code.git_dirty,
            logic_version=job.code.logic_version,
            config_sha256=job.config_sha,
            overrides=runs.dumps(job.overrides),
            data_kind=job.plugins.source.obj.data_kind.value,
            window_start=job.window.start,
            window_end=job.window.end,
            detector=job.plugins.detector.name,
            detector_params=params_json(job.plugins.detector.obj),
            adjustment=job.cfg.adjust.value,
            rerun_of=rerun_of.run_id if rerun_of else None,
            rerun_of_git_hash=rerun_of.git_hash if rerun_of else None,
        )
    except BaseException:
        db.dispose()
        raise
    return OpenRun(db, live, job)


def with_window(job: PreparedJob, db: Engine | None) -> PreparedJob:
    """The job with its window: a window=incremental one resolved from the database's coverage and the source
    (engine/incremental.py); `db` None: a database that does not exist yet."""
    if job.window is not None:
        return job
    window = incremental.resolve(job.cfg, job.plugins, db, log)
    preflight.check_chunk_count(window, job.cfg.window.max_chunks, job.cfg.window.chunk)
    return replace(job, window=window)


def _execute(job: PreparedJob, run: OpenRun) -> dict[str, dict]:
    """Reconcile dead runs, write provenance.json, run the stages; their results (as result.json holds them)."""
    run.live.reconcile()
    rerun_of = job.rerun_of
    _write_json(
        job.run_dir / "provenance.json",
        {
            "run_id": run.live.id,
            **job.code.as_dict(),
            "config_sha256": job.config_sha,
            "overrides": job.overrides,
            "database": masked_url(job.cfg.db.url),
            "packages": provenance.package_versions(),
            "python": sys.version.split()[0],
            "command": " ".join(sys.argv),
            "rerun_of": None if rerun_of is None else {"run_id": rerun_of.run_id, "git_hash": rerun_of.git_hash,
                                                       "run_dir": str(rerun_of.run_dir)},
            "rerun_overrides": None if rerun_of is None else rerun_of.overrides,
        },
    )
    log.info("run %s: %s on %s, logic version %s, dir %s", run.live.id, job.cfg.symbol,
             masked_url(job.cfg.db.url), job.code.logic_version, job.run_dir)
    if job.window.empty:
        log.info("%s: %s, nothing to fetch or detect", job.cfg.symbol, incremental.up_to_date(job.window))
        return {}
    ctx = StageContext(cfg=job.cfg, window=job.window, db=run.db,
                       run=RunRecord(run.live.id, job.run_dir, job.code), log=log, plugins=job.plugins)
    run_stages(ctx)
    interrupts.finish()  # a signal received at any point (deferred or swallowed) ends the run as interrupted
    return {name: stage_result.as_json() for name, stage_result in ctx.run.results.items()}


def _close(result: dict, run: OpenRun | None, db_url: str | None, started: float) -> None:
    """However the job ended: close its row, stop its liveness, write result.json, release the database."""
    interrupts.closing()
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    if run is not None:
        _close_run_row(run.db, db_url, result)
        run.live.stop()
    _write_result(Path(result["run_dir"]) / "result.json", result)
    if run is not None:
        run.db.dispose()
    interrupts.uninstall()


def _record_failure(result: dict, exc: BaseException, db_url: str | None) -> None:
    """How a run that raised ended: interrupted (130), a problem the user can fix (2) or a failure (1)."""
    if interrupts.is_interruption(exc):
        what = interrupts.requested() or ("Ctrl-C" if isinstance(exc, KeyboardInterrupt) else str(exc))
        result.update(status="interrupted", error=f"interrupted ({what})", exit_code=EXIT_INTERRUPTED)
        log.error("interrupted (%s)", what)
        return
    user_error = exc if isinstance(exc, EngineError) else _user_error(exc, db_url)
    if user_error is not None:
        result.update(error=str(user_error), exit_code=EXIT_USER_ERROR)
        log.error("%s", user_error)
        return
    reason = lost_server(exc) if db_url is not None else None
    if reason is not None:
        message = (f"the database server at {masked_url(db_url)} went away during {_stage_of(exc)}: {reason}; "
                   "the run's rows will be reconciled by the next run")
        result.update(error=message, exit_code=EXIT_FAILED)
        log.error("%s", message)
        return
    result.update(error=f"{type(exc).__name__}: {exc}", exit_code=EXIT_FAILED)
    log.error("run failed", exc_info=exc)


def _user_error(exc: BaseException, db_url: str | None) -> EngineError | None:
    """A full disk, as an error the user can fix: the database's (SQLite file, PostgreSQL server) or a file's."""
    full = storage_full(exc, db_url) if db_url is not None else None
    if full is not None:
        return full
    for err in error_chain(exc):
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            where = err.filename or "a file of this run"
            return EngineError(f"cannot write {where}: {err.strerror}",
                               f"free space on {mount_point(err.filename or '.')} or point db.url/hydra.run.dir "
                               "elsewhere")
    return None


def _stage_of(exc: BaseException) -> str:
    """The stage whose code raised `exc` (the innermost engine/stages module in its traceback)."""
    names = [frame.f_globals.get("__name__", "") for frame, _line in traceback.walk_tb(exc.__traceback__)]
    stages = [name.rsplit(".", 1)[1] for name in names if name.startswith("engine.stages.")]
    return stages[-1] if stages else "the run"


def _close_run_row(db, db_url: str | None, result: dict) -> None:
    """Record how the run ended in its row; if the database cannot take it, say so and let the next run reconcile."""
    try:
        runs.finish_run(db, result["run_id"], result["status"], provenance.redact(result.get("error") or "")
                        or None)
    except Exception as exc:  # noqa: BLE001 - the run's end is still reported in result.json
        reason = lost_server(exc) or _user_error(exc, db_url) or f"{type(exc).__name__}: {exc}"
        log.error("could not record the end of run %s in engine_runs (%s); the next run will reconcile it",
                  result["run_id"], str(reason).splitlines()[0])
        if result["status"] == "success":
            result.update(status="failed", exit_code=EXIT_FAILED,
                          error=f"the run's work is committed but its end could not be recorded: {reason}")


def _write_result(path: Path, result: dict) -> None:
    try:
        _write_json(path, result)
    except OSError as exc:
        error = _user_error(exc, None)
        log.error("%s", error or f"cannot write {path}: {exc}")
        result["exit_code"] = result["exit_code"] or (EXIT_USER_ERROR if error else EXIT_FAILED)


def _record_choices(cfg: DictConfig, choices) -> None:
    """Which options selected the source and detector (`detector=williams_fractals`), into the config, so that the
    resolved config (and a rerun of it) holds them. A rerun keeps the ones its saved config recorded."""
    with open_dict(cfg):
        for group in ("source", "detector"):
            if group not in cfg.choices and choices.get(group):
                cfg.choices[group] = choices[group]


def _validated(cfg: DictConfig):
    """The typed config, its plugins (created and checked), the window, and the resolved YAML to record."""
    try:
        typed = to_typed(cfg)
        resolved_yaml = provenance.redact(OmegaConf.to_yaml(cfg, resolve=True))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        raise EngineError(f"config key {key!r}: {exc.msg if hasattr(exc, 'msg') else exc}",
                          f"set {key}=<value> on the command line or in conf/") from None
    plugins = load_plugins(typed)
    return typed, plugins, preflight.check(typed, plugins), resolved_yaml


def _write_json(path: Path, payload: dict) -> None:
    _write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Write `text` with its secrets masked, atomically: a temporary file beside `path`, fsynced, renamed over it.
    A failure (full disk, a kill) leaves the previous content or no file, never a partial one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(provenance.redact(text))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc  # name the file the run meant to write
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def report(result: dict) -> None:
    """The closing summary: what the job did, in one table (chunked stages: their totals), and where its record is."""
    from rich.markup import escape
    from rich.table import Table

    from engine.results import from_json

    ok = result["status"] == "success"
    status = f"[{'green' if ok else 'red'}]{result['status']}[/]"
    if result.get("run_id") is not None:
        title = f"run {result['run_id']}: {status}"
    elif result.get("dry_run"):
        title = f"dry run: {status}"
    else:
        title = f"job: {status} (before a run was recorded)"
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    if result.get("symbol"):
        table.add_row("symbol", str(result["symbol"]))
    for name, data in (result.get("stages") or {}).items():
        stage_result = from_json(data)
        for what, value in stage_result.rows(name) if stage_result is not None else []:
            table.add_row(what, escape(value))
    if result.get("note"):
        table.add_row("note", escape(result["note"]))
    if result.get("dry_run"):
        table.add_row("dry run", f"plan only, nothing run: {result['plan_file']}")
        if result.get("compare") is not None:
            changed = result["plan"]["changes"]
            table.add_row("changes", f"{changed} lines since {result['compare']}" if changed
                          else f"none since {result['compare']}")
    if not ok:
        table.add_row("error", escape(str(result.get("error"))))
    table.add_row("run directory", result["run_dir"])
    table.add_row("seconds", f"{result['duration_seconds']:.2f}")
    console.print(table)
