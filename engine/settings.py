"""The engine's configuration outside a job: `read_bars`, `status` and `runs` find the database a job would use.

The config is composed exactly as `python -m engine` composes it (the packaged configs, the working directory's
conf/ with conf/local/default.yaml, ENGINE_PG_URL through db/postgres.yaml), with the caller's overrides, so
`db=postgres` or `db.url=...` mean the same here as on a job's command line.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from engine.config import check_override_keys, register_configs
from engine.errors import EngineError


def composed(overrides: Sequence[str] = ()) -> DictConfig:
    """The job config `python -m engine <overrides>` would compose (without its `hydra` node).

    Works inside a running Hydra app too: Hydra's global state is set aside and restored.
    """
    args = list(overrides)
    check_override_keys(args)
    register_configs()
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="engine.conf", version_base="1.3"):
            return compose(config_name="config", overrides=args)
    except (HydraException, OmegaConfBaseException) as exc:
        raise EngineError(f"cannot compose the engine's config with {args}: {str(exc).splitlines()[0]}",
                          "check the overrides (e.g. db=postgres, db.url=<url>) and conf/local/default.yaml") from None
    finally:
        restore_gh_from_backup(backup)


def database_url(overrides: Sequence[str] = ()) -> str:
    """`db.url` as a job with these overrides would use it (default: conf/local, else the SQLite file)."""
    cfg = composed(overrides)
    try:
        return str(cfg.db.url)
    except OmegaConfBaseException as exc:
        raise EngineError(f"config key 'db.url' cannot be resolved: {str(exc).splitlines()[0]}",
                          "set db.url=<url> (or db=postgres with ENGINE_PG_URL)") from None
