"""Before a sweep on a launcher of other machines: warn when its jobs would write where the others cannot see (a
SQLite file; on a Ray cluster, folders relative to each node's own working directory)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

log = logging.getLogger(__name__)

#: Launchers whose jobs all run on this machine (Hydra's basic one, joblib, submitit_local): one SQLite file serves.
LOCAL_LAUNCHERS = frozenset({
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
})


def unshared_store_warning(config: DictConfig) -> str | None:
    """The warning for a sweep whose launcher may place jobs on other machines (Slurm, Ray, ...) while `db.url` is a
    SQLite file, or None when there is nothing to say."""
    if OmegaConf.select(config, "hydra.launcher._target_") in LOCAL_LAUNCHERS:
        return None
    url = OmegaConf.select(config, "db.url", throw_on_resolution_failure=False)
    try:
        if url is None or make_url(str(url)).get_backend_name() != "sqlite":
            return None
    except ArgumentError:
        return None  # not a URL at all: the job itself refuses it, naming db.url
    launcher = OmegaConf.select(config, "hydra.runtime.choices", default={}).get("hydra/launcher") or "this launcher"
    return (f"db.url={url} is a SQLite file, and hydra/launcher={launcher} can run jobs on other machines, which "
            f"cannot share it: each node would write a file of its own (or corrupt it on a network filesystem). "
            f"Fix: use PostgreSQL as the shared store, e.g. db=postgres db.url=postgresql+psycopg://user@dbhost/engine "
            f"(README, Scale-out: two nodes).")


RAY_LAUNCHER = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"


def relative_paths_warning(config: DictConfig) -> str | None:
    """The warning for a sweep on a Ray cluster whose data_dir or hydra.sweep.dir is relative: a Ray job runs in the
    directory `ray start` ran in on its node, not in this one (a Ray of its own, address=local, shares this one)."""
    if (OmegaConf.select(config, "hydra.launcher._target_") != RAY_LAUNCHER
            or OmegaConf.select(config, "hydra.launcher.ray.init.address") == "local"):
        return None
    relative = [f"{key}={value}" for key in ("data_dir", "hydra.sweep.dir")
                if not Path(value := str(OmegaConf.select(config, key))).is_absolute()]
    if not relative:
        return None
    return (f"{' and '.join(relative)} {'is' if len(relative) == 1 else 'are'} relative: each Ray job resolves it in "
            f"the working directory of the node that runs it (where `ray start` ran), so its raw files or run "
            f"directory are not where this sweep looks for them. Fix: give absolute paths every node shares, e.g. "
            f"data_dir=/shared/engine/data hydra.sweep.dir=/shared/engine/runs/multirun/<name> "
            f"(README, Scale-out: two nodes).")


class WarnUnsharedStore(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        for message in (unshared_store_warning(config), relative_paths_warning(config)):
            if message:
                log.warning(message)
