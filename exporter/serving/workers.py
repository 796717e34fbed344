"""The threads that run the models for ``serve``, so that no slow request blocks the event loop.

Every prediction's model run goes to one of at most ``size`` daemon threads (small requests of a model proven
fast excepted, below), and its request waits
for it at most ``timeout`` seconds (``serve --request-timeout``): a slow or stuck model answers 504 while
``/ping`` and every other model keep answering. onnxruntime cannot interrupt a running graph, so a run whose
request timed out keeps its thread until it ends by itself. Two bounds keep such runs from taking the whole
server:

* one model occupies at most ``per_model`` threads at a time (``serve --model-concurrency``);
* all models together occupy at most ``size`` threads (``serve --worker-threads``).

A request that finds its bound reached waits for a thread within the same deadline (a burst of requests to a
healthy model is served as runs end, microseconds apart); when the deadline passes first it is answered 503
naming the bound, instead of queueing behind runs that may never end. The threads are daemon threads so that a
stuck run never keeps the process from exiting. The counting happens on the event loop, the threads only run
the work.

The hand-off to a thread and back costs about 150 us of CPU per request (the event loop and the worker contend
for the GIL; docs/benchmark-history.md), as much as a whole batch-1 answer. :meth:`WorkerPool.predict` therefore runs a
small request (at most :data:`INLINE_MAX_ROWS` rows) on the event loop when its model has proven fast: its last
:data:`INLINE_AFTER` small runs each took less than ``inline_seconds`` of CPU time (``serve --inline-max-ms``, far
below any request deadline) and none of its runs is in a thread now. One run at or above that sends the model back
to the threads until it has proven fast again, and a model seen for the first time (or one whose run never ends) only
ever runs in a thread, so the 504 deadline still protects against models that are slow from the start.
``--inline-max-ms 0`` sends every run to a thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

#: defaults of ``serve --worker-threads``, ``--model-concurrency`` and ``--request-timeout``
DEFAULT_WORKER_THREADS = 32
DEFAULT_MODEL_CONCURRENCY = 8
DEFAULT_REQUEST_TIMEOUT = 30.0
#: default of ``serve --inline-max-ms`` (as seconds): runs faster than this may stay on the event loop
DEFAULT_INLINE_SECONDS = 0.002
#: most rows a request run on the event loop may have; larger batches always go to a thread
INLINE_MAX_ROWS = 64
#: consecutive fast small runs a model needs before its small requests run on the event loop
INLINE_AFTER = 16


class Busy(Exception):
    """No thread became free for the request within its deadline; the message says which bound (the 503)."""


class Expired(Exception):
    """The request's deadline passed while its run was going on (the 504); the run itself goes on."""


