"""Checkpoint saves on a background thread, bounded and never silently failing.

:class:`AsyncSaver` runs submitted save jobs one at a time, in order, on its
own thread. The caller of :meth:`AsyncSaver.submit` pays only for taking a
slot (at most ``max_in_flight`` jobs queued or running: when all slots are
taken, ``submit`` blocks until one frees — back-pressure instead of unbounded
snapshot memory).

A job that raises is logged at ERROR with its context (model, step, ...)
when it fails, its future carries the exception, and the *next* ``submit``
or ``wait`` raises :class:`~schemas.errors.CheckpointError` chained to it, so
a training loop that never looks at futures still learns of it.

:meth:`AsyncSaver.close` flushes (waits for every submitted job) and stops
the thread; it is also run at interpreter exit. :func:`install_sigterm_flush`
makes SIGTERM flush pending saves, then lets the process terminate as SIGTERM
would have.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import signal
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from types import FrameType
from typing import Any, Protocol, TypeVar

from schemas.errors import CheckpointError

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Job:
    def __init__(self, fn: Callable[[], Any], future: Future[Any], context: dict[str, Any]) -> None:
        self.fn = fn
        self.future = future
        self.context = context


class AsyncSaver:
    """One background thread that runs save jobs in submission order.

    Parameters
    ----------
    max_in_flight:
        Jobs allowed queued or running at once; ``submit`` blocks beyond it.
    name:
        Thread name (shows in stack dumps).
    """

    def __init__(self, *, max_in_flight: int = 1, name: str = "driftloop-checkpoint") -> None:
        if max_in_flight < 1:
            raise CheckpointError("max_in_flight must be at least 1", max_in_flight=max_in_flight)
        self.max_in_flight = max_in_flight
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._failure: tuple[BaseException, dict[str, Any]] | None = None
        self._pending: set[Future[Any]] = set()
        # Re-entrant: the SIGTERM handler may run close() on a thread that holds it.
        self._lock = threading.RLock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        atexit.register(_close_at_exit, weakref.ref(self))

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_result(job.fn())
            except BaseException as exc:  # a save must never die silently
                facts = ", ".join(f"{k}={v}" for k, v in job.context.items())
                log.exception("asynchronous checkpoint save failed (%s)", facts)
                with self._lock:
                    self._failure = (exc, job.context)
                job.future.set_exception(exc)
            finally:
                with self._lock:
                    self._pending.discard(job.future)
                self._slots.release()

    def raise_failure(self) -> None:
        """Raise (once) the failure of an earlier job, if any.

        Raises
        ------
        CheckpointError
            Chained to the original exception, with the failed job's context.
        """
        with self._lock:
            failure, self._failure = self._failure, None
        if failure is not None:
            exc, context = failure
            raise CheckpointError(
                f"an asynchronous checkpoint save failed: {exc}", **context
            ) from exc

    def submit(self, prepare: Callable[[], Callable[[], T]], **context: Any) -> Future[T]:
        """Run ``prepare`` here once a slot is free, then the job it returns on the saver thread.

        ``prepare`` is where the caller takes its in-memory snapshot: it runs
        on the calling thread only after a slot was taken, so at most
        ``max_in_flight`` snapshots exist. ``context`` (model, step, ...) is
        logged and attached to the error if the job fails.

        Raises
        ------
        CheckpointError
            When an earlier job failed (raised once), or the saver is closed.
        Exception
            Whatever ``prepare`` raises (the slot is given back).
        """
        self.raise_failure()
        if self._closed:
            raise CheckpointError("the checkpoint saver is closed", **context)
        self._slots.acquire()
        try:
            job = prepare()
        except BaseException:
            self._slots.release()
            raise
        future: Future[T] = Future()
        with self._lock:
            self._pending.add(future)
        self._queue.put(_Job(job, future, context))
        return future

    def wait(self) -> None:
        """Block until every submitted job finished; raise an earlier failure if any."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.exception()  # waits; the failure itself is raised below
        self.raise_failure()

    def close(self) -> None:
        """Flush every submitted job, then stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self._queue.put(None)
            if threading.current_thread() is not self._thread:
                self._thread.join()


def _close_at_exit(ref: weakref.ref[AsyncSaver]) -> None:
    saver = ref()
    if saver is not None:
        try:
            saver.close()
        except CheckpointError:
            log.exception("flushing checkpoints at exit failed")


class Flushable(Protocol):
    def close(self) -> None: ...


def install_sigterm_flush(target: Flushable) -> None:
    """On SIGTERM, call ``target.close()`` (flushing pending saves), then terminate.

    A previously installed Python handler is called after the flush; otherwise
    the default action is restored and SIGTERM re-raised, so the process ends
    as if the flush had not been there. Must be called from the main thread.
    A failed flush is logged (the saver already logged the save itself) and
    the process still terminates.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def _on_sigterm(signum: int, frame: FrameType | None) -> None:
        try:
            target.close()
        except Exception:
            log.exception("flushing checkpoints on SIGTERM failed")
        finally:
            if callable(previous):
                signal.signal(signal.SIGTERM, previous)
                previous(signum, frame)
            else:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, _on_sigterm)
