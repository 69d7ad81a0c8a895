"""`python -m engine`: the Hydra entry point."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from engine import sweep
from engine.app import EXIT_USER_ERROR, report, run_job
from engine.config import check_override_keys, register_configs
from engine.console import console
from engine.errors import EngineError

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    result = run_job(cfg)
    report(result)
    if HydraConfig.get().mode != RunMode.MULTIRUN and result["exit_code"]:
        sys.exit(result["exit_code"])
    return result


if __name__ == "__main__":
    try:
        check_override_keys(sys.argv[1:])
    except EngineError as exc:
        console.print(f"[red]ERROR[/] {exc}")
        sys.exit(EXIT_USER_ERROR)
    main()
    if sweep.last_sweep.get("failed"):
        console.print(f"[red]{sweep.last_sweep['failed']} of {sweep.last_sweep['jobs']} jobs failed[/]")
        sys.exit(1)
