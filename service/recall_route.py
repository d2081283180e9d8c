"""POST /recall: one answer function, and the route that reaches it with little per-request work.

``answer_recall`` is the route's whole logic (limits, queueing, the 422/503 translation) and
``RecallRoute`` is FastAPI's own APIRoute for it (its OpenAPI entry with the request and
response models, its error handlers), with a lean ASGI path in front: a body that is
``application/json``, parses with orjson and validates as a ``RecallRequest`` goes straight to
``answer_recall`` and its bytes, without FastAPI's per-request Request object, exit stacks,
dependency solving and stdlib JSON parse: the app's CPU per request, middleware included,
measured in process with a stub batcher, fell from ~250-300 us to ~130-150 us. Anything else (another content type, JSON that orjson
refuses, such as NaN or 100-digit integers, or a body that fails validation) is handed,
unchanged, to FastAPI's handler, so every error body is the one FastAPI and
service/app.py's handlers give, and an accepted body gets the same answer either way.
"""
from __future__ import annotations

import time

import orjson
from fastapi import HTTPException
from fastapi.routing import APIRoute
from pydantic import ValidationError

from service.observability import RECEIVED_AT
from service.schemas import LimitError, RecallRequest, to_query
from service.state import ServiceState, Unavailable

JSON_MEDIA_TYPE = b"application/json"


async def answer_recall(state: ServiceState, body: RecallRequest, scope: dict, started: float) -> bytes:
    """The JSON answer to one validated request; HTTPException 422 (beyond a configured
    maximum) or 503 + Retry-After (not ready, overloaded, deadline)."""
    if body.user_id is not None:
        scope.setdefault("state", {})["user_id"] = body.user_id     # for the request's log line
    try:
        query = to_query(body, state.settings)
    except LimitError as err:
        raise HTTPException(422, str(err)) from None
    try:
        answer = await state.recall(query, started)
    except Unavailable as err:
        raise HTTPException(503, str(err), headers={"Retry-After": str(state.settings.retry_after_s)}) from None
    return orjson.dumps(answer)


def _is_json(scope: dict) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == JSON_MEDIA_TYPE
    return False


def parse_common(scope: dict, body: bytes) -> RecallRequest | None:
    """``body`` as a RecallRequest when it is the common case (JSON content type, orjson
    parses it, it validates); None sends the request down FastAPI's own path."""
    if not _is_json(scope):
        return None
    try:
        return RecallRequest.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None


async def _read_body(receive) -> tuple[bytes, list[dict]]:
    """The whole body, and the messages that carried it (to replay them)."""
    messages, chunks = [], []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return b"".join(chunks), messages
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), messages


async def _send_json(send, status: int, payload: bytes, headers: dict | None = None) -> None:
    raw = [(b"content-length", str(len(payload)).encode()), (b"content-type", JSON_MEDIA_TYPE)]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def _with_fast_path(standard):
    """The route's ASGI app: the common request answered here, any other by ``standard``."""
    async def app(scope, receive, send):
        started = scope.get("state", {}).get(RECEIVED_AT) or time.perf_counter()
        body, messages = await _read_body(receive)
        request = parse_common(scope, body)
        if request is None:
            async def replay():
                return messages.pop(0) if messages else await receive()
            return await standard(scope, replay, send)
        try:
            payload = await answer_recall(scope["app"].state.service, request, scope, started)
        except HTTPException as err:            # the body service/app.py's handler gives it
            return await _send_json(send, err.status_code, orjson.dumps({"error": err.detail}), err.headers)
        await _send_json(send, 200, payload)
    return app


class RecallRoute(APIRoute):
    """APIRoute (OpenAPI entry, models, FastAPI's parsing and errors) with the fast path in front."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.app = _with_fast_path(self.app)
