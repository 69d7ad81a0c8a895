"""Before a sweep on another machine's launcher: warn when its jobs would write a SQLite file nobody else sees."""

from __future__ import annotations

import logging
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


class WarnUnsharedStore(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if message := unshared_store_warning(config):
            log.warning(message)
