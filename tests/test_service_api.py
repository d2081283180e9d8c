"""The real app over HTTP (httpx ASGI transport, lifespan included) on small real bundles."""
from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model.bundle import load_bundle
from service.app import create_app
from service.settings import Settings
from tests.service_support import MAX_LEN, N_ITEMS, build_bundle, item_id, reference_recall, served

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A bundle root holding version A (seed 0)."""
    root = tmp_path_factory.mktemp("bundles")
    build_bundle(root, seed=0)
    return root


@pytest.fixture(scope="module")
def bundle(root):
    return load_bundle(root)


def call(settings: Settings, *requests):
    """Start the app (lifespan) and send ``requests`` = (method, path, kwargs) concurrently."""
    async def run():
        app = create_app(settings)
        async with served(app) as c:
            return await asyncio.gather(*(c.request(m, p, **kw) for m, p, kw in requests))
    return asyncio.run(run())


def settings_for(root, **overrides) -> Settings:
    """No shedding on predicted wait (a busy test machine must not turn answers into 503s)
    unless a test asks for it."""
    values = dict(bundle=root, device="cpu", admin_token=TOKEN, warmup_batches=1, latency_objective_ms=0)
    return Settings(**dict(values, **overrides))


def history_of(rows) -> list[str]:
    return [item_id(r) for r in rows]


def test_answers_match_brute_force_reference(root, bundle):
    rng = np.random.default_rng(1)
    histories = [history_of(rng.integers(0, N_ITEMS, size=n)) for n in (1, 3, 7, 12)]
    bodies = [{"history": h, "top_n": 20, "profile": {"gender": "F"}} for h in histories]
    responses = call(settings_for(root), *(("POST", "/recall", {"json": b}) for b in bodies))
    for body, response in zip(bodies, responses):
        assert response.status_code == 200, response.text
        got = response.json()
        expected = reference_recall(bundle, body["history"], 20, set(body["history"]), profile=body["profile"])
        assert [i["item_id"] for i in got["items"]] == [e[0] for e in expected]
        assert [i["score"] for i in got["items"]] == pytest.approx([e[1] for e in expected], rel=1e-4, abs=1e-4)
        assert [i["interest"] for i in got["items"]] == [e[2] for e in expected]
        assert got["cold_start"] is False and got["model_version"] == bundle.model_version
        assert 1 <= got["interests"] <= bundle.n_interests and got["took_ms"] > 0


def test_exclusions_history_top_n_and_int_ids(root, bundle):
    history = history_of(range(5, 15))
    exclude = [int(item_id(r)) for r in range(20, 60)]           # ints accepted as decimal strings
    r1, r2 = call(settings_for(root),
                  ("POST", "/recall", {"json": {"history": history, "top_n": 150, "exclude": exclude}}),
                  ("POST", "/recall", {"json": {"history": history, "top_n": 7, "exclude_history": False}}))
    items = [i["item_id"] for i in r1.json()["items"]]
    assert len(items) == 150 == len(set(items))                  # never short though 50 are excluded
    assert not set(items) & (set(history) | {str(e) for e in exclude})
    expected = reference_recall(bundle, history, 150, set(history) | {str(e) for e in exclude})
    assert items == [e[0] for e in expected]
    kept = [i["item_id"] for i in r2.json()["items"]]
    assert len(kept) == 7 and kept == [e[0] for e in reference_recall(bundle, history, 7, set())]


def test_exclusions_never_leave_the_answer_short_when_catalogue_has_enough(root):
    history = history_of(range(0, 30))
    exclude = history_of(range(30, N_ITEMS - 10))                 # leaves exactly 10 items
    (response,) = call(settings_for(root), ("POST", "/recall", {"json": {"history": history, "top_n": 10,
                                                                          "exclude": exclude}}))
    assert sorted(i["item_id"] for i in response.json()["items"]) == history_of(range(N_ITEMS - 10, N_ITEMS))


def test_long_history_keeps_most_recent_and_unknown_items_are_counted(root, bundle):
    history = history_of(range(40, 40 + MAX_LEN + 6))
    noisy = ["nope-1"] + history[:3] + ["nope-2"] + history[3:]
    (response,) = call(settings_for(root), ("POST", "/recall", {"json": {"history": noisy, "top_n": 10}}))
    got = response.json()
    assert got["unknown_items"] == 2
    expected = reference_recall(bundle, history, 10, set(history))   # reference keeps the last max_len
    assert [i["item_id"] for i in got["items"]] == [e[0] for e in expected]


def test_cold_start_for_empty_or_all_unknown_history(root, bundle):
    r1, r2 = call(settings_for(root),
                  ("POST", "/recall", {"json": {"history": [], "top_n": 5}}),
                  ("POST", "/recall", {"json": {"history": ["x", "y"], "top_n": 5,
                                                "exclude": [bundle.item_ids[bundle.popular_rows[0]]]}}))
    popular = [bundle.item_ids[r] for r in bundle.popular_rows[:6]]
    assert r1.json()["cold_start"] is True and [i["item_id"] for i in r1.json()["items"]] == popular[:5]
    assert r2.json()["unknown_items"] == 2 and [i["item_id"] for i in r2.json()["items"]] == popular[1:6]


def test_explain_and_max_interests(root, bundle):
    history = history_of(range(100, 112))
    r1, r2 = call(settings_for(root),
                  ("POST", "/recall", {"json": {"history": history, "top_n": 10, "explain": True}}),
                  ("POST", "/recall", {"json": {"history": history, "top_n": 10, "max_interests": 1}}))
    explained = r1.json()["explain"]
    assert len(explained) == r1.json()["interests"] >= 2
    for interest in explained:
        assert interest["items"] and {i["item_id"] for i in interest["items"]} <= set(history)
        weights = [i["weight"] for i in interest["items"]]
        assert weights == sorted(weights, reverse=True)
    one = r2.json()
    assert one["interests"] == 1 and {i["interest"] for i in one["items"]} == {0}
    assert [i["item_id"] for i in one["items"]] == [e[0] for e in reference_recall(
        bundle, history, 10, set(history), max_interests=1)]


def test_same_request_same_answer_across_batch_compositions(root):
    rng = np.random.default_rng(5)
    probe = {"history": history_of(rng.integers(0, N_ITEMS, 9)), "top_n": 30}
    others = [{"history": history_of(rng.integers(0, N_ITEMS, n)), "top_n": int(t)}
              for n, t in zip(rng.integers(1, 20, 12), rng.integers(1, 200, 12))]
    (alone,) = call(settings_for(root), ("POST", "/recall", {"json": probe}))
    crowd = call(settings_for(root, batch_wait_ms=20),
                 *(("POST", "/recall", {"json": b}) for b in others[:6] + [probe] + others[6:]))
    (batched,) = call(settings_for(root), ("POST", "/recall/batch", {"json": others[:3] + [probe]}))
    reference = [(i["item_id"], i["score"]) for i in alone.json()["items"]]
    assert [(i["item_id"], i["score"]) for i in crowd[6].json()["items"]] == reference
    assert [(i["item_id"], i["score"]) for i in batched.json()[3]["items"]] == reference


def test_batch_endpoint_answers_in_order(root, bundle):
    bodies = [{"history": history_of([r, r + 1, r + 2]), "top_n": 4} for r in (10, 200, 300)]
    (response,) = call(settings_for(root), ("POST", "/recall/batch", {"json": bodies}))
    for body, got in zip(bodies, response.json()):
        assert [i["item_id"] for i in got["items"]] == [e[0] for e in reference_recall(
            bundle, body["history"], 4, set(body["history"]))]


BAD_REQUESTS = [
    ({"history": [1.5]}, 422, "history"),
    ({"history": "1001"}, 422, "history"),
    ({"history": [], "top_n": 0}, 422, "top_n"),
    ({"history": [], "top_n": 5000}, 422, "top_n=5000 exceeds the maximum 1000"),
    ({"history": ["1"] * 1001}, 422, "maximum is 1000"),
    ({"history": [], "max_interests": 0}, 422, "max_interests"),
    ({"history": [], "surprise": 1}, 422, "surprise"),
    ({"history": [], "explain": "maybe"}, 422, "explain"),
]


def test_unknown_profile_features_are_ignored_and_counted(root, bundle):
    """Valid by the OpenAPI schema (any feature name), so answered: a feature the model does
    not use changes nothing and is counted, like unknown history items."""
    history = [item_id(r) for r in (3, 8, 13, 21)]
    body = {"history": history, "top_n": 10, "profile": {"gender": "F", "shoe_size": "44", "planet": 3}}
    (answer,) = call(settings_for(root), ("POST", "/recall", {"json": body}))
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["unknown_profile_features"] == 2 and got["unknown_items"] == 0
    expected = reference_recall(bundle, history, 10, set(history), profile={"gender": "F"})
    assert [i["item_id"] for i in got["items"]] == [e[0] for e in expected]


def test_integral_numbers_are_integers_as_the_schema_says(root):
    """JSON Schema's integer includes 5.0; found by the fuzz run (schema-valid, was 422)."""
    (answer,) = call(settings_for(root), ("POST", "/recall", {"json": {"history": [1003.0, item_id(9)], "top_n": 5.0,
                                                                       "max_interests": 1.0}}))
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["items"]) == 5 and answer.json()["interests"] == 1 and answer.json()["unknown_items"] == 0


