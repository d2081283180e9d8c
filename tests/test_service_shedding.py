"""Early shedding: when the queue is full a recall request is refused with 503 + Retry-After
before its body is read or validated, so overload costs the service as little CPU as possible."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
from service.app import _shedder
from service.batcher import Batcher, QueueFullError
from service.metrics import ServiceMetrics
from service.observability import RequestContextMiddleware
from service.settings import Settings
from service.state import ServiceState
from tests.service_support import slow_worker


def call(middleware, path: str, body: bytes = b'{"history": ["1"]}'):
    """Drive the ASGI middleware once; returns (status, headers, body, receive calls)."""
    received, sent = [], []

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", str(len(body)).encode())]}
    asyncio.run(middleware(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), payload, len(received)


async def inner_app(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def make(depth: int, max_queue: int = 4):
    metrics = ServiceMetrics()
    state = ServiceState(Settings(max_queue=max_queue), metrics)
    state.batcher = Batcher(lambda payloads: payloads, max_batch_size=1, wait_s=0, max_queue=max_queue)
    for _ in range(min(depth, max_queue)):       # requests waiting in the queue
        state.batcher._queue.put_nowait(None)
    middleware = RequestContextMiddleware(inner_app, metrics=metrics, max_body_bytes=1 << 20, log_requests=False,
                                          endpoints=frozenset({"/recall"}), shed=_shedder(state), retry_after_s=3)
    return middleware, metrics


def rejected(metrics: ServiceMetrics) -> float:
    return metrics.rejected.labels(reason="queue_full")._value.get()


def test_full_queue_sheds_recall_before_reading_the_body():
    middleware, metrics = make(depth=4)
    status, headers, payload, reads = call(middleware, "/recall")
    assert status == 503 and headers[b"retry-after"] == b"3"
    assert b"overloaded" in payload and reads == 0
    assert rejected(metrics) == 1


def test_room_in_the_queue_and_other_paths_are_not_shed():
    middleware, metrics = make(depth=3)
    assert call(middleware, "/recall")[0] == 200
    full, _ = make(depth=10)
    assert call(full, "/healthz")[0] == 200
    assert rejected(metrics) == 0


def test_predicted_wait_over_the_objective_is_refused_but_an_idle_worker_always_answers():
    """Batches take 0.2 s and the objective is 0.1 s: a request arriving while one runs would
    wait ~0.4 s, so it is refused at once (reason latency_objective); a request reaching the
    idle worker is answered even though its own 0.2 s exceeds the objective."""
    seen = []

    slow = slow_worker(seen, 0.2)

    async def main():
        batcher = Batcher(slow, max_batch_size=8, wait_s=0, max_queue=100, objective_s=0.1)
        batcher.start()
        assert await batcher.submit("first", 5) == "first"      # idle: admitted, teaches 0.2 s
        running = asyncio.ensure_future(batcher.submit("second", 5))
        await asyncio.sleep(0.02)
        with pytest.raises(QueueFullError, match="exceeds the latency objective 100 ms") as refused:
            await batcher.submit("late", 5)
        assert refused.value.reason == "latency_objective"
        assert await running == "second"
        assert batcher.refusal() is None and await batcher.submit("idle again", 5) == "idle again"
        await batcher.drain_and_stop()
    asyncio.run(main())
    assert seen == ["first", "second", "idle again"]


def test_predicted_wait_counts_every_worker():
    """Two workers, batches of 0.2 s, objective 0.1 s: a request finding a free worker is
    admitted although the other one is busy; once both are busy, the next would wait ~0.4 s
    and is refused."""
    seen = []
    slow = slow_worker(seen, 0.2)

    async def main():
        batcher = Batcher(slow, max_batch_size=8, wait_s=0, max_queue=100, objective_s=0.1, workers=2)
        batcher.start()
        assert await batcher.submit("first", 5) == "first"      # teaches 0.2 s per request
        one = asyncio.ensure_future(batcher.submit("one", 5))
        await asyncio.sleep(0.02)
        assert batcher.busy == 1 and batcher.refusal() is None   # the other worker is free
        two = asyncio.ensure_future(batcher.submit("two", 5))
        await asyncio.sleep(0.02)
        assert batcher.busy == 2
        refused = batcher.refusal()
        assert refused is not None and refused.reason == "latency_objective"
        assert await one == "one" and await two == "two"
        await batcher.drain_and_stop()
    asyncio.run(main())
    assert sorted(seen) == ["first", "one", "two"]


def test_batch_time_is_a_fitted_overhead_plus_a_per_request_time():
    from service.timing import fit_batch_time
    overhead, per = fit_batch_time([(0.005 + 0.001 * n, n) for n in (1, 2, 8, 1, 30)])
    assert overhead == pytest.approx(0.005) and per == pytest.approx(0.001)
    assert fit_batch_time([(0.02, 1), (0.04, 1)]) == (pytest.approx(0.03), 0.0)   # one size: all overhead
    assert fit_batch_time([]) == (0.0, 0.0)
    assert fit_batch_time([(0.01, 1), (0.002, 8)]) == (pytest.approx(0.006), 0.0)  # never a negative time


def test_error_margin_is_a_high_quantile_of_recent_prediction_errors():
    from service.timing import error_margin
    errors = [0.001 * i for i in range(100)]             # 0 .. 99 ms late
    assert error_margin(errors, 1.0) == pytest.approx(0.095)
    assert error_margin(errors, 0.1) == pytest.approx(0.025)  # at most a quarter of the objective
    assert error_margin([-0.01, -0.02], 1.0) == 0.0       # early answers never loosen the objective
    assert error_margin([], 1.0) == 0.0


def test_overlap_gate_closes_when_overlapping_batches_share_a_core_and_probes_again():
    from service.timing import PROBE_INTERVAL_S, OverlapGate
    gate = OverlapGate(workers=2)
    assert gate.allows(0.0)
    for _ in range(5):
        gate.record(cpu_s=0.95, wall_s=1.0, overlapped=False)   # a lone batch gets a core
        gate.record(cpu_s=0.9, wall_s=1.0, overlapped=True)     # and so does each of two at once
    assert gate.open and gate.allows(0.0)
    for _ in range(8):
        gate.record(cpu_s=0.45, wall_s=1.0, overlapped=True)    # two at once split one core
    assert not gate.open
    assert gate.allows(100.0)                                   # a probe
    assert not gate.allows(100.0 + PROBE_INTERVAL_S / 2)        # not again so soon
    assert gate.allows(100.0 + PROBE_INTERVAL_S)
    for _ in range(8):
        gate.record(cpu_s=0.4, wall_s=1.0, overlapped=False)    # the machine is busy: a lone batch gets 0.4
    assert gate.open                                            # two at once (0.45 each) still get more


def test_time_spent_before_the_batcher_counts_against_the_objective():
    """Objective 150 ms, batches of 50 ms: a fresh request arriving while one runs waits at most
    ~100 ms and is admitted; one that already spent 120 ms reaching the batcher (a busy event
    loop) is refused."""
    seen = []
    slow = slow_worker(seen, 0.05)

    async def main():
        batcher = Batcher(slow, max_batch_size=8, wait_s=0, max_queue=100, objective_s=0.15)
        batcher.start()
        await batcher.submit("teach", 5)                     # idle: admitted, teaches 50 ms
        running = asyncio.ensure_future(batcher.submit("running", 5))
        await asyncio.sleep(0.005)
        fresh = batcher.refusal()
        late = batcher.refusal(waited_s=0.12)
        await running
        await batcher.drain_and_stop()
        return fresh, late
    fresh, late = asyncio.run(main())
    assert fresh is None
    assert late is not None and late.reason == "latency_objective"


def test_replayed_wait_follows_the_workers_the_batch_limit_and_arrivals():
    from service.timing import replay_wait

    def ten_ms_a_request(n):
        return 0.01 * n
    assert replay_wait([0.0], 0, 64, ten_ms_a_request, 0.0) == pytest.approx(0.01)            # free worker
    assert replay_wait([0.05], 3, 64, ten_ms_a_request, 0.0) == pytest.approx(0.05 + 0.04)    # behind 3, after 50 ms
    assert replay_wait([0.05, 0.02], 3, 64, ten_ms_a_request, 0.0) == pytest.approx(0.02 + 0.04)  # the sooner worker
    assert replay_wait([0.0], 5, 4, ten_ms_a_request, 0.0) == pytest.approx(0.04 + 0.02)      # second batch of 4 max
    # arrivals at 100/s during the 50 ms before its batch starts join it: 4 + 5 requests
    assert replay_wait([0.05], 3, 64, ten_ms_a_request, 100.0) == pytest.approx(0.05 + 0.09)


def test_a_request_that_queued_past_the_objective_is_refused_at_dispatch_not_computed():
    """Admitted on a prediction (batches of ~10 ms), the request then queues behind a batch
    that runs 0.4 s: when its batch forms it could only be answered after the 100 ms objective,
    so it gets 503 (reason latency_objective) without being computed."""
    seen, hold = [], threading.Event()

    def work(payloads):
        seen.extend(payloads)
        if "hold" in payloads:
            hold.wait(0.4)
        else:
            time.sleep(0.01)
        return payloads

    async def main():
        batcher = Batcher(work, max_batch_size=8, wait_s=0, max_queue=100, objective_s=0.1)
        batcher.start()
        for _ in range(20):
            await batcher.submit("teach", 5)                  # batches take ~10 ms
        running = asyncio.ensure_future(batcher.submit("hold", 5))
        await asyncio.sleep(0.005)
        assert batcher.refusal() is None                     # predicted well within the objective
        with pytest.raises(QueueFullError, match="after the latency objective 100 ms") as refused:
            await batcher.submit("late", 5)
        assert refused.value.reason == "latency_objective"
        assert await running == "hold"
        await batcher.drain_and_stop()
    asyncio.run(main())
    assert "late" not in seen
