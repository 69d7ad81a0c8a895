"""How a write transaction consumes what a producer (an iterator that reads the database) yields, per dialect."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine

from engine.background import in_background

T = TypeVar("T")


@contextmanager
def feeding_a_write(engine: Engine, items: Iterable[T]) -> Iterator[Iterable[T]]:
    """`items` as a write transaction on `engine` should consume them.

    SQLite: all produced before the transaction starts (a read inside it would wait for the write lock).
    PostgreSQL: produced in a worker thread, ahead of the writes; leaving the block stops the worker.
    """
    if engine.dialect.name != "postgresql":
        yield list(items)
        return
    background = in_background(iter(items), name="db-producer")
    try:
        yield background
    finally:
        background.close()  # stops the worker when the write failed half-way