def test_max_interests_beyond_int64_means_all_interests(root):
    """Schema-valid (a positive integer has no upper bound); found by the fuzz run with seed
    1032686681 (was a 500: the limit did not fit the int64 array of limits)."""
    history = history_of(range(100, 112))
    huge, full = call(settings_for(root),
                      ("POST", "/recall", {"json": {"history": history, "top_n": 10, "max_interests": 2 ** 70}}),
                      ("POST", "/recall", {"json": {"history": history, "top_n": 10}}))
    assert huge.status_code == 200, huge.text
    assert [i["item_id"] for i in huge.json()["items"]] == [i["item_id"] for i in full.json()["items"]]


@pytest.mark.parametrize("body,status,message", BAD_REQUESTS)
def test_bad_input_gets_4xx_with_a_message(root, body, status, message):
    (response,) = call(settings_for(root), ("POST", "/recall", {"json": body}))
    assert response.status_code == status
    assert message in response.json()["error"]


def test_malformed_json_oversized_body_and_oversized_batch(root):
    r1, r2, r3, r4 = call(settings_for(root, max_body_bytes=2048, max_batch_requests=2),
                          ("POST", "/recall", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
                          ("POST", "/recall", {"json": {"history": ["1"] * 1000}}),
                          ("POST", "/recall/batch", {"json": [{"history": []}] * 3}),
                          ("POST", "/recall/batch", {"json": [{"history": []}, {"history": [], "top_n": -1}]}))
    assert r1.status_code == 422 and "JSON" in r1.json()["error"]
    assert r2.status_code == 413 and "2048 bytes" in r2.json()["error"]
    assert r3.status_code == 422 and "maximum per batch is 2" in r3.json()["error"]
    assert r4.status_code == 422 and "1.top_n" in r4.json()["error"]


def test_request_id_is_echoed_or_generated(root):
    r1, r2 = call(settings_for(root), ("GET", "/healthz", {"headers": {"X-Request-ID": "abc-123"}}),
                  ("GET", "/healthz", {}))
    assert r1.headers["x-request-id"] == "abc-123"
    assert len(r2.headers["x-request-id"]) == 32


def metric_values(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_parse_and_move(root):
    async def scrape_twice():
        app = create_app(settings_for(root))
        async with served(app) as c:
            before = metric_values((await c.get("/metrics")).text)
            await c.post("/recall", json={"history": history_of([1, 2, 3, 4]) + ["ghost"]})
            await c.post("/recall", json={"history": []})
            await c.post("/recall", json={"top_n": 0})
            return before, metric_values((await c.get("/metrics")).text)
    before, after = asyncio.run(scrape_twice())

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)
    assert moved("mind_recall_requests_total", endpoint="/recall", status="200") == 2
    assert moved("mind_recall_requests_total", endpoint="/recall", status="422") == 1
    assert moved("mind_recall_unknown_items_total") == 1
    assert moved("mind_recall_cold_starts_total") == 1
    assert moved("mind_recall_batch_size_requests_count") >= 1
    assert moved("mind_recall_stage_duration_seconds_count", stage="search") >= 1
    assert moved("mind_recall_stage_duration_seconds_count", stage="queue") == 2
    assert after[("mind_recall_reloads_total", (("result", "success"),))] == 1
    assert after[("mind_recall_queue_depth_requests", ())] == 0
    assert any(name == "mind_recall_model_info" for name, _ in after)


def test_full_queue_answers_503_with_retry_after(root):
    body = {"history": history_of(range(12)), "top_n": 100}
    responses = call(settings_for(root, max_queue=1, max_batch_size=1, batch_wait_ms=0),
                     *(("POST", "/recall", {"json": body}) for _ in range(12)))
    statuses = [r.status_code for r in responses]
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1" and "overloaded" in rejected.json()["error"]


def test_passed_deadline_answers_503(root):
    (response,) = call(settings_for(root, request_timeout_ms=0.001),
                       ("POST", "/recall", {"json": {"history": history_of([1, 2])}}))
    assert response.status_code == 503 and "deadline" in response.json()["error"]
    assert "retry-after" in response.headers


def test_missing_bundle_is_alive_not_ready_then_ready_when_one_appears(tmp_path):
    empty_root = tmp_path / "root"
    empty_root.mkdir()

    async def run():
        app = create_app(Settings(bundle=empty_root, device="cpu", watch_interval_s=0.05, warmup_batches=1))
        async with served(app) as c:
            alive, not_ready = await c.get("/healthz"), await c.get("/readyz")
            recall = await c.post("/recall", json={"history": []})
            await asyncio.to_thread(build_bundle, empty_root, 3)
            for _ in range(200):
                if (ready := await c.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            return alive, not_ready, recall, ready
    alive, not_ready, recall, ready = asyncio.run(run())
    assert alive.status_code == 200
    assert not_ready.status_code == 503 and "holds no bundle" in not_ready.json()["error"]
    assert recall.status_code == 503
    assert ready.status_code == 200


def test_version_summarises_the_manifest(root, bundle):
    (response,) = call(settings_for(root), ("GET", "/version", {}))
    got = response.json()
    assert got["model_version"] == bundle.model_version and got["n_items"] == N_ITEMS
    assert got["max_len"] == MAX_LEN and got["device"] == "cpu"


def test_admin_reload_guard_and_path_confinement(root, tmp_path):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r_none, r_wrong, r_outside, r_absolute = call(
        settings_for(root),
        ("POST", "/admin/reload", {}),
        ("POST", "/admin/reload", {"headers": {"Authorization": "Bearer nope"}}),
        ("POST", "/admin/reload", {"headers": auth, "json": {"path": "../../etc"}}),
        ("POST", "/admin/reload", {"headers": auth, "json": {"path": str(tmp_path)}}))
    assert r_none.status_code == 401 and r_wrong.status_code == 403
    assert r_outside.status_code == 400 and "outside the bundle root" in r_outside.json()["error"]
    assert r_absolute.status_code == 400
    (disabled,) = call(Settings(bundle=root, device="cpu", warmup_batches=1), ("POST", "/admin/reload", {"headers": auth}))
    assert disabled.status_code == 403 and "disabled" in disabled.json()["error"]


def test_reload_swaps_versions_and_refuses_a_corrupted_bundle(tmp_path):
    root = tmp_path / "root"
    first = build_bundle(root / "a", seed=0)
    second = build_bundle(root / "b", seed=1)
    corrupt = root / "c"
    shutil.copytree(second, corrupt)
    (corrupt / "item_vectors.npy").write_bytes(b"\x93NUMPY garbage")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"history": history_of([1, 2, 3])}

    async def run():
        app = create_app(Settings(bundle=first, device="cpu", admin_token=TOKEN, warmup_batches=1))
        async with served(app) as c:
            v1 = (await c.post("/recall", json=body)).json()["model_version"]
            refused = await c.post("/admin/reload", headers=auth, json={"path": "c"})
            still = (await c.post("/recall", json=body)).json()["model_version"]
            swapped = await c.post("/admin/reload", headers=auth, json={"path": "b"})
            v2 = (await c.post("/recall", json=body)).json()["model_version"]
            failures = metric_values((await c.get("/metrics")).text)[("mind_recall_reloads_total", (("result", "failure"),))]
            return v1, refused, still, swapped, v2, failures
    v1, refused, still, swapped, v2, failures = asyncio.run(run())
    assert refused.status_code == 422 and "item_vectors.npy" in refused.json()["error"]
    assert still == v1 and failures == 1
    assert swapped.status_code == 200 and swapped.json()["previous_model_version"] == v1
    assert v2 == swapped.json()["model_version"] == load_bundle(second).model_version != v1


def test_round_robin_policy_alternates_interests(root, bundle):
    history = history_of(range(200, 212))
    (response,) = call(settings_for(root, merge_policy="round_robin"),
                       ("POST", "/recall", {"json": {"history": history, "top_n": 12}}))
    got = response.json()
    interests = [i["interest"] for i in got["items"]]
    used = got["interests"]
    assert used >= 2 and interests[:used] == list(range(used))          # one per interest per round
    assert len({i["item_id"] for i in got["items"]}) == 12 and not {i["item_id"] for i in got["items"]} & set(history)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_gpu_is_not_ready_with_the_reason(root):
    async def run():
        app = create_app(Settings(bundle=root, device="cuda", warmup_batches=1))
        async with served(app) as c:
            return await c.get("/healthz"), await c.get("/readyz")
    alive, ready = asyncio.run(run())
    assert alive.status_code == 200
    assert ready.status_code == 503 and "user_tower.pt" in ready.json()["error"]


def test_common_requests_are_answered_by_the_protocol_and_others_by_fastapi_with_the_same_answer(root):
    """mind serve's HTTP protocol (service/protocol.py) answers a POST /recall whose JSON body
    orjson parses and that validates; anything else goes through FastAPI's own parsing. Both
    reach the same answer, and the protocol's responses carry the same headers."""
    from service.protocol import parse_common

    assert parse_common(b'{"history": ["1001"], "top_n": 3}').top_n == 3
    assert parse_common(b'{"history": [], "top_n": NaN}') is None            # orjson refuses NaN
    assert parse_common(b'{"history": ["\\ud800"]}') is None                 # and lone surrogates
    assert parse_common(b'{"top_n": 0}') is None                             # invalid: FastAPI's 422

    history = history_of([3, 9, 27, 81])
    body = '{"history": [%s], "top_n": 15}'
    common = body % ", ".join(f'"{i}"' for i in history)
    with_surrogate = body % ", ".join(f'"{i}"' for i in history + ["\\ud800"])  # an unknown id orjson refuses
    requests = [(common, "application/json"), (with_surrogate, "application/json"),
                (common, "application/json; charset=utf-8"), (common, "text/plain"), ('{"top_n": 0}', "application/json")]

    async def run():
        app = create_app(settings_for(root))
        front, taken = app.state.front, []
        submit = front.submit
        front.submit = lambda request, *rest: (taken.append(request.top_n), submit(request, *rest))[1]
        async with served(app) as c:
            answers = [await c.post("/recall", content=content, headers={"content-type": kind, "x-request-id": f"r{n}"})
                       for n, (content, kind) in enumerate(requests)]
        return taken, answers
    taken, (fast, slow, charset, text, invalid) = asyncio.run(run())
    assert taken == [15, 15]                       # the common body, with and without a charset
    assert fast.status_code == slow.status_code == charset.status_code == 200
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
    assert [a.headers["x-request-id"] for a in (fast, slow, charset)] == ["r0", "r1", "r2"]
    items = [(i["item_id"], i["score"]) for i in fast.json()["items"]]
    assert len(items) == 15 and [(i["item_id"], i["score"]) for i in slow.json()["items"]] == items
    assert slow.json()["unknown_items"] == 1 and fast.json()["unknown_items"] == 0
    assert [(i["item_id"], i["score"]) for i in charset.json()["items"]] == items
    assert text.status_code == invalid.status_code == 422 and "top_n" in invalid.json()["error"]
    assert invalid.json()["detail"][0]["loc"] == ["body", "top_n"]     # FastAPI's own error body


def test_the_protocol_answers_pipelined_and_closing_requests_in_order(root):
    """Requests sent back to back on one connection before any answer (HTTP/1.1 pipelining) are
    answered in order, the first by the protocol and the rest through FastAPI once it is done;
    a request asking to close gets its answer, then the connection closes."""
    def raw(body: dict, extra: str = "") -> bytes:
        payload = json.dumps(body).encode()
        return (f"POST /recall HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n{extra}"
                f"content-length: {len(payload)}\r\n\r\n").encode() + payload

    async def run():
        async with served(create_app(settings_for(root))) as c:
            port = int(str(c.base_url).rsplit(":", 1)[1].rstrip("/"))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw({"history": history_of([1, 2]), "top_n": 3}) + raw({"history": [], "top_n": 2}) +
                         raw({"history": history_of([5]), "top_n": 4}, "connection: close\r\n"))
            received = await asyncio.wait_for(reader.read(), 60)       # to EOF: the server closed
            writer.close()
            return received
    received = asyncio.run(run())
    answers = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in received.split(b"HTTP/1.1 ")[1:]]
    assert [len(a["items"]) for a in answers] == [3, 2, 4]
    assert [a["cold_start"] for a in answers] == [False, True, False]


