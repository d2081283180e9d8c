"""Adaptive batching: a request reaching an idle worker runs at once; requests that arrive
while every worker is busy queue up and form the next batch, so batches grow only with the load.

Requests wait in a bounded asyncio queue; one collector task waits for a free worker, takes
everything waiting (up to ``max_batch_size``) and hands it to that worker thread, so torch and
FAISS never run on the event loop. ``workers`` threads (each with its own single-threaded
torch/OpenMP settings, set by ``thread_init`` in the thread itself) run up to that many batches
at once: two callers on a 2-core machine run in parallel instead of one waiting for the other.
The most recently used free worker is taken (a lone caller always lands on the same thread);
a batch starts beside a running one only with few requests in flight, and while overlapping
batches together get more core time than one alone (service/timing.py ``OverlapGate``).
``wait_s`` > 0 adds a window for company to a batch whose first request had to wait for
its worker or came with others (never to a lone request that reaches an idle one): one batch
instead of two halves taking turns (bench/README.md, "Serving, fourth pass").

Admission: a new request is refused (503 + Retry-After) when the queue is full, or when the
wait predicted from the measured service time, the running batches and its queue position
exceeds the latency objective, so the requests that are accepted meet it.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from service.timing import BATCH_ERROR_QUANTILE, OverlapGate, error_margin, fit_batch_time, replay_wait

log = logging.getLogger("service.batcher")
RATE_WINDOW = 32                     # batches over which the batch service time is measured
ERROR_WINDOW = 512                   # answered requests over which the prediction error is measured
BATCH_ERROR_WINDOW = 512             # batches over which the batch-time error is measured (its 99th
                                     # percentile needs more than RATE_WINDOW samples)
ARRIVAL_WINDOW = 64                  # queued requests over which the arrival rate is measured
LAG_PROBE_S = 0.01                   # how often the event loop's lag is probed
LAG_WINDOW = 50                      # probes over which it is measured (0.5 s)


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
    queued: float = 0.0              # loop.time() it was queued
    predicted: float | None = None   # predicted seconds from queueing to answer (None: no measurements yet)
    due: float = math.inf            # loop.time() by which the latency objective wants it answered
    timer: asyncio.TimerHandle | None = None   # fails the job at its deadline


@dataclass
class _Running:
    started: float                   # loop.time()
    size: int
    overlapped: bool                 # another batch ran at some time during this one


def _fail(job: _Job, error: Exception) -> None:
    """Hand ``error`` to the job's caller. Marked as retrieved: a caller that already gave up
    must not leave a 'Future exception was never retrieved' log behind."""
    if job.timer is not None:
        job.timer.cancel()
    if not job.future.done():
        job.future.set_exception(error)
        job.future.exception()


def _expire(job: _Job, timeout_s: float) -> None:
    _fail(job, DeadlineError(f"no answer within {timeout_s * 1000:.0f} ms"))


class Batcher:
    """``run_batch(payloads) -> results`` (same length, in order) executed in ``workers`` threads,
    one batch per thread at a time.

    ``objective_s`` > 0 refuses arrivals whose predicted wait exceeds it (0: queue bound only).
    """

    def __init__(self, run_batch: Callable[[list], list], *, max_batch_size: int, wait_s: float,
                 max_queue: int, objective_s: float = 0.0, workers: int = 1, overlap_in_flight: int = 0,
                 thread_init: Callable[[], None] | None = None) -> None:
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._wait_s = wait_s
        self._objective_s = objective_s
        self._workers = workers
        self._overlap_in_flight = overlap_in_flight      # per worker; 0: no limit
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        # One single-thread executor per worker; thread_init runs in the worker thread itself:
        # OpenMP thread counts are per thread.
        self._executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"recall-worker-{w}",
                                              initializer=thread_init) for w in range(workers)]
        self._idle = list(range(workers))[::-1]          # free workers, most recently used last
        self._free: asyncio.Semaphore | None = None      # free workers; created on the loop by start()
        self._all_idle: asyncio.Event | None = None      # set while no batch runs
        self._gate = OverlapGate(workers)
        self._task: asyncio.Task | None = None
        self._running: dict[int, _Running] = {}          # batch id -> its start, size, overlap
        self._in_flight: set[asyncio.Task] = set()
        # (run time, requests) of the last batches, and the line fitted through them: a batch of
        # n takes overhead + n * per_request seconds. It predicts waits (admission), and a job
        # whose deadline falls before its batch would finish is refused rather than computed:
        # past saturation a FIFO queue otherwise hands the workers only jobs about to expire.
        self._recent: deque[tuple[float, int]] = deque(maxlen=RATE_WINDOW)
        self._arrivals: deque[float] = deque(maxlen=ARRIVAL_WINDOW)   # loop.time() of the last queued requests
        self._overhead_s, self._per_request_s = 0.0, 0.0
        self._errors: deque[float] = deque(maxlen=ERROR_WINDOW)   # actual - predicted, answered requests
        self._margin_s = 0.0
        self._batch_errors: deque[float] = deque(maxlen=BATCH_ERROR_WINDOW)   # actual - predicted batch times
        self._lags: deque[float] = deque(maxlen=LAG_WINDOW)   # how late the loop ran a due timer (s)
        self._lag_task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def busy(self) -> int:
        """Workers running a batch now."""
        return len(self._running)

    @property
    def overlap_efficiency(self) -> float:
        """Running CPU share per thread of batches that overlapped (see OverlapGate)."""
        return self._gate.efficiency

    def _few_in_flight(self) -> bool:
        """At most ``overlap_in_flight`` requests per worker running or queued (0: any number):
        spare workers serve lone callers at once; beyond it one worker at a time makes full
        batches (two half batches cost ~1.4x per request; bench/README.md, "Serving")."""
        if not self._overlap_in_flight:
            return True
        in_flight = sum(run.size for run in self._running.values()) + self._queue.qsize()
        return in_flight <= self._overlap_in_flight * self._workers

    def _usable_workers(self) -> int:
        return self._workers if self._gate.open and self._few_in_flight() else 1

    def start(self) -> None:
        self._free = asyncio.Semaphore(self._workers)
        self._all_idle = asyncio.Event()
        self._all_idle.set()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="batcher")
        self._lag_task = asyncio.get_running_loop().create_task(self._probe_lag(), name="loop-lag")

    async def _probe_lag(self) -> None:
        """How late the event loop runs what is due: a request's bytes wait about that long in
        its socket before the loop reads them, time no timestamp of the service sees."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_PROBE_S
            await asyncio.sleep(LAG_PROBE_S)
            self._lags.append(max(0.0, loop.time() - due))

    def predicted_wait_s(self, position: int) -> float:
        """Seconds until a request with ``position`` requests queued ahead of it is answered
        (service/timing.py ``replay_wait`` over the running batches and usable workers)."""
        now = asyncio.get_running_loop().time()
        left = [max(0.0, run.started + self.batch_s(run.size) - now) for run in self._running.values()]
        left += [0.0] * (self._usable_workers() - len(left))
        return replay_wait(left, position, self._max_batch_size, self.batch_s, self.arrival_rate(now))

    def refusal(self, waited_s: float = 0.0) -> QueueFullError | None:
        """Why a request arriving now (``waited_s`` after it reached the service) would be
        refused, or None. A free worker with an empty queue never refuses: shedding can only
        shorten queueing, and there is none. Otherwise it is refused when the predicted wait
        plus the margin of recent prediction errors exceeds the latency objective."""
        depth = self._queue.qsize()
        if depth >= self._queue.maxsize:
            return QueueFullError(f"{self._queue.maxsize} requests already queued")
        if self._objective_s <= 0 or (depth == 0 and len(self._running) < self._usable_workers()):
            return None
        wait = waited_s + self.predicted_wait_s(depth)
        if wait + self._margin_s <= self._objective_s:
            return None
        return QueueFullError(f"predicted wait {wait * 1000:.0f} ms (+ {self._margin_s * 1000:.0f} ms margin) exceeds "
                              f"the latency objective {self._objective_s * 1000:.0f} ms", reason="latency_objective")

    def arrival_rate(self, now: float) -> float:
        """Requests queued per second, over the last ARRIVAL_WINDOW ones (0 until two)."""
        if len(self._arrivals) < 2:
            return 0.0
        return (len(self._arrivals) - 1) / max(now - self._arrivals[0], 1e-3)

    def enqueue(self, payload: Any, timeout_s: float, waited_s: float = 0.0) -> asyncio.Future:
        """Queue ``payload`` (which reached the service ``waited_s`` ago); the future gets its
        result, or DeadlineError when there is none within ``timeout_s``. Raises QueueFullError
        when refused now. A caller may add a callback instead of awaiting (mind serve's HTTP
        protocol does: no task per request)."""
        refused = self.refusal(waited_s)
        if refused is not None:
            raise refused
        loop = asyncio.get_running_loop()
        now = loop.time()
        predicted = self.predicted_wait_s(self._queue.qsize()) if self._recent else None
        job = _Job(payload, now + timeout_s, loop.create_future(), now, predicted,
                   now - waited_s + self._objective_s if self._objective_s > 0 else math.inf)
        job.timer = loop.call_at(job.deadline, _expire, job, timeout_s)
        self._arrivals.append(now)
        self._queue.put_nowait(job)
        return job.future

    async def submit(self, payload: Any, timeout_s: float, waited_s: float = 0.0) -> Any:
        """``enqueue`` and wait for the result; raises QueueFullError or DeadlineError."""
        return await self.enqueue(payload, timeout_s, waited_s)

    def batch_s(self, size: int) -> float:
        """Predicted run time (s) of a batch of ``size`` requests, from the recent batches."""
        return self._overhead_s + size * self._per_request_s

    def _remember(self, took_s: float, size: int) -> None:
        if self._recent:
            self._batch_errors.append(took_s - self.batch_s(size))
        self._recent.append((took_s, size))
        self._overhead_s, self._per_request_s = fit_batch_time(list(self._recent))

    def _take_waiting(self, batch: list[_Job], limit: int) -> None:
        limit = min(limit, self._max_batch_size)
        while len(batch) < limit and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _next_batch(self) -> list[_Job]:
        # One sleep rather than wait_for(queue.get()): a get cancelled by a timeout can lose
        # its item on Python < 3.12. Requests that queued together are shared among the free
        # workers (this one included), so two callers arriving at once at two idle workers run
        # in parallel, not in one batch. A window for company is only worth it under load and
        # with no other worker free: when requests waited for this worker or came several at
        # once (a lone request at an idle worker runs at once). Callers that send again on an
        # answer then join the waiting ones, instead of two half batches taking turns.
        queued = not self._queue.empty()                  # the first request waited for this worker
        batch = [await self._queue.get()]
        queued = queued or not self._queue.empty()        # or it did not come alone
        free = max(1, self._usable_workers() - len(self._running))
        self._take_waiting(batch, -(-(1 + self._queue.qsize()) // free))
        if len(batch) < self._max_batch_size and self._wait_s > 0 and queued and free == 1:
            await asyncio.sleep(self._wait_s)
            self._take_waiting(batch, self._max_batch_size)
        return batch

    def _live(self, batch: list[_Job], now: float) -> list[_Job]:
        """The jobs of ``batch`` still worth computing; the others are refused: past their
        deadline, or (CoDel-like, on the time actually queued) predicted to be answered after
        the latency objective (unless even a lone request's batch takes longer than the
        objective: refusing cannot help then). Admission predicts a wait at arrival; this check
        at dispatch bounds an accepted request's time by one batch's prediction error, not the
        whole queue's."""
        finish = now + self.batch_s(len(batch))
        # the batch times' own error, and the time requests waited unseen in their sockets
        margin = error_margin(list(self._batch_errors), self._objective_s, BATCH_ERROR_QUANTILE)
        lag = error_margin(list(self._lags), self._objective_s)
        # the objective check only where the service can meet it: a lone request's batch within it
        late = finish + margin + lag if self.batch_s(1) + margin <= self._objective_s else -math.inf
        live = []
        for job in batch:
            if job.future.done():
                continue
            if job.deadline <= finish:
                _fail(job, DeadlineError("deadline passed (or would, within a batch) while queued"))
            elif job.due < late:
                _fail(job, QueueFullError(f"queued {(now - job.queued) * 1000:.0f} ms; it would be answered after the "
                                          f"latency objective {self._objective_s * 1000:.0f} ms", reason="latency_objective"))
            else:
                live.append(job)
        return live

    async def _collect(self) -> None:
        """Wait for a free worker (and, beside a running batch, for the overlap gate), then
        give it everything queued (up to a batch)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._free.acquire()
            try:
                while self._running and not (self._few_in_flight() and self._gate.allows(loop.time())):
                    await self._all_idle.wait()
                batch = await self._next_batch()
            except asyncio.CancelledError:
                self._free.release()
                raise
            live = self._live(batch, loop.time())
            if not live:
                self._free.release()
                continue
            for run in self._running.values():
                run.overlapped = True
            key = id(live)
            self._running[key] = _Running(loop.time(), len(live), bool(self._running))   # busy from now
            self._all_idle.clear()
            task = loop.create_task(self._execute(key, live, self._idle.pop()))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _timed_batch(self, payloads: list) -> tuple[list, float, float]:
        """In the worker thread: the batch's results, and the CPU and wall seconds the thread
        spent on it (wall taken here: the hand-offs to and from the loop are no core's work)."""
        cpu, wall = time.thread_time(), time.perf_counter()
        results = self._run_batch(payloads)
        return results, time.thread_time() - cpu, time.perf_counter() - wall

    async def _execute(self, key: int, live: list[_Job], worker: int) -> None:
        """Run one batch on worker ``worker``'s thread, record its time, answer its callers."""
        loop = asyncio.get_running_loop()
        run = self._running[key]
        try:
            results, cpu_s, wall_s = await loop.run_in_executor(self._executors[worker], self._timed_batch,
                                                                [job.payload for job in live])
            self._gate.record(cpu_s, wall_s, run.overlapped)
        except Exception as err:  # one bad batch must not stop the service; every caller sees it
            log.exception("batch of %d failed", len(live))
            results = [err] * len(live)
        finally:
            del self._running[key]
            self._idle.append(worker)
            if not self._running:
                self._all_idle.set()
            self._free.release()
            self._remember(loop.time() - run.started, len(live))
        self._answer(live, results, loop.time())

    def _answer(self, live: list[_Job], results: list, now: float) -> None:
        for job, result in zip(live, results):
            if isinstance(result, Exception):
                _fail(job, result)
            elif not job.future.done():
                job.timer.cancel()
                job.future.set_result(result)
                if job.predicted is not None:
                    self._errors.append(now - job.queued - job.predicted)
        self._margin_s = error_margin(list(self._errors), self._objective_s)

    async def drain_and_stop(self, timeout_s: float = 30.0) -> None:
        """Answer everything queued, then stop the collector and the worker threads."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        while (self._queue.qsize() or self._running) and loop.time() < until:
            await asyncio.sleep(0.005)
        if self._lag_task is not None:
            self._lag_task.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass  # the collector's normal way out
        for executor in self._executors:
            executor.shutdown(wait=True)
