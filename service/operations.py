"""Operational routes: health, readiness, version, metrics and the guarded reload."""
from __future__ import annotations

import hmac

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from model.bundle import BundleError
from service.schemas import ErrorResponse, ReloadRequest, ReloadResponse
from service.state import ReloadPathError, ServiceState, get_state, reload_target

VERSION_KEYS = ("model_version", "created_at", "format_version", "n_items", "dim", "n_interests", "max_len",
                "profile_features", "index", "hyperparameters", "metrics", "item_categories")


async def require_admin(request: Request, state: ServiceState = Depends(get_state)) -> None:
    """Bearer token check, constant time; the endpoint is off when no token is configured."""
    token = state.settings.admin_token
    if token is None:
        raise HTTPException(403, "admin endpoints are disabled: no MIND_ADMIN_TOKEN configured")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(401, "missing 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(403, "invalid admin token")


def add_operational_routes(app: FastAPI) -> None:
    @app.get("/healthz")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(state: ServiceState = Depends(get_state)):
        bundle = state.bundle
        if bundle is None:
            return JSONResponse({"error": f"not ready: {state.not_ready_reason}"}, status_code=503,
                                headers={"Retry-After": str(state.settings.retry_after_s)})
        return {"status": "ready", "model_version": bundle.model_version,
                "item_categories": bundle.categories.feature if bundle.categories is not None else None}

    @app.get("/version", responses={503: {"model": ErrorResponse}})
    async def version(state: ServiceState = Depends(get_state)):
        bundle = state.bundle
        if bundle is None:
            raise HTTPException(503, f"not ready: {state.not_ready_reason}")
        summary = {key: bundle.manifest.get(key) for key in VERSION_KEYS}
        return dict(summary, path=str(bundle.path), device=str(bundle.device))

    @app.get("/metrics", response_class=Response)
    async def metrics(state: ServiceState = Depends(get_state)):
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", response_model=ReloadResponse, dependencies=[Depends(require_admin)],
              responses={code: {"model": ErrorResponse} for code in (400, 401, 403, 422)})
    async def reload(body: ReloadRequest | None = None, state: ServiceState = Depends(get_state)):
        previous = state.bundle
        try:
            target = reload_target(state.root, body.path if body else None)
            bundle = await state.load(target)
        except ReloadPathError as err:
            raise HTTPException(400, str(err)) from None
        except BundleError as err:
            raise HTTPException(422, f"bundle refused, still serving "
                                     f"{previous.model_version if previous else 'nothing'}: {err}") from None
        return {"model_version": bundle.model_version, "path": str(bundle.path),
                "previous_model_version": previous.model_version if previous else None}
