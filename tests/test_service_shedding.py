"""Early shedding: when the queue is full a recall request is refused with 503 + Retry-After
by mind serve's HTTP protocol as soon as its headers are parsed, before its body is read or
validated, so overload costs the service as little CPU as possible."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
import uvicorn
from uvicorn.server import ServerState

from service.app import create_app
from service.batcher import Batcher, QueueFullError
from service.metrics import ServiceMetrics
from service.protocol import RecallHttpProtocol
from service.settings import Settings
from tests.service_support import slow_worker


class Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written, self.closed, self.closed_by_server = bytearray(), False, False

    def write(self, data) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)


def make(depth: int, max_queue: int = 4):
    """mind serve's HTTP protocol over an app whose batcher has ``depth`` requests queued."""
    settings = Settings(max_queue=max_queue, retry_after_s=3, log_requests=False)
    app = create_app(settings)
    state = app.state.service
    state.batcher = Batcher(lambda payloads: payloads, max_batch_size=1, wait_s=0, max_queue=max_queue)
    for _ in range(min(depth, max_queue)):       # requests waiting in the queue
        state.batcher._queue.put_nowait(None)
    return app, state.metrics


def serve(app, *requests: bytes) -> Transport:
    """Feed ``requests`` to a fresh connection of mind serve's protocol; what it wrote back."""
    async def main():
        config = uvicorn.Config(app, lifespan="off", log_config=None)
        config.load()
        protocol = RecallHttpProtocol(config=config, server_state=ServerState(), app_state={},
                                      front=app.state.front)
        transport = Transport()
        protocol.connection_made(transport)
        for request in requests:
            protocol.data_received(request)
            await asyncio.sleep(0.05)            # a request that was not refused runs as a task
        transport.closed_by_server = transport.closed
        protocol.connection_lost(None)
        return transport
    return asyncio.run(main())


def post(path: str, body: bytes = b'{"history": ["1"]}', extra: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n" + extra +
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def responses(transport: Transport) -> list[tuple[int, dict, bytes]]:
    """(status, headers, body) of each response written, in order."""
    out, data = [], bytes(transport.written)
    while data:
        head, data = data.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(headers[b"content-length"])
        out.append((int(lines[0].split()[1]), headers, data[:length]))
        data = data[length:]
    return out


def rejected(metrics: ServiceMetrics) -> float:
    return metrics.rejected.labels(reason="queue_full")._value.get()


def test_full_queue_sheds_recall_when_its_headers_arrive_and_the_connection_stays_usable():
    """The 503 (+ Retry-After, request id, counted) is written from the headers alone: the
    body, even one that is not JSON, is dropped unparsed; the next request on the same
    keep-alive connection is served (here: /healthz), and a refusal of a request asking
    to close does close."""
    app, metrics = make(depth=4)
    transport = serve(app, post("/recall", b"not json at all", b"x-request-id: abc-1\r\n"),
                      b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
    (status, headers, payload), (health, _, _) = responses(transport)
    assert status == 503 and headers[b"retry-after"] == b"3" and headers[b"x-request-id"] == b"abc-1"
    assert b"overloaded" in payload and b"queued" in payload
    assert health == 200 and not transport.closed_by_server
    assert rejected(metrics) == 1
    assert metrics.requests.labels(endpoint="/recall", status="503")._value.get() == 1
    closing = serve(make(depth=4)[0], post("/recall/batch", b"[]", b"connection: close\r\n"))
    assert responses(closing)[0][0] == 503 and closing.closed_by_server


def test_room_in_the_queue_and_other_paths_are_not_shed():
    app, metrics = make(depth=3)
    ((status, _, payload),) = responses(serve(app, post("/recall")))
    assert b"not ready" in payload                # reached the app, which has no bundle here
    full, _ = make(depth=10)
    assert responses(serve(full, b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n"))[0][0] == 200
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
    assert error_margin(errors, 1.0, quantile=0.99) == pytest.approx(0.099)   # the batch times' margin
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


def test_time_a_request_waited_unseen_while_the_loop_was_busy_counts_at_dispatch():
    """The event loop's recent lag (how late it ran what was due: a request's bytes wait about
    that long in its socket before the loop reads them) counts against the objective when a
    batch forms. A request that arrived 800 ms before it reached the batcher (objective 1 s), in
    a ~10 ms batch, is answered while the loop keeps up, and refused at dispatch once the loop
    ran 300 ms late (margins are capped at a quarter of the objective: room for a busy machine)."""
    async def main():
        batcher = Batcher(lambda payloads: (time.sleep(0.01), payloads)[1], max_batch_size=8, wait_s=0,
                          max_queue=100, objective_s=1.0)
        batcher.start()
        for _ in range(20):
            await batcher.submit("teach", 5)                  # batches take ~10 ms
        answered = await batcher.submit("in time", 5, waited_s=0.8)
        for _ in range(4):
            time.sleep(0.3)                                    # the loop busy: its probe runs late
            await asyncio.sleep(0.012)
        with pytest.raises(QueueFullError, match="after the latency objective 1000 ms") as refused:
            await batcher.submit("late", 5, waited_s=0.8)
        await batcher.drain_and_stop()
        return answered, refused.value.reason
    answered, reason = asyncio.run(main())
    assert answered == "in time" and reason == "latency_objective"
