"""How a write transaction consumes what a producer (an iterator that reads the database) yields, per dialect."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine

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
    background = in_background(iter(items))
    try:
        yield background
    finally:
        background.close()  # stops the worker when the write failed half-way


def in_background(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run the iterator `items` in a worker thread, at most `depth` items ahead; errors re-raise here."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message) -> bool:
        while not stop.is_set():
            try:
                slots.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(("error", exc))

    worker = threading.Thread(target=work, name="db-producer", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "error":
                raise value
            if kind == "done":
                return
            yield value
    finally:
        stop.set()
        worker.join()
