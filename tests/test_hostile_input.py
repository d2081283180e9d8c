"""Hand-written hostile requests: each is a 4xx with a JSON message naming the problem (never a
500 or a stack trace), and the service answers normally afterwards.

The real app runs in-process (httpx ASGI transport, lifespan included) on a small real bundle.
"""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.service_support import N_ITEMS, build_bundle, item_id, served

MAX_BODY = 64 * 1024
JSON = {"content-type": "application/json"}
GOOD = {"history": [item_id(1), item_id(2), item_id(3)], "top_n": 10}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-bundles")
    build_bundle(root, seed=0)
    return root


def run_requests(settings: Settings, requests: list[dict]) -> list[httpx.Response]:
    """Send ``requests`` (httpx.request kwargs) one by one to one app instance, then GOOD."""
    async def run():
        app = create_app(settings)
        async with served(app) as client:
            answers = [await client.request(**r) for r in requests]
            answers.append(await client.post("/recall", json=GOOD))
            return answers
    return asyncio.run(run())


def settings_for(root, **overrides) -> Settings:
    values = dict(bundle=root, device="cpu", warmup_batches=1, log_requests=False, max_body_bytes=MAX_BODY)
    return Settings(**dict(values, **overrides))


def raw(body: bytes | str, path: str = "/recall", headers: dict | None = None) -> dict:
    content = body.encode() if isinstance(body, str) else body
    return {"method": "POST", "url": path, "content": content, "headers": JSON if headers is None else headers}


def chunks(total: int, size: int = 8192):
    """A body streamed without Content-Length."""
    async def gen():
        sent = 0
        while sent < total:
            yield b" " * min(size, total - sent)
            sent += size
    return gen()


HOSTILE = {   # name -> (request, expected status, words the message must contain)
    "body over the limit (declared)": (raw(b"[" + b"1," * MAX_BODY + b"1]"), 413, "larger than"),
    "body over the limit (streamed, no length)": (
        {"method": "POST", "url": "/recall", "content": chunks(4 * MAX_BODY), "headers": JSON}, 413, "larger than"),
    "deeply nested JSON": (raw("[" * 30_000 + "]" * 30_000), 400, "pars"),
    "deeply nested object": (raw('{"history": ' + "[" * 20_000 + "]" * 20_000 + "}"), 400, "pars"),
    "non-UTF-8 body": (raw(b'{"history": ["\xff\xfe\xfa"]}'), 400, "pars"),
    "NaN top_n": (raw('{"history": [], "top_n": NaN}'), 422, "top_n"),
    "Infinity top_n": (raw('{"top_n": Infinity}'), 422, "top_n"),
    "1e400 top_n": (raw('{"top_n": 1e400}'), 422, "top_n"),
    "NaN item id": (raw('{"history": [NaN, 1001]}'), 422, "history"),
    "-Infinity max_interests": (raw('{"max_interests": -Infinity}'), 422, "max_interests"),
    "negative top_n": (raw('{"top_n": -5}'), 422, "top_n"),
    "zero top_n": (raw('{"top_n": 0}'), 422, "top_n"),
    "enormous top_n": (raw('{"top_n": 100000000000000000000000000000000}'), 422, "top_n"),
    "top_n as string": (raw('{"top_n": "10"}'), 422, "top_n"),
    "top_n as bool": (raw('{"top_n": true}'), 422, "top_n"),
    "100k-item history": (raw(json.dumps({"history": list(range(100_000))})), 413, "larger than"),
    "history over max_history": (raw(json.dumps({"history": list(range(1001, 3001))})), 422, "maximum is"),
    "history as a string": (raw('{"history": "1001,1002"}'), 422, "history"),
    "history of objects": (raw('{"history": [{"id": 1}]}'), 422, "history"),
    "float item id": (raw('{"history": [1001.5]}'), 422, "history"),
    "oversized user_id (logged)": (raw(json.dumps({"user_id": "u" * 10_000})), 422, "user_id"),
    "unknown field": (raw('{"histroy": ["1001"]}'), 422, "histroy"),
    "profile as a list": (raw('{"profile": ["F"]}'), 422, "profile"),
    "body is a list": (raw("[1, 2, 3]"), 422, "body"),
    "body is a string": (raw('"hello"'), 422, "body"),
    "body is null": (raw("null"), 422, "body"),
    "empty body": (raw(b""), 422, "body"),
    "truncated JSON": (raw('{"history": [1001, '), 422, "JSON"),
    "wrong content type": (raw(json.dumps(GOOD), headers={"content-type": "text/plain"}), 422, "body"),
    "form content type": (raw("history=1001", headers={"content-type": "application/x-www-form-urlencoded"}),
                          422, "body"),
    "batch body is an object": (raw(json.dumps(GOOD), path="/recall/batch"), 422, "body"),
    "batch over max_batch_requests": (raw(json.dumps([GOOD] * 257), path="/recall/batch"), 422, "maximum"),
    "batch with one bad request": (raw(json.dumps([GOOD, {"top_n": -1}]), path="/recall/batch"), 422, "top_n"),
    "unknown path": ({"method": "POST", "url": "/recall/../../etc/passwd", "json": GOOD}, 404, "Not Found"),
    "wrong method": ({"method": "GET", "url": "/recall"}, 405, "Method Not Allowed"),
    "reload without a token configured": ({"method": "POST", "url": "/admin/reload", "json": {}}, 403, "disabled"),
}


