"""Database passwords never enter the composed config: they are taken out of URLs into PGPASSWORD.

A password typed into `db.url=` (or any URL on the command line), held in ENGINE_PG_URL or written into a
YAML file is removed from the URL and handed to libpq as `PGPASSWORD` in this process's environment. libpq
reads it for every connection (runs, dry-run plans, migrations) and every child job inherits it (joblib and
submitit_local workers, Slurm jobs submitted with the default `--export=ALL`), so nothing has to carry the
password in a config, an override, a pickle or a file. PGPASSWORD and ~/.pgpass set by the user keep working.

Who keeps what out of which file, each file once: `KeepSecretsOut.on_run_start` / `on_multirun_start` strip the
composed config before Hydra saves a run's .hydra/config.yaml or a sweep's multirun.yaml; a sweep job, whose
config Hydra composes again from the YAML files and saves before any callback or the job sees it, cleans its
own .hydra files (`keep_out_of_job`); the sweep's multirun.yaml gets masked once, when the sweep ends; the
engine's own writers (result.json, provenance.json, resolved_config.yaml, plan.md, logs) mask what they write.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from urllib.parse import unquote

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from rich.markup import escape

from engine.console import console
from engine.errors import EngineError, from_startup
from engine.provenance import RedactingStream, redact

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
        cfg.db.url = cleaned  # first: a refusal below leaves no password in what Hydra saves
        _hand_to_libpq(passwords, "db.url")


HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def keep_out_of_job(cfg: DictConfig, hydra_dir: Path | None) -> None:
    """A job's first step: take a password out of its config (in a sweep Hydra composed it again for this job,
    YAML passwords included) and mask secrets in the files Hydra saved for this job in `hydra_dir` (None: it
    saved none). Only this job's files, each rewritten at most once; a file that cannot be rewritten is
    removed and the error raised, never left holding a secret."""
    try:
        take_from_config(cfg)
    finally:  # also when the password is refused: the files are masked either way
        for name in HYDRA_FILES if hydra_dir is not None else ():
            mask_file(hydra_dir / name)


def mask_file(path: Path) -> None:
    """Rewrite `path` with its secrets masked, if it holds any (a missing file holds none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    masked = redact(text)
    if masked == text:
        return
    try:
        path.write_text(masked, encoding="utf-8")  # truncated first: even a partial write holds no secret
    except OSError:
        path.unlink()  # raises in turn if even that fails: loud either way
        raise


class KeepSecretsOut(Callback):
    """Strip the composed config before Hydra saves it or a launcher pickles it for its workers, and mask the
    sweep's multirun.yaml when the sweep ends. Hydra 1.3 turns an exception in a callback into a warning and
    carries on saving the config, so a failure here ends the command instead (`_or_exit`)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _or_exit(take_from_config, config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _or_exit(take_from_config, config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        _or_exit(mask_file, Path(config.hydra.sweep.dir) / "multirun.yaml")


def _or_exit(step, arg) -> None:
    """Run `step(arg)`; on any error print it and exit (SystemExit passes through Hydra's callback wrapper)."""
    try:
        step(arg)
    except Exception as exc:  # noqa: BLE001 - every failure ends the command: 2 for the user's, else 1
        error = exc if isinstance(exc, EngineError) else from_startup(exc)
        text = str(error) if error else f"could not keep secrets out of Hydra's files: {type(exc).__name__}: {exc}"
        console.print(f"[red]ERROR[/] {escape(text)}", highlight=False)
        raise SystemExit(error.exit_code if error else 1) from exc
