"""JSON-line logs, and the one recorder of every answered request's id, metrics and log line:
the ASGI middleware (request id, body-size limit) uses it, and so does mind serve's HTTP
protocol for the requests it answers itself (service/protocol.py)."""
from __future__ import annotations

import json
import logging
import random
import re
import sys
import time

from service.metrics import ServiceMetrics

REQUEST_ID_HEADER = b"x-request-id"
RECEIVED_AT = "received_at"          # scope["state"] key: perf_counter() when the event loop read the request
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_STANDARD_RECORD_KEYS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                                     "color_message", "taskName"}


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_KEYS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Route every logger (uvicorn's included) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) in ASGI/uvicorn ``headers``, else None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def _json_response(status: int, body: dict, request_id: bytes):
    payload = json.dumps(body).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                         (REQUEST_ID_HEADER, request_id)]}
    return start, {"type": "http.response.body", "body": payload}


class RequestRecorder:
    """Every answered request's id, counter, latency and log line, whichever layer answers it
    (the ASGI middleware, or the HTTP protocol refusing it early)."""

    def __init__(self, metrics: ServiceMetrics, endpoints: frozenset[str], log_requests: bool) -> None:
        self.metrics, self.endpoints, self.log_requests = metrics, endpoints, log_requests
        self.log = logging.getLogger("service.request")
        self._children: dict[tuple[str, int], tuple] = {}   # (endpoint, status) -> its two collectors
        # Request ids from a generator seeded by the OS, not os.urandom per request: that call
        # lets go of the GIL, and the event loop then waits for a batch worker to hand it back
        # (27% of the loop thread's py-spy samples when refusing; bench/README.md, "tenth pass").
        self._ids = random.Random()

    def _collectors(self, endpoint: str, status: int) -> tuple:
        """The request counter and latency histogram of (endpoint, status), looked up once."""
        key = (endpoint, status)
        if key not in self._children:
            self._children[key] = (self.metrics.requests.labels(endpoint=endpoint, status=str(status)),
                                   self.metrics.request_seconds.labels(endpoint=endpoint))
        return self._children[key]

    def request_id(self, headers) -> bytes:
        for name, value in headers:
            if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
                return value
        return self._ids.randbytes(16).hex().encode()   # a random 128-bit id, as uuid4().hex but cheaper

    def record(self, method: str, path: str, status: int, took_s: float, request_id: bytes,
               user_id: str | None = None) -> None:
        endpoint = path if path in self.endpoints else "other"
        count, latency = self._collectors(endpoint, status)
        count.inc()
        latency.observe(took_s)
        if self.log_requests:
            fields = {"request_id": request_id.decode(), "method": method, "path": path,
                      "status": status, "took_ms": round(took_s * 1000, 3)}
            if user_id is not None:
                fields["user_id"] = user_id
            self.log.info("request", extra=fields)


class RequestContextMiddleware:
    """Pure ASGI (cheaper than BaseHTTPMiddleware on the hot path): a request id on every
    answer, the body-size limit (413 before the app sees the body), metrics and log line."""

    def __init__(self, app, *, recorder: RequestRecorder, max_body_bytes: int) -> None:
        self.app, self.recorder, self.max_body_bytes = app, recorder, max_body_bytes

    def _declared_length(self, scope) -> int:
        value = header(scope["headers"], b"content-length") or b""
        return int(value) if value.isdigit() else 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        request_id = self.recorder.request_id(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        status = [500]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = list(message.get("headers", [])) + [(REQUEST_ID_HEADER, request_id)]
            await send(message)

        self.recorder.metrics.in_progress.inc()
        try:
            replay = await self._buffered_body(scope, receive)
            if replay is None:
                status[0] = 413
                for message in _json_response(413, {"error": f"request body larger than {self.max_body_bytes} bytes"},
                                              request_id):
                    await send(message)
                return
            await self.app(scope, replay, send_with_id)
        finally:
            self.recorder.metrics.in_progress.dec()
            self.recorder.record(scope["method"], scope["path"], status[0], time.perf_counter() - started,
                                 request_id, scope["state"].get("user_id"))

    async def _buffered_body(self, scope, receive):
        """Read the whole body (bounded) before the app sees it; None when it is too large.
        Returns a ``receive`` that replays it, then defers to the real one (disconnects)."""
        if self._declared_length(scope) > self.max_body_bytes:
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return receive if not chunks else None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            more = message.get("more_body", False)
        body = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return body.pop() if body else await receive()
        return replay
