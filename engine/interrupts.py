"""Interruptions (SIGTERM, Ctrl-C) as one exception type the run and its stages record as `interrupted`.

Raising from a signal handler at an arbitrary bytecode can land inside a database driver (mid-COPY, say) and
leave its connection unusable ("another command is already in progress"), so the handler raises only when no
database connection is in use. Otherwise it cancels the running statement (psycopg ``cancel_safe``, sqlite3
``interrupt``) and leaves a flag: the cancelled statement fails, its transaction rolls back cleanly, and that
error counts as the interruption (`is_interruption`); if no statement was running, the next safe point
(`check`, called by the connection layer at the start of every transaction) raises `Interrupted`.

An exception raised where Python cannot propagate it (a weakref callback or `__del__` run by the garbage collector)
is only printed as "Exception ignored", and the run would go on to record `success`. The `sys.unraisablehook`
installed with the handlers turns that case back into a deferred signal (raised at the next transaction, as
above), and `finish` (the run's last safe point) ends the run as interrupted whenever a signal was received,
whatever swallowed it.

The connection layer (engine/db/connect.py) reports connections checked out by the main thread with
`connection_in_use` / `connection_released`; signal handlers are only installed from the main thread.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import sys
import threading
from types import FrameType

from engine.errors import error_chain

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Code that must never be interrupted by an exception: the handler defers to the next safe point instead.
_DB_LIBRARIES = ("sqlalchemy", "psycopg", "alembic")
# SQLSTATE of a statement cancelled on request (psycopg.errors.QueryCanceled).
_QUERY_CANCELED = "57014"


class Interrupted(BaseException):
    """SIGTERM or Ctrl-C, turned into something the run can record before it goes."""


class _State:
    signal: str | None = None  # the signal this job received (sticky until the next `install`)
    pending = False  # received but not yet delivered as an exception
    closing = False  # the run is recording its end: never raise, only cancel
    previous: dict[int, object] = {}
    previous_unraisablehook = None


_state = _State()
# Connections checked out by the main thread: id(pool connection record) -> DBAPI connection.
_in_use: dict[int, object] = {}


def install() -> None:
    """Handle SIGTERM and SIGINT for one job (from the main thread only; elsewhere a no-op)."""
    _state.signal, _state.pending, _state.closing = None, False, False
    if threading.current_thread() is threading.main_thread():
        _state.previous = {sig: signal.signal(sig, _on_signal) for sig in SIGNALS}
        if sys.unraisablehook is not _on_unraisable:
            _state.previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _on_unraisable


def closing() -> None:
    """The run is recording how it ended: from now on a signal cancels a statement but never raises."""
    _state.closing, _state.pending = True, False


def uninstall() -> None:
    """Restore the handlers `install` replaced."""
    if threading.current_thread() is threading.main_thread():
        for sig, handler in _state.previous.items():
            signal.signal(sig, handler)
        if _state.previous_unraisablehook is not None:
            sys.unraisablehook, _state.previous_unraisablehook = _state.previous_unraisablehook, None
    _state.previous = {}
    _state.closing = _state.pending = False


def requested() -> str | None:
    """The name of the signal this job received (SIGTERM, SIGINT), or None."""
    return _state.signal


def check() -> None:
    """A safe point: raise `Interrupted` if a signal arrived and has not been delivered yet."""
    if _state.pending and not _state.closing:
        _state.pending = False
        raise Interrupted(_state.signal)


def finish() -> None:
    """The run's last safe point before it records success: raise `Interrupted` if any signal was received, also
    one whose exception was swallowed on the way (a library catching BaseException, a garbage-collector callback)."""
    if _state.signal is not None and not _state.closing:
        _state.pending = False
        raise Interrupted(_state.signal)


def is_interruption(exc: BaseException) -> bool:
    """True for Ctrl-C and SIGTERM, and for the error of a statement cancelled because of one: the run (and any
    stage row) is `interrupted`, not `failed`. Recognising a cancelled statement delivers the interruption, so
    the caller's own recording of it is not interrupted again."""
    if isinstance(exc, KeyboardInterrupt | Interrupted):
        return True
    if _state.signal is not None and cancelled_statement(exc):
        _state.pending = False
        return True
    return False


def as_interrupted(exc: BaseException) -> Interrupted | None:
    """`Interrupted` for the error of a statement this job's signal cancelled (raise it from the error), else None."""
    if _state.signal is None or not cancelled_statement(exc):
        return None
    _state.pending = False
    return Interrupted(f"{_state.signal}: statement cancelled")


def cancelled_statement(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is a statement cancelled on request (PostgreSQL 57014, sqlite3 interrupt)."""
    for err in error_chain(exc):
        if getattr(err, "sqlstate", None) == _QUERY_CANCELED:
            return True
        if isinstance(err, sqlite3.OperationalError) and str(err) == "interrupted":
            return True
    return False


def connection_in_use(dbapi_conn, record) -> None:
    if threading.current_thread() is threading.main_thread():
        _in_use[id(record)] = dbapi_conn


def connection_released(record) -> None:
    _in_use.pop(id(record), None)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    _state.signal = name
    if _state.closing or _in_use or _in_db_library(frame):
        _state.pending = True
        for conn in list(_in_use.values()):
            _cancel(conn)
        return
    _state.pending = False
    raise Interrupted(name)


def _on_unraisable(unraisable) -> None:
    """`sys.unraisablehook`: an `Interrupted` raised inside a garbage-collector callback was swallowed; keep it
    pending, so the next safe point raises it. (Raising it again from here would only be swallowed again.)"""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, Interrupted):
        log.debug("the interruption landed in %r, where it cannot propagate: deferred", unraisable.object)
        _state.pending = True
        return
    (_state.previous_unraisablehook or sys.__unraisablehook__)(unraisable)


def _in_db_library(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_DB_LIBRARIES):
            return True
        frame = frame.f_back
    return False


def _cancel(conn) -> None:
    """Cancel the statement running on a DBAPI connection (a no-op when none is)."""
    try:
        if isinstance(conn, sqlite3.Connection):
            conn.interrupt()
        elif hasattr(conn, "cancel_safe"):
            conn.cancel_safe(timeout=5.0)
    except Exception as exc:  # noqa: BLE001 - a failed cancel leaves the statement to finish; the flag stays set
        log.warning("could not cancel the running statement: %s", exc)
