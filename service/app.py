"""The FastAPI application: thin routes over ServiceState.

One way through: route (validate, ``to_query``) -> ``ServiceState.recall`` -> batcher ->
worker thread ``ServiceState.run_batch`` -> pipeline -> retrieval. Answers are built as dicts
and serialised once (orjson); ``response_model`` keeps the OpenAPI contract without
validating every answer on the hot path.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.bundle import BundleError
from service.metrics import ServiceMetrics
from service.observability import RECEIVED_AT, RequestContextMiddleware, RequestRecorder
from service.operations import add_operational_routes
from service.protocol import RecallFront
from service.schemas import ErrorResponse, LimitError, RecallRequest, RecallResponse, document_limits, to_query
from service.settings import Settings
from service.state import ServiceState, Unavailable, get_state

log = logging.getLogger("service.app")
ENDPOINTS = frozenset({"/recall", "/recall/batch", "/healthz", "/readyz", "/version", "/metrics", "/admin/reload"})
RECALL_PATHS = frozenset({"/recall", "/recall/batch"})
ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 422, 503)}
# FastAPI's native OpenTelemetry asks the global providers (environment lookups) on every
# request; the service reports through /metrics and its JSON logs instead.
NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False}


def _json(body) -> Response:
    """Serialise once, without response-model validation: orjson takes ~5 us for a 100-item
    answer where json.dumps takes ~110 us, all of it under the GIL the batch worker needs."""
    return Response(orjson.dumps(body), media_type="application/json")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    state: ServiceState = app.state.service
    settings = state.settings
    state.start()
    if settings.bundle is not None:
        with contextlib.suppress(BundleError):  # logged, counted; /readyz says why
            await state.load(settings.bundle)
    # Everything loaded so far (torch, FastAPI, the bundle's id maps) lives as long as the
    # process: keep it out of the cyclic GC, whose full passes over it stalled batches ~100 ms.
    gc.collect()
    gc.freeze()
    watcher = None
    if settings.watch_interval_s > 0 and state.root is not None:
        watcher = asyncio.get_running_loop().create_task(state.watch(settings.watch_interval_s))
    elif state.bundle is None:
        log.error("not ready and not watching: set MIND_WATCH_INTERVAL_S or POST /admin/reload",
                  extra={"reason": state.not_ready_reason})
    yield
    if watcher is not None:
        watcher.cancel()
    await state.stop()
    log.info("drained and stopped")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors(), exclude={"input", "url", "ctx"})
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse({"error": message, "detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.error("internal error", exc_info=exc, extra={"request_id": request.scope.get("state", {}).get("request_id")})
        return JSONResponse({"error": f"internal error: {type(exc).__name__}; see the server log"}, status_code=500)

    # Starlette's base class: FastAPI raises it for undecodable bodies (400) and the router for 404/405.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _openapi(app: FastAPI, settings: Settings) -> dict:
    """FastAPI's (cached) OpenAPI document with the configured request maxima stated in it."""
    return document_limits(FastAPI.openapi(app), settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app; ``settings`` default to the environment (MIND_*)."""
    settings = settings or Settings()
    metrics = ServiceMetrics()
    app = FastAPI(title="mind-recall", version="1", lifespan=lifespan, telemetry=NO_TELEMETRY,
                  description="Multi-interest (MIND) candidate recall over a verified bundle.")
    app.state.service = ServiceState(settings, metrics)
    app.openapi = functools.partial(_openapi, app, settings)
    _install_error_handlers(app)
    _add_recall_routes(app)
    add_operational_routes(app)
    recorder = RequestRecorder(metrics, ENDPOINTS, settings.log_requests)
    app.add_middleware(RequestContextMiddleware, recorder=recorder, max_body_bytes=settings.max_body_bytes)
    # mind serve's HTTP protocol refuses what the batcher would refuse before the body is read,
    # and answers the common POST /recall itself (service/protocol.py)
    app.state.front = RecallFront(app.state.service, recorder, RECALL_PATHS)
    return app


async def _answer(state: ServiceState, queries, started: float):
    try:
        return await asyncio.gather(*(state.recall(query, started) for query in queries))
    except Unavailable as err:
        raise HTTPException(503, str(err), headers={"Retry-After": str(state.settings.retry_after_s)}) from None


def _add_recall_routes(app: FastAPI) -> None:
    @app.post("/recall", response_model=RecallResponse, responses=ERRORS)
    async def recall(body: RecallRequest, request: Request, state: ServiceState = Depends(get_state)):
        # under mind serve, the common request is answered by its HTTP protocol (service/protocol.py)
        started = request.scope["state"].get(RECEIVED_AT) or time.perf_counter()
        if body.user_id is not None:
            request.scope["state"]["user_id"] = body.user_id     # for the request's log line
        try:
            query = to_query(body, state.settings)
        except LimitError as err:
            raise HTTPException(422, str(err)) from None
        return _json((await _answer(state, [query], started))[0])

    @app.post("/recall/batch", response_model=list[RecallResponse], responses=ERRORS)
    async def recall_many(body: list[RecallRequest], state: ServiceState = Depends(get_state)):
        started = time.perf_counter()
        if len(body) > state.settings.max_batch_requests:
            raise HTTPException(422, f"{len(body)} requests; the maximum per batch is "
                                     f"{state.settings.max_batch_requests}")
        try:
            queries = [to_query(r, state.settings, f"[{i}].") for i, r in enumerate(body)]
        except LimitError as err:
            raise HTTPException(422, str(err)) from None
        return _json(await _answer(state, queries, started))
