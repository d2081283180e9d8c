"""Early shedding: when the queue is full a recall request is refused with 503 + Retry-After
before its body is read or validated, so overload costs the service as little CPU as possible."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from service.app import _shedder
from service.metrics import ServiceMetrics
from service.observability import RequestContextMiddleware
from service.settings import Settings


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
    state = SimpleNamespace(batcher=SimpleNamespace(depth=depth), settings=Settings(max_queue=max_queue),
                            metrics=metrics)
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