_Job = tuple[Callable[..., Any], tuple[Any, ...], str, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class WorkerPool:
    """At most ``size`` daemon threads, at most ``per_model`` of them for one key (a model name).

    Use it from one event loop: :meth:`run` is called there and every count changes there.
    """

    def __init__(
        self,
        size: int = DEFAULT_WORKER_THREADS,
        per_model: int = DEFAULT_MODEL_CONCURRENCY,
        inline_seconds: float = DEFAULT_INLINE_SECONDS,
    ) -> None:
        self.size = size
        self.per_model = min(per_model, size)
        self.inline_seconds = inline_seconds
        #: per key: consecutive small runs faster than ``inline_seconds`` (reset by a slow one)
        self._fast: dict[str, int] = {}
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._threads = 0
        self._running = 0
        self._all: asyncio.Semaphore | None = None
        self._by_key: dict[str, asyncio.Semaphore] = {}
        self._counts: dict[str, int] = {}

    def running(self, key: str) -> int:
        """How many threads ``key`` occupies now (runs whose request timed out included, until they end)."""
        return self._counts.get(key, 0)

    async def run(self, key: str, timeout: float, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` computed in a thread, waited for at most ``timeout`` seconds in all.

        Raises :class:`Busy` when no thread became free for ``key`` in time, :class:`Expired` when the run did
        not end in time, and whatever ``fn`` raised.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        if self._all is None:
            self._all = asyncio.Semaphore(self.size)
        mine = self._by_key.get(key)
        if mine is None:
            mine = self._by_key[key] = asyncio.Semaphore(self.per_model)
        if not await _acquire(mine, end - loop.time()):
            raise Busy(
                f"model {key!r} had all its {self.per_model} worker threads busy for the whole request timeout of "
                f"{timeout:g}s (serve --model-concurrency {self.per_model}); try again later"
            )
        if not await _acquire(self._all, end - loop.time()):
            mine.release()
            raise Busy(
                f"all {self.size} worker threads were busy for the whole request timeout of {timeout:g}s "
                f"(serve --worker-threads {self.size}); try again later"
            )
        future: asyncio.Future[Any] = loop.create_future()
        self._start(key, (fn, args, key, loop, future))
        deadline = loop.call_later(max(0.0, end - loop.time()), _settle, future, None, Expired())
        try:
            return await future
        finally:
            deadline.cancel()

    async def predict(
        self, key: str, timeout: float, fn: Callable[[Any], Any], arg: Any, rows: int
    ) -> tuple[Any, float]:
        """``(fn(arg), seconds the run took)``: on the event loop when ``key`` has proven fast for small requests
        (see the module docstring), else in a thread as :meth:`run` (same errors)."""
        small = rows <= INLINE_MAX_ROWS
        if (
            small
            and self._fast.get(key, 0) >= INLINE_AFTER
            and not self._counts.get(key)
            and timeout > 100 * self.inline_seconds
        ):
            return self._timed_small(key, fn, arg)
        timed: tuple[Any, float]
        if not small:
            timed = await self.run(key, timeout, _timed, fn, arg)
        else:
            timed = await self.run(key, timeout, self._timed_small, key, fn, arg)
        return timed

    def _timed_small(self, key: str, fn: Callable[[Any], Any], arg: Any) -> tuple[Any, float]:
        """``fn(arg)`` and its wall time (on the loop or in a thread). The calling thread's CPU time decides
        whether ``key`` counts as fast: on a busy machine the wall time also holds the time the thread waited
        for a core, which would switch the fast path off exactly when it saves the most. (Plain int stores:
        safe under the GIL.)"""
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            result = fn(arg)
        except BaseException:
            self._fast[key] = 0
            raise
        fast = time.thread_time() - cpu < self.inline_seconds
        self._fast[key] = self._fast.get(key, 0) + 1 if fast else 0
        return result, time.perf_counter() - wall

    def _start(self, key: str, job: _Job) -> None:
        """Count the run (its thread and key slot are held) and hand it to a thread, starting one if needed."""
        self._running += 1
        self._counts[key] = self._counts.get(key, 0) + 1
        if self._running > self._threads:
            self._threads += 1
            threading.Thread(target=self._work, name=f"exporter-worker-{self._threads}", daemon=True).start()
        self._jobs.put(job)

    def _finished(self, key: str, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        """On the event loop: a run ended; free its thread and key slot, answer its request if it still waits."""
        self._running -= 1
        self._counts[key] -= 1
        self._by_key[key].release()
        assert self._all is not None
        self._all.release()
        _settle(future, result, error)

    def _work(self) -> None:
        while True:
            fn, args, key, loop, future = self._jobs.get()
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(self._finished, key, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass


async def _acquire(semaphore: asyncio.Semaphore, timeout: float) -> bool:
    """Take one slot of ``semaphore``, waiting at most ``timeout`` seconds; whether it was taken."""
    if not semaphore.locked():
        await semaphore.acquire()  # free: returns at once
        return True
    if timeout <= 0:
        return False
    try:
        await asyncio.wait_for(semaphore.acquire(), timeout)
    except TimeoutError:
        return False
    return True


def _timed(fn: Callable[[Any], Any], arg: Any) -> tuple[Any, float]:
    """In a thread: ``fn(arg)`` and the seconds it took."""
    start = time.perf_counter()
    return fn(arg), time.perf_counter() - start


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the deadline passed (or the request went away) before the run ended
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
