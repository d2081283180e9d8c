"""The dynamic batcher on its own: gathering, bounds, deadlines, failures, draining."""
from __future__ import annotations

import asyncio
import threading

import pytest

from service.batcher import Batcher, DeadlineError, QueueFullError
from tests.service_support import slow_worker


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_a_batch_and_keep_their_order():
    batches, threads = [], set()

    def work(payloads):
        batches.append(list(payloads))
        threads.add(threading.current_thread().name)
        return [p * 10 for p in payloads]

    async def main():
        batcher = Batcher(work, max_batch_size=4, wait_s=0.05, max_queue=100)
        batcher.start()
        first = await batcher.submit(0, 5)             # alone: no company to wait for
        results = await asyncio.gather(*(batcher.submit(i, 5) for i in range(1, 10)))
        await batcher.drain_and_stop()
        return first, results
    first, results = run(main())
    assert first == 0 and results == [i * 10 for i in range(1, 10)]
    assert max(len(b) for b in batches) == 4 and sorted(sum(batches, [])) == list(range(10))
    assert len(threads) == 1 and threading.current_thread().name not in threads   # one worker, off the loop


def test_full_queue_is_refused_at_once():
    release = threading.Event()

    async def main():
        batcher = Batcher(lambda p: (release.wait(5), p)[1], max_batch_size=1, wait_s=0, max_queue=2)
        batcher.start()
        busy = asyncio.ensure_future(batcher.submit(1, 5))
        await asyncio.sleep(0.05)                      # the worker holds request 1
        queued = [asyncio.ensure_future(batcher.submit(i, 5)) for i in (2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="2 requests already queued"):
            await batcher.submit(4, 5)
        release.set()
        done = await asyncio.gather(busy, *queued)
        await batcher.drain_and_stop()
        return done
    assert run(main()) == [1, 2, 3]


def test_deadline_passes_while_queued_and_the_work_is_skipped():
    seen = []

    slow = slow_worker(seen, 0.2)

    async def main():
        batcher = Batcher(slow, max_batch_size=1, wait_s=0, max_queue=10)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("a", 5))
        await asyncio.sleep(0.01)
        with pytest.raises(DeadlineError):
            await batcher.submit("late", 0.05)
        assert await first == "a"
        await batcher.drain_and_stop()
    run(main())
    assert seen == ["a"]                               # the stale request never ran


def test_a_failing_batch_reaches_every_caller_and_the_batcher_goes_on():
    def flaky(payloads):
        if "boom" in payloads:
            raise RuntimeError("tower exploded")
        return payloads

    async def main():
        batcher = Batcher(flaky, max_batch_size=8, wait_s=0.02, max_queue=10)
        batcher.start()
        await batcher.submit("warm", 5)
        outcomes = await asyncio.gather(batcher.submit("x", 5), batcher.submit("boom", 5), return_exceptions=True)
        after = await batcher.submit("y", 5)
        await batcher.drain_and_stop()
        return outcomes, after
    outcomes, after = run(main())
    assert all(isinstance(o, RuntimeError) for o in outcomes) and after == "y"


def test_two_workers_run_two_batches_at_once():
    """Each batch waits at a two-party barrier: it passes only when the other batch runs at the
    same time on the other worker thread (one worker would leave it broken after 5 s)."""
    barrier, threads = threading.Barrier(2, timeout=5), set()

    def work(payloads):
        threads.add(threading.current_thread().name)
        barrier.wait()
        return payloads

    async def main():
        batcher = Batcher(work, max_batch_size=8, wait_s=0, max_queue=10, workers=2)
        batcher.start()
        results = await asyncio.gather(batcher.submit("a", 10), batcher.submit("b", 10))
        await batcher.drain_and_stop()
        return results
    assert run(main()) == ["a", "b"]
    assert len(threads) == 2 and threading.current_thread().name not in threads


def test_busy_workers_queue_requests_into_the_next_free_one():
    """Two workers, both held: the next requests queue and run as one batch on the first
    worker freed, while the other is still held."""
    release = {"a": threading.Event(), "b": threading.Event()}
    batches = []

    def work(payloads):
        batches.append(list(payloads))
        if payloads[0] in release:
            release[payloads[0]].wait(5)
        return payloads

    async def main():
        batcher = Batcher(work, max_batch_size=8, wait_s=0, max_queue=10, workers=2)
        batcher.start()
        held = [asyncio.ensure_future(batcher.submit(p, 10)) for p in ("a", "b")]
        while batcher.busy < 2:
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(batcher.submit(p, 10)) for p in ("c", "d", "e")]
        await asyncio.sleep(0.05)
        assert batcher.depth == 3
        release["a"].set()
        done = await asyncio.gather(held[0], *queued)
        release["b"].set()
        done.insert(1, await held[1])
        await batcher.drain_and_stop()
        return done
    assert run(main()) == ["a", "b", "c", "d", "e"]
    assert sorted(map(len, batches)) == [1, 1, 3]