def test_a_failed_batch_answers_500_with_the_reason_and_the_service_goes_on(root, monkeypatch):
    """A batch that raises (a bug, a broken tower) answers its callers 500 with a JSON reason
    and logs the traceback; the connection and the service keep working."""
    import service.state

    real = service.state.recall_batch
    failing = {"on": False}                      # the warm-up batches at load must pass

    def flaky(bundle, queries, options):
        if failing["on"]:
            raise RuntimeError("tower exploded")
        return real(bundle, queries, options)
    monkeypatch.setattr(service.state, "recall_batch", flaky)

    async def run():
        async with served(create_app(settings_for(root))) as c:
            failing["on"] = True
            broken = await c.post("/recall", json={"history": history_of([1, 2, 3])})
            failing["on"] = False
            return broken, await c.post("/recall", json={"history": history_of([1, 2, 3])})
    broken, after = asyncio.run(run())
    assert broken.status_code == 500
    assert broken.json() == {"error": "internal error: RuntimeError; see the server log"}
    assert broken.headers["x-request-id"] and after.status_code == 200


def test_took_ms_counts_from_the_headers_when_the_body_comes_later(root):
    """A request's latency (its took_ms, and the time the latency objective counts) starts when
    the service read its headers: a body that trickles in later is time the caller waited."""
    body = json.dumps({"history": history_of([1, 2, 3]), "top_n": 5}).encode()

    async def run():
        async with served(create_app(settings_for(root))) as c:
            port = int(str(c.base_url).rsplit(":", 1)[1].rstrip("/"))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /recall HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\nconnection: close\r\n"
                         b"content-length: %d\r\n\r\n" % len(body) + body[:10])
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.write(body[10:])
            received = await asyncio.wait_for(reader.read(), 60)
            writer.close()
            return received
    head, payload = asyncio.run(run()).split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and json.loads(payload)["took_ms"] >= 300
