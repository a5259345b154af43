"""Checkpoint saves on a background thread, bounded and never silently failing.

:class:`AsyncSaver` runs submitted save jobs one at a time, in order, on its
own thread. The caller of :meth:`AsyncSaver.submit` pays only for being
admitted. Admission is bounded two ways, so snapshot memory is bounded and
small states are not throttled like big ones: a job is admitted when nothing
is pending, or when fewer than ``max_in_flight`` jobs are queued or running
and their snapshots plus this one's (``nbytes``) fit in ``max_pending_bytes``.
When a job is not admitted, ``submit`` blocks until it is (back-pressure), or
with ``block=False`` returns None at once without calling ``prepare`` (the
caller may then coalesce that save into a later one).

A job that raises is logged at ERROR with its context (model, step, ...)
when it fails and its future carries the exception. Unless it was submitted
with ``handled=True`` (the caller promises to look at the future), the *next*
``submit`` or ``wait`` also raises :class:`~schemas.errors.CheckpointError`
chained to it, so a training loop that never looks at futures still learns
of it.

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
    def __init__(
        self,
        fn: Callable[[], Any],
        future: Future[Any],
        context: dict[str, Any],
        nbytes: int,
        handled: bool,
    ) -> None:
        self.fn = fn
        self.future = future
        self.context = context
        self.nbytes = nbytes
        self.handled = handled


class AsyncSaver:
    """One background thread that runs save jobs in submission order.

    Parameters
    ----------
    max_in_flight:
        Jobs allowed queued or running at once; ``submit`` blocks beyond it.
    max_pending_bytes:
        Snapshot bytes allowed queued or running at once (a job bigger than
        this still runs, alone); None: no byte bound.
    name:
        Thread name (shows in stack dumps).
    """

    def __init__(
        self,
        *,
        max_in_flight: int = 1,
        max_pending_bytes: int | None = None,
        name: str = "driftloop-checkpoint",
    ) -> None:
        if max_in_flight < 1:
            raise CheckpointError("max_in_flight must be at least 1", max_in_flight=max_in_flight)
        self.max_in_flight = max_in_flight
        self.max_pending_bytes = max_pending_bytes
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._failure: tuple[BaseException, dict[str, Any]] | None = None
        self._pending: set[Future[Any]] = set()
        self._pending_bytes = 0
        # Re-entrant: the SIGTERM handler may run close() on a thread that holds it.
        self._lock = threading.RLock()
        self._freed = threading.Condition(self._lock)
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
                if not job.handled:
                    with self._lock:
                        self._failure = (exc, job.context)
                job.future.set_exception(exc)
            finally:
                with self._freed:
                    self._pending.discard(job.future)
                    self._pending_bytes -= job.nbytes
                    self._freed.notify_all()

    @property
    def in_flight(self) -> int:
        """Jobs queued or running now."""
        with self._lock:
            return len(self._pending)

    def admits(self, nbytes: int = 0) -> bool:
        """Whether a job of ``nbytes`` would be admitted now without waiting."""
        with self._lock:
            return self._admits(nbytes)

    def _admits(self, nbytes: int) -> bool:
        if not self._pending:
            return True
        if len(self._pending) >= self.max_in_flight:
            return False
        budget = self.max_pending_bytes
        return budget is None or self._pending_bytes + nbytes <= budget

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

    def submit(
        self,
        prepare: Callable[[], Callable[[], T]],
        *,
        nbytes: int = 0,
        block: bool = True,
        handled: bool = False,
        **context: Any,
    ) -> Future[T] | None:
        """Run ``prepare`` here once admitted, then the job it returns on the saver thread.

        ``prepare`` is where the caller takes its in-memory snapshot (of
        ``nbytes``): it runs on the calling thread only once the job is
        admitted, so pending snapshots stay within the bounds. With
        ``block=False`` a job that is not admitted at once is not submitted:
        None is returned and ``prepare`` is not called. ``handled=True``: the
        caller looks at the future for the job's failure, which is then not
        raised again by a later ``submit`` or ``wait``. ``context`` (model,
        step, ...) is logged and attached to the error if the job fails.

        Raises
        ------
        CheckpointError
            When an earlier unhandled job failed (raised once), or the saver is closed.
        Exception
            Whatever ``prepare`` raises (the admission is given back).
        """
        self.raise_failure()
        if self._closed:
            raise CheckpointError("the checkpoint saver is closed", **context)
        future: Future[T] = Future()
        with self._freed:
            while not self._admits(nbytes):
                if not block:
                    return None
                self._freed.wait()
            self._pending.add(future)
            self._pending_bytes += nbytes
        try:
            job = prepare()
        except BaseException as exc:
            future.set_exception(exc)  # a concurrent wait() on it returns
            with self._freed:
                self._pending.discard(future)
                self._pending_bytes -= nbytes
                self._freed.notify_all()
            raise
        self._queue.put(_Job(job, future, context, nbytes, handled))
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
