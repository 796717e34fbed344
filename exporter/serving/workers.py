"""The threads that run ``ModelHandler`` work for ``serve``, so that no request blocks the event loop.

Every prediction is decoded, run and encoded in one of at most ``size`` daemon threads, and the event loop
waits for it at most ``timeout`` seconds (``serve --request-timeout``): a slow or stuck model answers 504
while ``/ping`` and every other model keep answering. onnxruntime cannot interrupt a running graph, so a
request that timed out keeps its thread until the run ends by itself. Two bounds keep such runs from taking
the whole server:

* one model occupies at most ``per_model`` threads at a time (``serve --model-concurrency``); a request
  beyond that is answered 503 at once, naming the model, instead of queueing behind runs that may never end;
* all models together occupy at most ``size`` threads (``serve --worker-threads``); beyond that, 503 too.

The threads are daemon threads so that a stuck run never keeps the process from exiting.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

#: defaults of ``serve --worker-threads``, ``--model-concurrency`` and ``--request-timeout``
DEFAULT_WORKER_THREADS = 32
DEFAULT_MODEL_CONCURRENCY = 8
DEFAULT_REQUEST_TIMEOUT = 30.0


class Busy(Exception):
    """No thread may take the request now; the message says which bound was reached (the 503 text)."""


_Job = tuple[Callable[..., Any], tuple[Any, ...], str, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class WorkerPool:
    """At most ``size`` daemon threads, at most ``per_model`` of them for one key (a model name)."""

    def __init__(self, size: int = DEFAULT_WORKER_THREADS, per_model: int = DEFAULT_MODEL_CONCURRENCY) -> None:
        self.size = size
        self.per_model = min(per_model, size)
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._busy = 0
        self._by_key: dict[str, int] = {}

    def running(self, key: str) -> int:
        """How many threads ``key`` occupies now (runs that timed out included, until they end)."""
        return self._by_key.get(key, 0)

    def submit(self, key: str, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a thread; the returned future (of the running loop) gets its result.

        Raises :class:`Busy` when ``key`` already occupies ``per_model`` threads or every thread is taken.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._by_key.get(key, 0) >= self.per_model:
                raise Busy(
                    f"model {key!r} already has {self.per_model} requests running (serve --model-concurrency "
                    f"{self.per_model}); try again later"
                )
            if self._busy >= self.size:
                raise Busy(
                    f"all {self.size} worker threads are busy (serve --worker-threads {self.size}); try again later"
                )
            self._busy += 1
            self._by_key[key] = self._by_key.get(key, 0) + 1
            start_thread = self._busy > self._threads
            if start_thread:
                self._threads += 1
        if start_thread:
            threading.Thread(target=self._work, name=f"exporter-worker-{self._threads}", daemon=True).start()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((fn, args, key, loop, future))
        return future

    def _work(self) -> None:
        while True:
            fn, args, key, loop, future = self._jobs.get()
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                result, error = None, exc
            with self._lock:
                self._busy -= 1
                self._by_key[key] -= 1
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the request timed out (or its client left) meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
