"""Dynamic batching: gather concurrent requests for a few ms, run them as one batch off the loop.

Requests wait in a bounded asyncio queue; one collector task takes up to ``max_batch_size``
of them (waiting ``wait_s`` for more when the previous batch had company) and hands the batch to ONE dedicated
worker thread, so torch and FAISS never run on the event loop and never run two batches at
once (which would oversubscribe the cores). While a batch runs, the next one accumulates.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("service.batcher")


class QueueFullError(Exception):
    """The bounded queue is full: the caller should answer 503 with Retry-After."""


class DeadlineError(Exception):
    """The request's deadline passed before it could be answered."""


@dataclass
class _Job:
    payload: Any
    deadline: float                  # loop.time() after which the answer is useless
    enqueued: float                  # loop.time() at submit
    future: asyncio.Future


def _fail(job: _Job, error: Exception) -> None:
    """Hand ``error`` to the job's caller. Marked as retrieved: a caller that already gave up
    (its own deadline) must not leave a 'Future exception was never retrieved' log behind."""
    if not job.future.done():
        job.future.set_exception(error)
        job.future.exception()


class Batcher:
    """``run_batch(payloads) -> results`` (same length, in order) executed in one thread.

    ``on_batch(size, queue_wait_s_list)`` is called on the loop after each batch, for metrics.
    """

    def __init__(self, run_batch: Callable[[list], list], *, max_batch_size: int, wait_s: float,
                 max_queue: int, on_batch: Callable[[int, list[float]], None] | None = None,
                 thread_init: Callable[[], None] | None = None) -> None:
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._wait_s = wait_s
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self._on_batch = on_batch
        # thread_init runs in the worker thread itself: OpenMP thread counts are per thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recall-worker",
                                            initializer=thread_init)
        self._task: asyncio.Task | None = None
        self._busy = False               # a batch is running on the worker thread
        self._last_size = 0              # requests in the previous batch
        # Running average of a batch's run time (s). A job whose deadline falls before a batch
        # would finish is refused rather than computed: past saturation, a FIFO queue otherwise
        # hands the worker only jobs about to expire, which time out during their batch (work
        # done, 503 sent: accepted throughput fell to ~10% of saturation in bench/overload.py).
        self._batch_s = 0.0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="batcher")

    async def submit(self, payload: Any, timeout_s: float) -> Any:
        """Queue ``payload`` and wait for its result; raises QueueFullError or DeadlineError."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        job = _Job(payload, now + timeout_s, now, loop.create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFullError(f"{self._queue.maxsize} requests already queued") from None
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(job.future)
        except TimeoutError:
            raise DeadlineError(f"no answer within {timeout_s * 1000:.0f} ms") from None

    def run_sync(self, fn: Callable[[], Any]) -> "asyncio.Future":
        """Run ``fn`` on the worker thread (e.g. a warm-up), serialised with batches."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _take_waiting(self, batch: list[_Job]) -> None:
        while len(batch) < self._max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _next_batch(self) -> list[_Job]:
        # One sleep rather than wait_for(queue.get()): a get cancelled by a timeout can lose
        # its item on Python < 3.12. The wait is only worth it under concurrency: while the
        # previous batch held a single request, waiting would only add latency.
        batch = [await self._queue.get()]
        self._take_waiting(batch)
        if len(batch) < self._max_batch_size and self._wait_s > 0 and self._last_size > 1:
            await asyncio.sleep(self._wait_s)
            self._take_waiting(batch)
        self._last_size = len(batch)
        return batch

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            now = loop.time()
            live = [job for job in batch if job.deadline > now + self._batch_s and not job.future.done()]
            for job in batch:
                if job not in live:
                    _fail(job, DeadlineError("deadline passed (or would, within a batch) while queued"))
            if not live:
                continue
            waits = [now - job.enqueued for job in live]
            self._busy = True
            started = loop.time()
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch,
                                                     [job.payload for job in live])
            except Exception as err:  # one bad batch must not stop the service; every caller sees it
                log.exception("batch of %d failed", len(live))
                results = [err] * len(live)
            finally:
                self._busy = False
                took = loop.time() - started
                self._batch_s = 0.7 * self._batch_s + 0.3 * took if self._batch_s else took
            for job, result in zip(live, results):
                if isinstance(result, Exception):
                    _fail(job, result)
                elif not job.future.done():
                    job.future.set_result(result)
            if self._on_batch is not None:
                self._on_batch(len(live), waits)

    async def drain_and_stop(self, timeout_s: float = 30.0) -> None:
        """Answer everything queued, then stop the collector and the worker thread."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        while (self._queue.qsize() or self._busy) and loop.time() < until:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass  # the collector's normal way out
        self._executor.shutdown(wait=True)
