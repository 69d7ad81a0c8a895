"""Interruptions (SIGTERM, Ctrl-C) as one exception type the run and its stages record as `interrupted`."""

from __future__ import annotations


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into something the run can record before it goes.

    A KeyboardInterrupt, so that psycopg treats it as Ctrl-C: a statement in flight is cancelled on the server
    and the connection stays usable for the rollback (otherwise: "another command is already in progress").
    """


def is_interruption(exc: BaseException) -> bool:
    """True for Ctrl-C and SIGTERM: the run (and any stage row) is `interrupted`, not `failed`."""
    return isinstance(exc, KeyboardInterrupt | Interrupted)
