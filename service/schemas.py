"""Request and response models: the documented HTTP contract (the OpenAPI page), and the
translation of a request into a pipeline query (``to_query``, enforcing the configured maxima).

Responses are built as plain dicts on the hot path and serialised once; these models
describe them (``response_model``) without validating every answer.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

from model.retrieval import DIVERSE_POOL_DEPTH, MAX_DIVERSE_TOP_N, MAX_DIVERSITY
from service.pipeline import RecallQuery
from service.settings import Settings



def _integral(value):
    """JSON Schema's ``integer`` includes numbers with a zero fraction (``30.0``), so the strict
    models accept them as the integer they are; ``true``, ``"5"`` and ``1.5`` stay errors."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer as JSON Schema defines it (see _integral), under the models' strict mode.
JsonInt = Annotated[int, BeforeValidator(_integral)]
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
# An item id is an opaque string; a JSON integer is accepted as its decimal string.
ItemId = StrictStr | JsonInt


class RecallRequest(BaseModel):
    # strict: JSON true is not the integer 1, "5" is not a top_n (as the schema says)
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str | None = Field(None, max_length=256, description="caller's user id, only logged (at most 256 characters: "
                                                                  "it goes into every request's log line)")
    history: list[ItemId] = Field(default_factory=list, description="item ids, oldest first, most recent last")
    profile: dict[str, ItemId] | None = Field(None, description="user profile {feature: value}; a feature the model does "
                                                            "not use is ignored and counted in unknown_profile_features, "
                                                            "a value it does not know counts as unknown")
    top_n: PositiveInt | None = Field(None, description="items to return (default and maximum: settings, "
                                                        "stated in the served schema)")
    exclude_history: bool = Field(True, description="never return items of the history")
    exclude: list[ItemId] = Field(default_factory=list, description="item ids never to return")
    max_interests: PositiveInt | None = Field(None, description="use at most this many interests")
    explain: bool = Field(False, description="list, per interest, the history items routed to it")
    diversity: float = Field(
        0.0, ge=0, le=MAX_DIVERSITY, allow_inf_nan=False,
        description="lambda >= 0: 0 (default) ranks by score alone. Above 0 the list is chosen greedily from each "
                    f"interest's best {DIVERSE_POOL_DEPTH} * top_n candidates: step t (t items chosen) takes the item with the largest "
                    "gain = s' - lambda * (n_interest + n_category) / max(t, 1), where s' is the score rescaled to "
                    "[0, 1] over the candidates and n_interest / n_category count the items already chosen from "
                    "its interest / in its item category. n_category counts only when the served bundle carries "
                    "item categories (item_categories.npy, written by `mind export` from an item side feature such "
                    "as a genre; GET /readyz names the feature in `item_categories`, null when there are none): "
                    "then lists spread over interests and categories, else over interests alone. "
                    f"Deterministic; cost O(K * top_n^2); with diversity > 0, top_n is at most {MAX_DIVERSE_TOP_N}.")


class RecalledItem(BaseModel):
    item_id: str
    score: float | None = Field(description="inner product with the interest; null on cold start")
    interest: int | None = Field(description="capsule that found the item; null on cold start")


class ExplainedItem(BaseModel):
    item_id: str
    weight: float = Field(description="final routing weight of this history item to the interest")


class InterestExplanation(BaseModel):
    interest: int
    items: list[ExplainedItem]


class RecallResponse(BaseModel):
    items: list[RecalledItem]
    interests: int = Field(description="interests (capsules) used")
    cold_start: bool = Field(description="true: no known history, items are the popularity list")
    unknown_items: int = Field(description="history items not in the catalogue, ignored")
    unknown_profile_features: int = Field(description="profile features the model does not use, ignored")
    model_version: str
    took_ms: float
    explain: list[InterestExplanation] | None = None


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    path: str | None = Field(None, description="bundle or bundle root under the configured bundle root "
                                               "(relative paths are taken from it); default: the newest bundle there")


class ReloadResponse(BaseModel):
    model_version: str
    path: str
    previous_model_version: str | None


class ErrorResponse(BaseModel):
    error: str
    detail: list | None = None


class LimitError(ValueError):
    """A request beyond a configured maximum (422)."""


def _ids(values) -> tuple[str, ...]:
    return tuple(v if isinstance(v, str) else str(v) for v in values)


def to_query(request: RecallRequest, settings: Settings, where: str = "") -> RecallQuery:
    """Validate ``request`` against the limits; ``where`` prefixes messages (``[3].``).
    Profile features the bundle does not use are not an error: the pipeline ignores and
    counts them (``unknown_profile_features``), as the OpenAPI schema documents."""
    top_n = settings.default_top_n if request.top_n is None else request.top_n
    if top_n > settings.max_top_n:
        raise LimitError(f"{where}top_n={top_n} exceeds the maximum {settings.max_top_n}")
    if request.diversity > 0 and top_n > MAX_DIVERSE_TOP_N:
        raise LimitError(f"{where}top_n={top_n} with diversity > 0 exceeds {MAX_DIVERSE_TOP_N} "
                         f"(the greedy selection costs O(K * top_n^2))")
    if len(request.history) > settings.max_history:
        raise LimitError(f"{where}history has {len(request.history)} items; the maximum is {settings.max_history}")
    if len(request.exclude) > settings.max_exclude:
        raise LimitError(f"{where}exclude has {len(request.exclude)} items; the maximum is {settings.max_exclude}")
    profile = {name: v if isinstance(v, str) else str(v) for name, v in (request.profile or {}).items()}
    return RecallQuery(history=_ids(request.history), profile=profile, top_n=top_n,
                       exclude_history=request.exclude_history, exclude=_ids(request.exclude),
                       max_interests=request.max_interests, explain=request.explain,
                       diversity=request.diversity)


def document_limits(openapi: dict, settings: Settings) -> dict:
    """Write the configured maxima, which ``to_query`` enforces with 422, into the OpenAPI
    document (in place, idempotent), so that every schema-valid request is accepted
    (tests/test_fuzz.py checks it). Request bodies above ``max_body_bytes`` (413) are the one
    limit JSON Schema cannot state."""
    model = openapi["components"]["schemas"]["RecallRequest"]
    request = model["properties"]
    next(s for s in request["top_n"]["anyOf"] if s.get("type") == "integer")["maximum"] = settings.max_top_n
    request["history"]["maxItems"] = settings.max_history
    request["exclude"]["maxItems"] = settings.max_exclude
    # diversity > 0 caps top_n (the default top_n too, when the request gives none)
    diverse_top_n = {"type": "integer", "minimum": 1, "maximum": min(settings.max_top_n, MAX_DIVERSE_TOP_N)}
    model["if"] = {"properties": {"diversity": {"exclusiveMinimum": 0}}, "required": ["diversity"]}
    if settings.default_top_n <= MAX_DIVERSE_TOP_N:
        model["then"] = {"properties": {"top_n": {"anyOf": [diverse_top_n, {"type": "null"}]}}}
    else:
        model["then"] = {"properties": {"top_n": diverse_top_n}, "required": ["top_n"]}
    batch = openapi["paths"]["/recall/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    batch["maxItems"] = settings.max_batch_requests
    return openapi
