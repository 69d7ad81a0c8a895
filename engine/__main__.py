"""`python -m engine`: the Hydra entry point."""

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

from engine import sweep
from engine.config import check_override_keys, register_configs
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
    # (secrets) passwords are taken out of argv/env here, before anything parses them.
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises its errors (it would print them and exit 1)
    warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath in main, path=conf is not available")
    argv = sys.argv[1:]
    try:
        # `-m` may stand anywhere (`python -m engine symbol=ES,NQ -m hydra/launcher=joblib`): argparse wants it first.
        multirun = [a for a in argv if a in ("-m", "--multirun")]
        sys.argv[1:] = expand_sweep_argv(multirun + [a for a in argv if a not in ("-m", "--multirun")])
        check_override_keys(sys.argv[1:])
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


def _refuse(exc: EngineError) -> None:
    console.print(f"[red]ERROR[/] {escape(str(exc))}", highlight=False)
    sys.exit(exc.exit_code)


def _startup_log(exc: BaseException) -> str:
    """Append the traceback of a failure outside any job to runs/engine.log (else the temp dir's); its path."""
    text = "".join(traceback.format_exception(exc))
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
