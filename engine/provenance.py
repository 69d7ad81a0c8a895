"""What produced a run: code version, package versions, config digest, with secrets kept out."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("futures-engine", "hydra-core", "omegaconf", "databento", "databento-dbn", "sqlalchemy",
            "psycopg", "alembic", "numpy", "rich")
# user:password@ in any URL-looking text, also as Hydra echoes overrides (`scheme\://user\:pw@host`)
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*\\?://[^:/@\s\\]*\\?:)(?P<password>[^@\s]+)(?=@)")
_SECRET_ENV = ("DATABENTO_API_KEY", "PGPASSWORD")


@dataclass(frozen=True)
class CodeVersion:
    git_hash: str | None
    git_dirty: bool | None
    logic_version: str

    def as_dict(self) -> dict:
        return asdict(self)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def code_version() -> CodeVersion:
    """Short git hash (with `-dirty` when tracked files changed), else LOGIC_VERSION, else `unversioned`."""
    git_hash = _git("rev-parse", "--short", "HEAD")
    if git_hash:
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
        return CodeVersion(git_hash, dirty, f"{git_hash}-dirty" if dirty else git_hash)
    return CodeVersion(None, None, os.environ.get("LOGIC_VERSION") or "unversioned")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def redact(text: str) -> str:
    """Mask URL passwords and the values of secret environment variables."""
    text = _URL_PASSWORD.sub(r"\g<head>***", text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            # Not inside a longer word nor as a URL's user: PGPASSWORD=postgres must leave
            # postgresql://postgres@host as it is.
            text = re.sub(rf"(?<![A-Za-z0-9])(?<!://){re.escape(value)}(?![A-Za-z0-9])", "***", text)
    return text


class RedactingFilter(logging.Filter):
    """Logging filter that masks secrets in every record (message, traceback, stack) before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:  # formatters print exc_text, once set, as the traceback
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RedactingStream:
    """A console stream (stdout/stderr) that masks secrets in everything written to it: what Hydra prints for
    `--cfg`/`--info`, argparse errors, tracebacks. Everything but `write` is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
