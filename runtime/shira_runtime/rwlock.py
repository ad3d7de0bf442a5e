"""A readers-writer lock: many inferences run at once; a patch waits for them and blocks new ones.

This is what guarantees that no inference ever sees half-patched weights. Writers are preferred so a steady
stream of inferences cannot starve a switch.
"""
import threading
from contextlib import contextmanager


class RWLock:
    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._read_ctx = _ReadContext(self)

    def read(self):
        """`with lock.read():` (a plain object, not a generator: this sits on every inference call)."""
        return self._read_ctx

    def _acquire_read(self):
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1

    def _release_read(self, *exc):
        with self._cond:
            self._readers -= 1
            if not self._readers and self._waiting_writers:
                self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _ReadContext:
    __slots__ = ("_lock",)

    def __init__(self, lock: RWLock):
        self._lock = lock

    def __enter__(self):
        self._lock._acquire_read()

    def __exit__(self, *exc):
        self._lock._release_read()
