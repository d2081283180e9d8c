"""mind serve's HTTP protocol: uvicorn's httptools protocol, with the recall hot path answered
from the parser's callbacks instead of through the ASGI stack.

- A recall request an overloaded service would refuse anyway (queue full, or a predicted wait
  over the latency objective) gets its 503 + Retry-After as soon as its headers are parsed: no
  task, body parse or ASGI stack is spent on it (~20 us of CPU against ~65 us).
- The common ``POST /recall`` (a JSON body within the size limit, which orjson parses and
  ``RecallRequest`` validates) goes from ``on_message_complete`` to the batcher, and its answer
  from a callback on the batcher's future straight to the socket: no task, no ASGI messages,
  no middleware or router. Under load the event loop shares the GIL with the batch worker, so
  its CPU per request is the worker's too (bench/README.md, "Serving, eighth pass").
- Everything else takes uvicorn's own path into the FastAPI app, unchanged: other endpoints,
  another content type, a body orjson or the model refuses (FastAPI's own 422 then), a chunked
  or oversized body (413), ``Expect: 100-continue``, and a request pipelined behind one still
  being answered. Both paths reach the same ``to_query`` and ``ServiceState.submit``/``settle``.
"""
from __future__ import annotations

import logging
import time

import orjson
from pydantic import ValidationError
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.observability import RECEIVED_AT, REQUEST_ID_HEADER, RequestRecorder, header
from service.schemas import LimitError, RecallRequest, to_query
from service.state import ServiceState, Unavailable

log = logging.getLogger("service.app")
JSON_MEDIA_TYPE = b"application/json"
STATUS_LINES = {200: b"HTTP/1.1 200 OK", 422: b"HTTP/1.1 422 Unprocessable Entity",
                500: b"HTTP/1.1 500 Internal Server Error", 503: b"HTTP/1.1 503 Service Unavailable"}


def parse_common(body: bytes) -> RecallRequest | None:
    """``body`` as a RecallRequest when orjson parses it and it validates; None sends the
    request down FastAPI's own path (whose parser and error bodies judge it)."""
    try:
        return RecallRequest.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None


class RecallFront:
    """What the protocol asks of the service: whether to refuse a recall request from its
    headers, whether to answer one itself, and the answer; every response it writes is
    counted and logged by the same ``RequestRecorder`` as the ASGI middleware's."""

    def __init__(self, state: ServiceState, recorder: RequestRecorder, refuse_paths: frozenset[str]) -> None:
        self.state, self.recorder = state, recorder
        self.refuse_paths = frozenset(path.encode() for path in refuse_paths)
        self.retry_after = str(state.settings.retry_after_s).encode()

    def response(self, status: int, payload: bytes, request_id: bytes, default_headers: list,
                 keep_alive: bool) -> bytes:
        """The whole HTTP response: a 503 carries Retry-After."""
        head = [STATUS_LINES[status]]
        head += [name + b": " + value for name, value in default_headers]
        head += [b"content-type: application/json", b"content-length: " + str(len(payload)).encode(),
                 REQUEST_ID_HEADER + b": " + request_id]
        if status == 503:
            head.append(b"retry-after: " + self.retry_after)
        if not keep_alive:
            head.append(b"connection: close")
        return b"\r\n".join(head) + b"\r\n\r\n" + payload

    def refusal(self, method: bytes, path: bytes, headers: list, default_headers: list, keep_alive: bool) -> bytes | None:
        """The 503 refusing this request before its body is read, or None to serve it."""
        if method != b"POST" or path not in self.refuse_paths:
            return None
        started = time.perf_counter()
        refused = self.state.refusal()
        if refused is None:
            return None
        request_id = self.recorder.request_id(headers)
        payload = orjson.dumps({"error": f"overloaded: {refused}"})
        self.recorder.record("POST", path.decode(), 503, time.perf_counter() - started, request_id)
        return self.response(503, payload, request_id, default_headers, keep_alive)

    def answers(self, method: bytes, path: bytes, headers: list) -> bool:
        """Whether the protocol answers this request itself (once its body validates)."""
        if method != b"POST" or path != b"/recall":
            return False
        length, kind = header(headers, b"content-length"), header(headers, b"content-type")
        return (length is not None and length.isdigit() and int(length) <= self.state.settings.max_body_bytes
                and kind is not None and kind.split(b";", 1)[0].strip().lower() == JSON_MEDIA_TYPE)

    def submit(self, request: RecallRequest, started: float, request_id: bytes):
        """(status, payload) now (422 beyond a limit, 503 not ready or refused), or (None, the
        batcher's future) to ``settle`` once it is done."""
        state = self.state
        try:
            return None, state.submit(to_query(request, state.settings), started)
        except LimitError as err:
            return 422, orjson.dumps({"error": str(err)})
        except Exception as err:
            return self._failed(err, request_id)

    def settle(self, job, started: float, request_id: bytes) -> tuple[int, bytes]:
        try:
            return 200, orjson.dumps(self.state.settle(job, started))
        except Exception as err:
            return self._failed(err, request_id)

    @staticmethod
    def _failed(err: Exception, request_id: bytes) -> tuple[int, bytes]:
        """503 for Unavailable; anything else (a failed batch) the 500 service/app.py's handler gives."""
        if isinstance(err, Unavailable):
            return 503, orjson.dumps({"error": str(err)})
        log.error("internal error", exc_info=err, extra={"request_id": request_id.decode()})
        return 500, orjson.dumps({"error": f"internal error: {type(err).__name__}; see the server log"})


