"""Running a producer (host batching and host-to-device copies) ahead of the consumer."""

import queue
import sys
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterator[T], size: int = 2) -> Iterator[T]:
    """Yields `items`, produced by a background thread up to `size` items ahead.

    With items that are device batches, the next batches are read and copied to the
    devices while the current step computes. Errors in the producer are re-raised here.
    Closing the stream stops the producer; one still open at interpreter exit is left to
    die with the process.
    """
    buffer: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
            buffer.put(_DONE)
        except BaseException as error:  # handed to the consumer
            buffer.put(error)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # At exit (a stream kept alive by a traceback is collected then) daemon threads no
        # longer run: Python 3.13 parks them for good, so waiting for this one would hang.
        while thread.is_alive() and not sys.is_finalizing():
            # Unblock a producer waiting on a full buffer.
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)