@pytest.fixture(scope="module")
def hostile_answers(root):
    """Every HOSTILE request, in order, to one app; the last answer is a normal request's."""
    names = list(HOSTILE)
    answers = run_requests(settings_for(root), [HOSTILE[n][0] for n in names])
    return dict(zip(names + ["after"], answers))


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_request_is_a_4xx_with_a_message(hostile_answers, name):
    _, status, words = HOSTILE[name]
    response = hostile_answers[name]
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert isinstance(body["error"], str) and words.lower() in body["error"].lower(), body
    assert "Traceback" not in response.text


def test_service_keeps_answering_after_hostile_requests(hostile_answers):
    after = hostile_answers["after"]
    assert after.status_code == 200, after.text
    assert len(after.json()["items"]) == 10


def test_accepted_oddities_are_answered_sanely(root):
    """Inputs that are legal but odd: duplicates, control characters, ids not in the catalogue,
    a profile feature the model does not use, a 100k-item history where the limits allow it,
    top_n above the catalogue size."""
    control = ["\u0000", "\x1b[31mred", "line\nbreak", "\u202eevil", "1001\r\n"]
    requests = [
        {"method": "POST", "url": "/recall",
         "json": {"history": [item_id(5)] * 50 + [item_id(6)] * 50, "exclude": [item_id(7)] * 100, "top_n": 30}},
        {"method": "POST", "url": "/recall", "json": {"history": control, "user_id": "\u0000\n", "top_n": 5,
                                                       "profile": {"\u0000evil": "x", "gender": "F"}},
         "headers": {"x-request-id": "bad\tid"}},
        {"method": "POST", "url": "/recall", "json": {"history": [item_id(r % 100) for r in range(100_000)],
                                                       "top_n": 20}},
        {"method": "POST", "url": "/recall", "json": {"history": [item_id(1)], "top_n": 1000}},
    ]
    settings = settings_for(root, max_body_bytes=4 * 1024 * 1024, max_history=200_000)
    dup, ctl, big, wide, after = run_requests(settings, requests)
    items = [i["item_id"] for i in dup.json()["items"]]
    assert dup.status_code == 200 and len(items) == 30 == len(set(items))
    assert not {item_id(5), item_id(6), item_id(7)} & set(items)
    assert ctl.status_code == 200 and ctl.json()["cold_start"] is True and ctl.json()["unknown_items"] == 5
    assert ctl.json()["unknown_profile_features"] == 1
    assert ctl.headers["x-request-id"] != "bad\tid"          # invalid request ids are replaced
    assert big.status_code == 200 and len(big.json()["items"]) == 20, big.text[:300]
    assert wide.status_code == 200 and len(wide.json()["items"]) == N_ITEMS - 1
    assert after.status_code == 200
