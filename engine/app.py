"""One engine job: validate the config, record provenance, open the run row, run the stages, close it."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engine import interrupts, preflight, provenance
from engine.config import to_typed
from engine.console import console
from engine.context import RunRecord, StageContext
from engine.db import liveness, runs
from engine.db.connect import create_db_engine, lost_server, masked_url, mount_point, storage_full, upgrade
from engine.errors import EngineError
from engine.pipeline import run_stages
from engine.plan import plan
from engine.rerun import load_saved

log = logging.getLogger("engine")

EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

# Writing a file failed because its file system is full (or the file hit the size limit).
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def run_job(cfg: DictConfig) -> dict:
    """Run one job; always leaves result.json (and, once the database is open, a closed run row)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = [provenance.redact(o) for o in hydra_cfg.overrides.task]
    provenance.redact_tree(run_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        provenance.redact_tree(Path(hydra_cfg.sweep.dir))
    started = time.monotonic()
    result: dict = {"status": "failed", "run_dir": str(run_dir), "overrides": overrides, "run_id": None,
                    "exit_code": EXIT_OK}
    db = live = None
    db_url: str | None = None
    try:
        interrupts.install()
        rerun_of = None
        if cfg.rerun:
            cfg, rerun_of = load_saved(cfg)
        typed, window, resolved_yaml = _validated(cfg)
        result["symbol"] = typed.symbol
        code = provenance.code_version()
        config_sha = provenance.sha256_text(resolved_yaml)
        _write_text(run_dir / "resolved_config.yaml", resolved_yaml)
        if typed.dry_run:
            result.update(status="success", dry_run=True, plan=plan(typed, window, log))
            return result
        if rerun_of is not None:
            result["rerun_of"] = rerun_of.run_id
            log.info("rerun of run %s from %s (its saved config, not today's conf/)", rerun_of.run_id,
                     rerun_of.run_dir)
            if rerun_of.git_hash != code.git_hash:
                log.warning("rerun: the code changed since run %s (git %s then, %s now)", rerun_of.run_id,
                            rerun_of.git_hash, code.git_hash)
        db_url = typed.db.url
        db = create_db_engine(db_url, typed.db.echo)
        upgrade(db)
        live = liveness.start(
            db,
            symbol=typed.symbol,
            stages=runs.dumps(list(typed.stages)),
            run_dir=str(run_dir.resolve()),
            git_hash=code.git_hash,
            git_dirty=code.git_dirty,
            logic_version=code.logic_version,
            config_sha256=config_sha,
            overrides=runs.dumps(overrides),
            data_kind=typed.source.data_kind.value,
            rerun_of=rerun_of.run_id if rerun_of else None,
            rerun_of_git_hash=rerun_of.git_hash if rerun_of else None,
        )
        result["run_id"] = run_id = live.id
        live.reconcile()
        _write_json(
            run_dir / "provenance.json",
            {
                "run_id": run_id,
                **code.as_dict(),
                "config_sha256": config_sha,
                "overrides": overrides,
                "database": masked_url(typed.db.url),
                "packages": provenance.package_versions(),
                "python": sys.version.split()[0],
                "command": provenance.redact(" ".join(sys.argv)),
                "rerun_of": None if rerun_of is None else {"run_id": rerun_of.run_id, "git_hash": rerun_of.git_hash,
                                                           "run_dir": str(rerun_of.run_dir)},
            },
        )
        log.info("run %s: %s on %s, logic version %s, dir %s", run_id, typed.symbol, masked_url(typed.db.url),
                 code.logic_version, run_dir)
        ctx = StageContext(cfg=typed, window=window, db=db, run=RunRecord(run_id, run_dir, code), log=log)
        run_stages(ctx)
        interrupts.check()  # a signal that arrived during the last statement ends the run as interrupted
        result.update(status="success", stages=ctx.run.summary)
    except BaseException as exc:
        if not (isinstance(exc, Exception) or interrupts.is_interruption(exc)):
            raise  # SystemExit and the like
        _record_failure(result, exc, db_url)
    finally:
        interrupts.closing()
        result["duration_seconds"] = round(time.monotonic() - started, 3)
        if result["run_id"] is not None:
            _close_run_row(db, db_url, result)
        if live is not None:
            live.stop()
        _write_result(run_dir / "result.json", result)
        provenance.redact_tree(run_dir)
        if db is not None:
            db.dispose()
        interrupts.uninstall()
    return result


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
    for err in interrupts.error_chain(exc):
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
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


def _validated(cfg: DictConfig):
    try:
        typed = to_typed(cfg)
        resolved_yaml = provenance.redact(OmegaConf.to_yaml(cfg, resolve=True))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        raise EngineError(f"config key {key!r}: {exc.msg if hasattr(exc, 'msg') else exc}",
                          f"set {key}=<value> on the command line or in conf/") from None
    return typed, preflight.check(typed), resolved_yaml


def _write_json(path: Path, payload: dict) -> None:
    _write_text(path, provenance.redact(json.dumps(payload, indent=2, sort_keys=True, default=str)) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Write atomically: a temporary file beside `path`, fsynced, renamed over it. A failure (full disk, a kill)
    leaves the previous content or no file, never a partial one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
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
    """The closing summary: what the job did, in one table, and where its record is."""
    from rich.markup import escape
    from rich.table import Table

    ok = result["status"] == "success"
    table = Table(title=f"run {result.get('run_id')}: [{'green' if ok else 'red'}]{result['status']}[/]",
                  title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("symbol", str(result.get("symbol")))
    stages = result.get("stages") or {}
    if "ingest" in stages:
        ingest = stages["ingest"]
        table.add_row("bars", f"{ingest['bars_received']:,} received: {ingest['bars_inserted']:,} new, "
                              f"{ingest['bars_updated']:,} updated, {ingest['bars_unchanged']:,} unchanged, "
                              f"{ingest['bars_skipped']:,} quarantined")
    if "detect" in stages:
        detect = stages["detect"]
        events = ", ".join(f"{count:,} {direction}" for direction, count in detect.get("events", {}).items())
        table.add_row("events", f"{events or 'none'} from {detect.get('source_table')} "
                                f"({detect.get('logic_version')})")
    if "chart" in stages:
        table.add_row("chart", str(stages["chart"].get("path")))
    if result.get("dry_run"):
        table.add_row("dry run", "plan only, nothing written")
    if not ok:
        table.add_row("error", escape(str(result.get("error"))))
    table.add_row("run directory", result["run_dir"])
    table.add_row("seconds", f"{result['duration_seconds']:.2f}")
    console.print(table)
