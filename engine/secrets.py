"""Database passwords never enter the composed config: they are taken out of URLs into PGPASSWORD.

A password typed into `db.url=` (or any URL on the command line), held in ENGINE_PG_URL or written into a
YAML file is removed from the URL and handed to libpq as `PGPASSWORD` in this process's environment. libpq
reads it for every connection (runs, dry-run plans, migrations) and every child job inherits it (joblib and
submitit_local workers, Slurm jobs submitted with the default `--export=ALL`), so nothing has to carry the
password in a config, an override, a pickle or a file. PGPASSWORD and ~/.pgpass set by the user keep working.
"""

from __future__ import annotations

import os
import re
import sys
from urllib.parse import unquote

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from engine.errors import EngineError
from engine.provenance import RedactingStream

PASSWORD_ENV = "PGPASSWORD"
URL_ENV = "ENGINE_PG_URL"
# scheme://user:password@ — also as Hydra escapes overrides (`scheme\://user\:password@`)
_USER_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*\\?://[^:/@\s\\,\[\]]*)\\?:(?P<password>[^@\s/?#]*)@")


def split_password(text: str) -> tuple[str, set[str]]:
    """`text` with every URL's password removed (`user:pw@` → `user@`), and the passwords it held."""
    found: set[str] = set()

    def take(match: re.Match) -> str:
        if match["password"]:
            found.add(unquote(match["password"]))
        return match["head"] + "@"

    return _USER_PASSWORD.sub(take, text), found


def _hand_to_libpq(passwords: set[str], where: str) -> None:
    if len(passwords) > 1:
        raise EngineError(f"{where} holds {len(passwords)} different database passwords",
                          "put one line per server in ~/.pgpass and leave the passwords out of the URLs")
    if passwords:
        os.environ[PASSWORD_ENV] = passwords.pop()


def take_secrets(argv: list[str]) -> list[str]:
    """At parse time, before Hydra sees anything: `argv` without URL passwords, ENGINE_PG_URL without its
    password, the passwords in PGPASSWORD, and stdout/stderr masking any secret that still shows up."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))
    env_url = os.environ.get(URL_ENV)
    if env_url:
        os.environ[URL_ENV], passwords = split_password(env_url)
        _hand_to_libpq(passwords, URL_ENV)
    cleaned, passwords = [], set()
    for arg in argv:
        arg, found = split_password(arg)
        cleaned.append(arg)
        passwords |= found
    _hand_to_libpq(passwords, "the command line")
    return cleaned


def take_from_config(cfg: DictConfig) -> None:
    """Remove a password that reached `cfg.db.url` (from a YAML file) in place, into PGPASSWORD. In place, so
    that what Hydra keeps of the config (the launcher's copy, the job's return value) holds none."""
    try:
        url = cfg.db.url
    except OmegaConfBaseException:
        return  # a broken config is reported by the validation that follows
    if not isinstance(url, str):
        return
    cleaned, passwords = split_password(url)
    if passwords:
        _hand_to_libpq(passwords, "db.url")
        cfg.db.url = cleaned


class KeepSecretsOut(Callback):
    """Strip the composed config before Hydra saves it or a launcher pickles it for its workers."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        take_from_config(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        take_from_config(config)
