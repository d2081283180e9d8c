"""Adaptive batching: a request reaching an idle worker runs at once; requests that arrive
while a batch runs queue up and form the next batch, so batches grow only with the load.

Requests wait in a bounded asyncio queue; one collector task takes everything waiting (up to
``max_batch_size``) and hands it to ONE dedicated worker thread, so torch and FAISS never run
on the event loop and never run two batches at once (which would oversubscribe the cores).
``wait_s`` > 0 adds a window for company after a batch that had company (off by default:
measured, it only added latency; see bench/README.md, "Serving").

Admission: a new request is refused (503 + Retry-After) when the queue is full, or when the
wait predicted from the measured service time and its queue position exceeds the latency
objective, so the requests that are accepted meet it.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("service.batcher")
SMOOTHING = 0.3                      # weight of the newest batch in the running batch time
RATE_WINDOW = 32                     # batches over which the per-request service time is measured


class QueueFullError(Exception):
    """Refused at arrival, before any work: the caller should answer 503 with Retry-After.
    ``reason`` labels the rejection metric: ``queue_full`` or ``latency_objective``."""

    def __init__(self, message: str, reason: str = "queue_full") -> None:
        super().__init__(message)
        self.reason = reason


class DeadlineError(Exception):
    """The request's deadline passed before it could be answered."""


@dataclass
class _Job:
    payload: Any
    deadline: float                  # loop.time() after which the answer is useless
    future: asyncio.Future


def _fail(job: _Job, error: Exception) -> None:
    """Hand ``error`` to the job's caller. Marked as retrieved: a caller that already gave up
    (its own deadline) must not leave a 'Future exception was never retrieved' log behind."""
    if not job.future.done():
        job.future.set_exception(error)
        job.future.exception()


def _smooth(average: float, value: float) -> float:
    return (1 - SMOOTHING) * average + SMOOTHING * value if average else value


class Batcher:
    """``run_batch(payloads) -> results`` (same length, in order) executed in one thread.

    ``objective_s`` > 0 refuses arrivals whose predicted wait exceeds it (0: queue bound only).
    """

    def __init__(self, run_batch: Callable[[list], list], *, max_batch_size: int, wait_s: float,
                 max_queue: int, objective_s: float = 0.0,
                 thread_init: Callable[[], None] | None = None) -> None:
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._wait_s = wait_s
        self._objective_s = objective_s
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        # thread_init runs in the worker thread itself: OpenMP thread counts are per thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recall-worker",
                                            initializer=thread_init)
        self._task: asyncio.Task | None = None
        self._running_since: float | None = None   # loop.time() the running batch started
        self._last_size = 0              # requests in the previous batch
        # Running average of a batch's run time (s). A job whose deadline falls before a batch
        # would finish is refused rather than computed: past saturation a FIFO queue otherwise
        # hands the worker only jobs about to expire.
        self._batch_s = 0.0
        # (run time, requests) of the last batches: the service time per request is their
        # ratio of sums, so one batch slowed by a neighbour's job does not swing admission.
        self._recent: deque[tuple[float, int]] = deque()
        self._recent_s, self._recent_requests = 0.0, 0   # their sums, kept as batches come and go

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="batcher")

    def predicted_wait_s(self, position: int) -> float:
        """Seconds until a request with ``position`` requests queued ahead of it is answered:
        what is left of the running batch plus the queue at the measured per-request time."""
        left = 0.0
        if self._running_since is not None:
            left = max(0.0, self._batch_s - (asyncio.get_running_loop().time() - self._running_since))
        return left + (position + 1) * self._recent_s / max(self._recent_requests, 1)

    def refusal(self) -> QueueFullError | None:
        """Why a request arriving now would be refused, or None. An idle worker with an empty
        queue never refuses: shedding can only shorten queueing, and there is none."""
        depth = self._queue.qsize()
        if depth >= self._queue.maxsize:
            return QueueFullError(f"{self._queue.maxsize} requests already queued")
        if self._objective_s <= 0 or (depth == 0 and self._running_since is None):
            return None
        wait = self.predicted_wait_s(depth)
        if wait <= self._objective_s:
            return None
        return QueueFullError(f"predicted wait {wait * 1000:.0f} ms exceeds the latency objective "
                              f"{self._objective_s * 1000:.0f} ms", reason="latency_objective")

    async def submit(self, payload: Any, timeout_s: float) -> Any:
        """Queue ``payload`` and wait for its result; raises QueueFullError or DeadlineError."""
        refused = self.refusal()
        if refused is not None:
            raise refused
        loop = asyncio.get_running_loop()
        job = _Job(payload, loop.time() + timeout_s, loop.create_future())
        self._queue.put_nowait(job)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(job.future)
        except TimeoutError:
            raise DeadlineError(f"no answer within {timeout_s * 1000:.0f} ms") from None

    def _remember(self, took_s: float, size: int) -> None:
        self._recent.append((took_s, size))
        self._recent_s += took_s
        self._recent_requests += size
        if len(self._recent) > RATE_WINDOW:
            old_s, old_size = self._recent.popleft()
            self._recent_s -= old_s
            self._recent_requests -= old_size

    def _take_waiting(self, batch: list[_Job]) -> None:
        while len(batch) < self._max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _next_batch(self) -> list[_Job]:
        # One sleep rather than wait_for(queue.get()): a get cancelled by a timeout can lose
        # its item on Python < 3.12. A window is only worth it under concurrency: while the
        # previous batch held a single request, waiting would only add latency.
        batch = [await self._queue.get()]
        self._take_waiting(batch)
        if len(batch) < self._max_batch_size and self._wait_s > 0 and self._last_size > 1:
            await asyncio.sleep(self._wait_s)
            self._take_waiting(batch)
        self._last_size = len(batch)
        return batch

    def _live(self, batch: list[_Job], now: float) -> list[_Job]:
        """The jobs of ``batch`` still worth computing; the others are refused."""
        live = [job for job in batch if job.deadline > now + self._batch_s and not job.future.done()]
        for job in batch:
            if job not in live:
                _fail(job, DeadlineError("deadline passed (or would, within a batch) while queued"))
        return live

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            live = self._live(batch, loop.time())
            if not live:
                continue
            self._running_since = started = loop.time()
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch,
                                                     [job.payload for job in live])
            except Exception as err:  # one bad batch must not stop the service; every caller sees it
                log.exception("batch of %d failed", len(live))
                results = [err] * len(live)
            finally:
                self._running_since = None
                took = loop.time() - started
                self._batch_s = _smooth(self._batch_s, took)
                self._remember(took, len(live))
            for job, result in zip(live, results):
                if isinstance(result, Exception):
                    _fail(job, result)
                elif not job.future.done():
                    job.future.set_result(result)

    async def drain_and_stop(self, timeout_s: float = 30.0) -> None:
        """Answer everything queued, then stop the collector and the worker thread."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        while (self._queue.qsize() or self._running_since is not None) and loop.time() < until:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass  # the collector's normal way out
        self._executor.shutdown(wait=True)
