"""One engine job: validate the config, record provenance, open the run row, run the stages, close it."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engine import provenance
from engine.config import check_stages, parse_window, to_typed
from engine.console import console
from engine.context import RunRecord, StageContext
from engine.db import liveness, runs
from engine.db.connect import create_db_engine, masked_url, upgrade
from engine.errors import EngineError
from engine.interrupts import Interrupted
from engine.pipeline import run_stages
from engine.plan import plan
from engine.rerun import load_saved
from engine.stages import STAGES

log = logging.getLogger("engine")

EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def _on_sigterm(signum, frame):
    raise Interrupted(f"signal {signum}")


def _set_sigterm(handler) -> None:
    """Only the main thread may set handlers; a launcher running jobs in threads keeps the default."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


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
    try:
        _set_sigterm(_on_sigterm)
        rerun_of = None
        if cfg.rerun:
            cfg, rerun_of = load_saved(cfg)
        typed, window, resolved_yaml = _validated(cfg)
        result["symbol"] = typed.symbol
        code = provenance.code_version()
        config_sha = provenance.sha256_text(resolved_yaml)
        (run_dir / "resolved_config.yaml").write_text(resolved_yaml)
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
        db = create_db_engine(typed.db.url, typed.db.echo)
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
        result.update(status="success", stages=ctx.run.summary)
    except EngineError as exc:
        result.update(error=str(exc), exit_code=EXIT_USER_ERROR)
        log.error("%s", exc)
    except (KeyboardInterrupt, Interrupted) as exc:
        result.update(status="interrupted", error=f"interrupted ({exc or 'Ctrl-C'})", exit_code=EXIT_INTERRUPTED)
        log.error("interrupted")
    except Exception as exc:  # noqa: BLE001 - recorded, then reported with its traceback
        result.update(error=f"{type(exc).__name__}: {exc}", exit_code=EXIT_FAILED)
        log.exception("run failed")
    finally:
        _set_sigterm(signal.SIG_DFL)
        result["duration_seconds"] = round(time.monotonic() - started, 3)
        if result["run_id"] is not None:
            runs.finish_run(db, result["run_id"], result["status"], provenance.redact(result.get("error") or "")
                            or None)
        if live is not None:
            live.stop()
        _write_json(run_dir / "result.json", result)
        provenance.redact_tree(run_dir)
        if db is not None:
            db.dispose()
    return result


def _validated(cfg: DictConfig):
    try:
        typed = to_typed(cfg)
        resolved_yaml = provenance.redact(OmegaConf.to_yaml(cfg, resolve=True))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        raise EngineError(f"config key {key!r}: {exc.msg if hasattr(exc, 'msg') else exc}",
                          f"set {key}=<value> on the command line or in conf/") from None
    check_stages(list(typed.stages), list(STAGES))
    window = parse_window(typed.window)
    return typed, window, resolved_yaml


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(provenance.redact(json.dumps(payload, indent=2, sort_keys=True, default=str)) + "\n")


def report(result: dict) -> None:
    """The closing summary: what the job did, in one table, and where its record is."""
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
        table.add_row("error", str(result.get("error")))
    table.add_row("run directory", result["run_dir"])
    table.add_row("seconds", f"{result['duration_seconds']:.2f}")
    console.print(table)