class _Answering:
    """Stands in for uvicorn's request cycle while the protocol answers a request itself (or
    has refused it: then ``response_complete`` and the rest of its body is dropped)."""
    disconnected = False

    def __init__(self, keep_alive: bool, response_complete: bool = False) -> None:
        self.keep_alive, self.response_complete = keep_alive, response_complete
        self.message_event = self            # connection_lost() sets it; nothing waits on it

    def set(self) -> None:
        pass


class RecallHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``RecallFront`` in front of the ASGI app."""

    def __init__(self, *args, front: RecallFront, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.front = front
        self.received_at = 0.0
        self._body: list[bytes] | None = None     # the body of a request the protocol answers
        self._arrived = 0.0                       # when the loop read the current request's headers
        self._request: tuple | None = None        # its (cycle stand-in, request id, arrival, user id)

    def data_received(self, data: bytes) -> None:
        self.received_at = time.perf_counter()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._arrived = self.received_at
        if self.expect_100_continue or not (self.cycle is None or self.cycle.response_complete):
            return self._to_app()
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        method, path = self.parser.get_method(), self.url.split(b"?", 1)[0]
        refusal = self.front.refusal(method, path, self.headers, self.server_state.default_headers, keep_alive)
        if refusal is not None:
            self.transport.write(refusal)
            self.cycle = _Answering(keep_alive, response_complete=True)
            if not keep_alive:
                self.transport.close()
            return self.on_response_complete()
        if not self.front.answers(method, path, self.headers):
            return self._to_app()
        self.cycle = _Answering(keep_alive)
        self._body = []

    def _to_app(self) -> None:
        # when the loop read it: the latency objective counts the time its task waits to run
        self.scope["state"][RECEIVED_AT] = self._arrived
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._body is None:
            return super().on_body(body)
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._body is None:
            return super().on_message_complete()
        body, self._body = b"".join(self._body), None
        request = parse_common(body)
        if request is None:                        # FastAPI judges it, from its headers on
            self.cycle = None
            self._to_app()
            self.cycle.body = body
            return super().on_message_complete()
        started, request_id = self._arrived, self.front.recorder.request_id(self.headers)
        self._request = (self.cycle, request_id, started, request.user_id)
        self.front.state.metrics.in_progress.inc()
        status, outcome = self.front.submit(request, started, request_id)
        if status is not None:
            return self._respond(status, outcome)
        outcome.add_done_callback(self._settle)

    def _settle(self, job) -> None:
        _, request_id, started, _ = self._request
        self._respond(*self.front.settle(job, started, request_id))

    def _respond(self, status: int, payload: bytes) -> None:
        # self.cycle may already be a request pipelined behind this one
        (cycle, request_id, started, user_id), self._request = self._request, None
        if not cycle.disconnected:
            self.transport.write(self.front.response(status, payload, request_id, self.server_state.default_headers,
                                                     cycle.keep_alive))
        cycle.response_complete = True
        self.front.state.metrics.in_progress.dec()
        self.front.recorder.record("POST", "/recall", status, time.perf_counter() - started, request_id, user_id)
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()