def test_a_lone_caller_always_lands_on_the_same_worker():
    threads = []

    def work(payloads):
        threads.append(threading.current_thread().name)
        return payloads

    async def main():
        batcher = Batcher(work, max_batch_size=8, wait_s=0, max_queue=10, workers=2)
        batcher.start()
        answers = [await batcher.submit(i, 5) for i in range(6)]
        await batcher.drain_and_stop()
        return answers
    assert run(main()) == list(range(6))
    assert len(threads) == 6 and len(set(threads)) == 1


def test_many_callers_batch_on_one_worker_instead_of_splitting():
    """With the in-flight limit (MIND_BATCH_OVERLAP_IN_FLIGHT=1; the default, 0, has none): two
    workers, five requests at once (more than one per worker in flight): one batch of five, and
    a sixth arriving meanwhile waits for it rather than starting the idle worker."""
    release, batches = threading.Event(), []

    def work(payloads):
        batches.append(list(payloads))
        if "x" not in payloads:
            release.wait(5)
        return payloads

    async def main():
        batcher = Batcher(work, max_batch_size=8, wait_s=0, max_queue=10, workers=2, overlap_in_flight=1)
        batcher.start()
        first = [asyncio.ensure_future(batcher.submit(i, 10)) for i in range(5)]
        while batcher.busy < 1:
            await asyncio.sleep(0.005)
        late = asyncio.ensure_future(batcher.submit("x", 10))
        await asyncio.sleep(0.05)
        assert batcher.busy == 1 and batcher.depth == 1
        release.set()
        done = await asyncio.gather(*first, late)
        await batcher.drain_and_stop()
        return done
    assert run(main()) == [0, 1, 2, 3, 4, "x"]
    assert batches == [[0, 1, 2, 3, 4], ["x"]]


def test_without_the_in_flight_limit_queued_requests_are_shared_by_the_workers():
    batches = []

    def work(payloads):
        batches.append(list(payloads))
        return payloads

    async def main():
        batcher = Batcher(work, max_batch_size=8, wait_s=0, max_queue=10, workers=2, overlap_in_flight=0)
        batcher.start()
        done = await asyncio.gather(*(batcher.submit(i, 10) for i in range(5)))
        await batcher.drain_and_stop()
        return done
    assert run(main()) == [0, 1, 2, 3, 4]
    assert sorted(map(len, batches)) == [2, 3]


def test_a_window_for_company_only_when_requests_waited_for_the_worker():
    """MIND_BATCH_WAIT_MS: a request reaching the idle worker runs at once, alone, without the
    window; a batch whose first request waited for the busy worker waits the window and takes
    the requests arriving in it (callers answered a moment ago), instead of two half batches
    taking turns."""
    batches, gate = [], threading.Event()

    def work(payloads):
        batches.append(list(payloads))
        if payloads[0] in ("A", "D"):
            gate.wait(5)                           # hold the worker while the others queue
        return payloads

    async def main():
        batcher = Batcher(work, max_batch_size=8, wait_s=0.3, max_queue=10)
        batcher.start()
        a = asyncio.ensure_future(batcher.submit("A", 5))
        await asyncio.sleep(0.05)                  # A: at the idle worker, at once
        b = asyncio.ensure_future(batcher.submit("B", 5))
        await asyncio.sleep(0.05)                  # B: queued behind A
        gate.set()
        await asyncio.sleep(0.05)                  # B's batch is in its window: C joins it
        await asyncio.gather(a, b, batcher.submit("C", 5))
        gate.clear()
        d = asyncio.ensure_future(batcher.submit("D", 5))
        await asyncio.sleep(0.05)                  # D: idle worker again, no window although
        e = asyncio.ensure_future(batcher.submit("E", 5))   # E comes 50 ms later
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(d, e)
        await batcher.drain_and_stop()
    run(main())
    assert batches == [["A"], ["B", "C"], ["D"], ["E"]]
