"""Interruptions (SIGTERM, Ctrl-C) as one exception type the run and its stages record as `interrupted`."""

from __future__ import annotations


class Interrupted(BaseException):
    """SIGTERM, turned into something the run can record before it goes."""


def is_interruption(exc: BaseException) -> bool:
    """True for Ctrl-C and SIGTERM: the run (and any stage row) is `interrupted`, not `failed`."""
    return isinstance(exc, KeyboardInterrupt | Interrupted)
