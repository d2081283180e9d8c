"""What the batcher learns from the batches it ran: how long a batch of n takes, how far its
predictions of a request's wait fall short, and whether two batches at once each get a core.

Pure functions and one small stateful gate; no asyncio, no threads.
"""
from __future__ import annotations

import heapq
from typing import Callable

ERROR_QUANTILE = 0.95          # admission margin: this quantile of recent (actual - predicted) times to answer
BATCH_ERROR_QUANTILE = 0.99    # dispatch margin: this quantile of recent (actual - predicted) batch times
MAX_MARGIN_SHARE = 0.25        # the margin never takes more than this share of the objective
OVERLAP_GAIN = 1.2             # batches at once must together get this many times a lone batch's core time
EFFICIENCY_SMOOTHING = 0.3     # weight of the newest overlapping batch in the running efficiency
PROBE_INTERVAL_S = 1.0         # while overlap does not pay, one overlapping batch this often measures again


def fit_batch_time(recent: list[tuple[float, int]]) -> tuple[float, float]:
    """(overhead s, s per request) of the least-squares line ``took = overhead + per * size``
    through recent (took s, size) batches, both >= 0: a batch of 8 costs far less than 8
    batches of 1 (one tower call, one scan of the item matrix), which a per-request average
    would hide. Batches all of one size cannot tell the two apart: the mean batch time is
    taken as overhead. Taking it per request instead was a trap: after a spell of lone
    requests a queue of 8 was priced at 8 lone requests, refused, so batches stayed lone and
    the price stayed wrong (measured: 7,719 of 7,863 requests refused at 8 callers)."""
    if not recent:
        return 0.0, 0.0
    k = len(recent)
    mean_size = sum(size for _, size in recent) / k
    mean_took = sum(took for took, _ in recent) / k
    var = sum((size - mean_size) ** 2 for _, size in recent) / k
    if var < 1e-9:
        return mean_took, 0.0
    per = max(0.0, sum((size - mean_size) * (took - mean_took) for took, size in recent) / k / var)
    overhead = max(0.0, mean_took - per * mean_size)
    return overhead, per


def replay_wait(free_in: list[float], position: int, max_batch: int, batch_s: Callable[[int], float],
                arrival_rate: float) -> float:
    """Seconds until a request with ``position`` requests queued ahead of it is answered.

    Replays the collector: ``free_in`` holds, per usable worker, the seconds until it is free
    (0: free now); the worker free first takes the next ``max_batch`` queued requests (a batch
    of n takes ``batch_s(n)``), and so on, until the batch holding this request: its wait is
    that batch's start plus its run time. That batch also holds the requests arriving until it
    starts (at ``arrival_rate`` per s): leaving them out made every prediction short under
    steady load."""
    free_at = list(free_in)
    heapq.heapify(free_at)
    ahead = position
    while True:
        start = heapq.heappop(free_at)
        take = min(ahead + 1, max_batch)
        if take == ahead + 1:
            return start + batch_s(min(max_batch, take + round(arrival_rate * start)))
        ahead -= take
        heapq.heappush(free_at, start + batch_s(take))


def error_margin(errors: list[float], objective_s: float, quantile: float = ERROR_QUANTILE) -> float:
    """A margin (s): the ``quantile`` of recent prediction errors (actual minus predicted),
    within 0 .. MAX_MARGIN_SHARE x objective, so that a request admitted with predicted + margin
    <= objective is answered within it this often. Admission takes ERROR_QUANTILE of the
    times from queueing to answer; dispatch BATCH_ERROR_QUANTILE of batch times (a batch over
    its prediction makes every request in it late) and ERROR_QUANTILE of the loop's lag.
    Capped: with clients that retry refusals at once, an unbounded margin would feed itself
    (refusals busy the event loop, answers come later, the margin grows, more refusals)."""
    if not errors:
        return 0.0
    ordered = sorted(errors)
    high = ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]
    return min(max(0.0, high), MAX_MARGIN_SHARE * objective_s)


class OverlapGate:
    """Whether a batch may start while others run: only while n overlapping batches together
    got at least OVERLAP_GAIN times the core time of a lone batch (each thread's CPU time over
    its wall time, running averages): n x overlapped >= OVERLAP_GAIN x lone. When the cores are
    taken by other work, batches at once only split the same core time and each runs on fewer
    rows; one at a time then makes bigger batches. While overlap does not pay, one probe every
    PROBE_INTERVAL_S measures again, so the gate opens when the cores come back."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.efficiency = 1.0            # CPU share of a thread whose batch overlapped another
        self.lone_efficiency = 1.0       # CPU share of a thread whose batch ran alone
        self._last_probe = float("-inf")

    @property
    def open(self) -> bool:
        """Overlap pays (no probe needed)."""
        return self.workers * self.efficiency >= OVERLAP_GAIN * self.lone_efficiency

    def allows(self, now: float) -> bool:
        """May a batch start beside a running one now (a probe counts as a yes)?"""
        if self.open:
            return True
        if now - self._last_probe >= PROBE_INTERVAL_S:
            self._last_probe = now
            return True
        return False

    def record(self, cpu_s: float, wall_s: float, overlapped: bool) -> None:
        """One batch: its worker thread's CPU and wall seconds, and whether another ran beside it."""
        if wall_s > 0:
            share = min(1.0, cpu_s / wall_s)
            if overlapped:
                self.efficiency = _smooth(self.efficiency, share)
            else:
                self.lone_efficiency = _smooth(self.lone_efficiency, share)


def _smooth(average: float, value: float) -> float:
    return (1 - EFFICIENCY_SMOOTHING) * average + EFFICIENCY_SMOOTHING * value
