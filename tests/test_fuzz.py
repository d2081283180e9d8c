"""Schemathesis fuzzing of the service against its own OpenAPI schema (``app.openapi()``).

The app runs in-process over schemathesis' ASGI transport with its lifespan started once
(a real bundle loaded, the batcher running). Every operation gets schema-valid (positive) and
schema-violating (negative) cases; each response must: not be a 5xx, carry a documented status
code and content type, match the documented response schema, ACCEPT schema-valid data (2xx),
reject invalid data with a 4xx, and come back within ``CALL_TIMEOUT_S`` (no hang).

Every run draws a fresh seed and prints it (``fuzz seed N``); ``FUZZ_SEED=N`` replays that
run exactly. Over 2,000 cases in all; the longer run multiplies every budget:
``FUZZ_SCALE=10 nice -n 10 .venv/bin/python -m pytest -q tests/test_fuzz.py``.
"""
from __future__ import annotations

import os
import random

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.settings import Settings
from tests.service_support import build_bundle, item_id

TOKEN = "fuzz-token"
CALL_TIMEOUT_S = 10
NO_SHEDDING_MS = 60_000.0
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]
# Schema-valid requests must get a 2xx (checked in `fuzz`: stricter than schemathesis'
# positive_data_acceptance, which also lets 401/403/404/409/429 pass). The served schema states
# the configured maxima (service.schemas.document_limits) and unknown profile features are
# ignored, so only a reload whose path names no bundle under the root may be refused: which
# paths exist is the filesystem's business, not something a schema can state.
SEMANTIC_REJECTIONS = {"POST /admin/reload": {400, 422}}
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2 ** 32))
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# (operation, mode, max_examples, send the admin token)
PLAN = [
    ("POST /recall", POSITIVE, 700, False),
    ("POST /recall", NEGATIVE, 450, False),
    ("POST /recall/batch", POSITIVE, 300, False),
    ("POST /recall/batch", NEGATIVE, 200, False),
    ("POST /admin/reload", POSITIVE, 150, True),
    ("POST /admin/reload", NEGATIVE, 150, True),
    ("POST /admin/reload", NEGATIVE, 100, False),
    ("GET /healthz", POSITIVE, 5, False),
    ("GET /readyz", POSITIVE, 5, False),
    ("GET /version", POSITIVE, 5, False),
    ("GET /metrics", POSITIVE, 5, False),
]


@pytest.fixture(scope="module", autouse=True)
def announce_seed(request):
    """Print the run's seed (also with -q and captured output) so a failure can be replayed."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nfuzz seed {SEED} (replay: FUZZ_SEED={SEED})", flush=True)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-bundles")
    build_bundle(root, seed=0)
    # No load shedding or deadline here (a loaded CI machine would get 503s for schema-valid
    # requests): this run checks schema against behaviour; overload has its own tests.
    app = create_app(Settings(bundle=root, device="cpu", admin_token=TOKEN, warmup_batches=1, log_requests=False,
                              max_batch_requests=32, latency_objective_ms=NO_SHEDDING_MS,
                              request_timeout_ms=NO_SHEDDING_MS))
    yield app
    shutdown_lifespans()   # schemathesis keeps a started lifespan until interpreter exit otherwise


@pytest.fixture(scope="module")
def schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def counts():
    """Cases run per operation label, summed over modes (filled by the fuzz test)."""
    return {}


def fuzz(operation, mode: GenerationMode, max_examples: int, headers: dict) -> dict[int, int]:
    """Run ``max_examples`` cases of ``operation`` drawn from ``SEED``; returns {status: count}."""
    statuses: dict[int, int] = {}
    accepted_rejections = SEMANTIC_REJECTIONS.get(operation.label, set())

    @seed(SEED)
    @settings(max_examples=max_examples, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(headers=headers, timeout=CALL_TIMEOUT_S)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS, headers=headers)
        if mode is POSITIVE:
            assert response.status_code < 300 or response.status_code in accepted_rejections, (
                f"schema-valid request rejected (FUZZ_SEED={SEED}): {case.as_curl_command()} -> "
                f"{response.status_code} {response.text[:300]}")

    run()
    return statuses


@pytest.mark.parametrize("label,mode,max_examples,with_token", PLAN,
                         ids=[f"{p[0]}-{p[1].value}{'-token' if p[3] else ''}" for p in PLAN])
def test_fuzz_operation(schema, counts, label, mode, max_examples, with_token):
    operation = schema.find_operation_by_label(label)
    assert operation is not None, f"{label} missing from the OpenAPI schema"
    headers = {"Authorization": f"Bearer {TOKEN}"} if with_token else {}
    statuses = fuzz(operation, mode, max_examples * SCALE, headers)
    counts[label] = counts.get(label, 0) + sum(statuses.values())
    assert not any(code >= 500 for code in statuses), statuses
    if mode is NEGATIVE and label.startswith("POST"):
        assert set(statuses) - {200}, f"no negative case of {label} was rejected: {statuses}"


def test_fuzzed_service_still_answers_and_counted_enough(app, counts):
    """Runs after the fuzz cases (file order): at least 2,000 cases ran, and the app answers."""
    assert sum(counts.values()) >= 2000, counts
    assert counts["POST /recall"] >= 800 and counts["POST /recall/batch"] >= 300, counts
    client = schemathesis.python.asgi.get_client(app)
    with client:
        ready = client.get("/readyz", timeout=CALL_TIMEOUT_S)
        answer = client.post("/recall", json={"history": [item_id(1), item_id(2)], "top_n": 5},
                             timeout=CALL_TIMEOUT_S)
    assert ready.status_code == 200, ready.text
    assert answer.status_code == 200 and len(answer.json()["items"]) == 5, answer.text
