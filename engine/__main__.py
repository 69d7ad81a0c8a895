"""`python -m engine`: the Hydra entry point (and the `status` and `runs` views)."""

import os
import sys
import traceback
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.markup import escape

from engine import provenance, secrets, sweep
from engine.config import (
    check_override_keys,
    expand_dry_run_argv,
    plugin_parameter_overrides,
    register_configs,
)
from engine.console import console
from engine.errors import EngineError, from_startup
from engine.rerun import expand_sweep_argv

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from engine.app import report, run_job  # imported here so `--help` and `--cfg` start fast

    result = run_job(cfg)
    report(result)
    if HydraConfig.get().mode != RunMode.MULTIRUN and result["exit_code"]:
        sys.exit(result["exit_code"])
    return result


def cli() -> None:
    """The `engine` console script and `python -m engine`."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises its errors (it would print them and exit 1)
    # A working directory without conf/ (no local settings, no job files) is normal: not worth Hydra's warning.
    warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath in main, path=conf is not available")
    try:
        if sys.argv[1:2] in (["status"], ["runs"]):  # the views of engine/status_cli.py, not a job
            from engine.status_cli import main as view

            view(sys.argv[1], sys.argv[2:])
            return
        sys.argv[1:] = _prepared_argv(sys.argv[1:])
        main()
    except EngineError as exc:
        _refuse(exc)
    except KeyboardInterrupt:  # Ctrl-C before a job installed its handlers (imports, Hydra's start-up)
        console.print("[red]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - sorted into the user's problem (2) or an internal failure (1)
        user_error = from_startup(exc)
        if user_error is not None:
            _refuse(user_error)
        log = _startup_log(exc)
        first = str(exc).splitlines()[0] if str(exc) else ""
        console.print(f"[red]internal error[/] {escape(f'{type(exc).__name__}: {first} (traceback in {log})')}",
                      highlight=False)
        sys.exit(1)
    if sweep.last_sweep.get("failed"):
        console.print(f"[red]{sweep.last_sweep['failed']} of {sweep.last_sweep['jobs']} jobs failed[/]")
        sys.exit(1)


def _prepared_argv(argv: list[str]) -> list[str]:
    """The command line as Hydra should see it: no passwords (taken out of argv and ENGINE_PG_URL, output masked),
    `-m` first (argparse wants it there; users put it anywhere), a sweep directory's rerun expanded, `dry_run=`
    meaning `dry_run.enabled=`, `+job=` filling the `job: null` slot of config.yaml (so conf/local/default.yaml
    still merges after the job), misspelt keys refused with a suggestion, and a plugin's parameters set with `++`
    (checked against its class when the job starts)."""
    argv = secrets.take_secrets(argv)
    multirun = [a for a in argv if a in ("-m", "--multirun")]
    argv = expand_dry_run_argv(expand_sweep_argv(multirun + [a for a in argv if a not in ("-m", "--multirun")]))
    jobs = [a for a in argv if a.startswith(("+job=", "job="))]
    check_override_keys([a for a in argv if a not in jobs])
    return plugin_parameter_overrides([a.removeprefix("+") if a in jobs else a for a in argv])


def _refuse(exc: EngineError) -> None:
    console.print(f"[red]ERROR[/] {escape(str(exc))}", highlight=False)
    sys.exit(exc.exit_code)


def _startup_log(exc: BaseException) -> str:
    """Append the traceback of a failure outside any job to runs/engine.log (else the temp dir's); its path."""
    text = provenance.redact("".join(traceback.format_exception(exc)))
    for directory in (Path("runs"), Path(os.environ.get("TMPDIR", "/tmp"))):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with open(directory / "engine.log", "a", encoding="utf-8") as handle:
                handle.write(text)
            return str(directory / "engine.log")
        except OSError:
            continue
    return "nowhere: no writable directory"


if __name__ == "__main__":
    cli()
