"""`python -m engine`: the Hydra entry point."""

import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from engine import secrets, sweep
from engine.config import check_override_keys, expand_dry_run_argv, register_configs
from engine.console import console
from engine.errors import EngineError
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
    try:
        sys.argv[1:] = secrets.take_secrets(sys.argv[1:])  # passwords out of argv and ENGINE_PG_URL, masked output
        # `-m` may stand anywhere (`python -m engine symbol=ES,NQ -m hydra/launcher=joblib`): argparse wants it first.
        multirun = [a for a in sys.argv[1:] if a in ("-m", "--multirun")]
        sys.argv[1:] = expand_dry_run_argv(
            expand_sweep_argv(multirun + [a for a in sys.argv[1:] if a not in ("-m", "--multirun")]))
        # `+job=<name>` (or `job=<name>`) fills the `job: null` slot of conf/config.yaml, so that
        # conf/local/default.yaml still merges after the job.
        jobs = [a for a in sys.argv[1:] if a.startswith(("+job=", "job="))]
        check_override_keys([a for a in sys.argv[1:] if a not in jobs])
        sys.argv[1:] = [a.removeprefix("+") if a in jobs else a for a in sys.argv[1:]]
    except EngineError as exc:
        console.print(f"[red]ERROR[/] {exc}")
        sys.exit(exc.exit_code)
    # A working directory without conf/ (no local settings, no job files) is normal: not worth Hydra's warning.
    warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath in main, path=conf is not available")
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C before a job installed its handlers (imports, Hydra's start-up)
        console.print("[red]interrupted[/]")
        sys.exit(130)
    if sweep.last_sweep.get("failed"):
        console.print(f"[red]{sweep.last_sweep['failed']} of {sweep.last_sweep['jobs']} jobs failed[/]")
        sys.exit(1)


if __name__ == "__main__":
    cli()
