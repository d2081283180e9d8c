"""HTTP request model -> pipeline query, enforcing the configured maxima (422 beyond them)."""
from __future__ import annotations

from model.bundle import Bundle
from service.pipeline import RecallQuery
from service.schemas import RecallRequest
from service.settings import Settings


class LimitError(ValueError):
    """A request beyond a configured maximum or naming an unknown profile feature (422)."""


def _ids(values) -> tuple[str, ...]:
    return tuple(v if isinstance(v, str) else str(v) for v in values)


def to_query(request: RecallRequest, settings: Settings, bundle: Bundle | None, where: str = "") -> RecallQuery:
    """Validate ``request`` against the limits; ``where`` prefixes messages (``[3].``)."""
    top_n = settings.default_top_n if request.top_n is None else request.top_n
    if top_n > settings.max_top_n:
        raise LimitError(f"{where}top_n={top_n} exceeds the maximum {settings.max_top_n}")
    if len(request.history) > settings.max_history:
        raise LimitError(f"{where}history has {len(request.history)} items; the maximum is {settings.max_history}")
    if len(request.exclude) > settings.max_exclude:
        raise LimitError(f"{where}exclude has {len(request.exclude)} items; the maximum is {settings.max_exclude}")
    profile = {name: v if isinstance(v, str) else str(v) for name, v in (request.profile or {}).items()}
    if bundle is not None:
        unknown = sorted(set(profile) - set(bundle.profile_features))
        if unknown:
            raise LimitError(f"{where}profile features {unknown} are not used by this model "
                             f"(known: {list(bundle.profile_features)})")
    return RecallQuery(history=_ids(request.history), profile=profile, top_n=top_n,
                       exclude_history=request.exclude_history, exclude=_ids(request.exclude),
                       max_interests=request.max_interests, explain=request.explain)
