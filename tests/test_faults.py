"""Fault drills fast enough for the suite (the app in-process, lifespan included, real bundles):
a bundle corrupted on disk after load, a bundle directory missing at start, reload paths
that try to leave the bundle root (or cannot be resolved), the admin token,
checksum-before-TorchScript, and the batcher not computing requests doomed to time out.

The slower drills over a real uvicorn process (swap under load, SIGTERM during load, a
killed worker restarted) are in bench/faults.py and tests/test_service_server.py.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import shutil

import pytest
import torch

from model.bundle import BundleError, load_bundle
from service.app import create_app
from service.batcher import Batcher, DeadlineError
from service.settings import Settings
from tests.service_support import build_bundle, item_id, served, slow_worker

TOKEN = "fault-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUERY = {"history": [item_id(3), item_id(9), item_id(27), item_id(81)], "top_n": 25}


def settings_for(bundle, **overrides) -> Settings:
    values = dict(bundle=bundle, device="cpu", admin_token=TOKEN, warmup_batches=1, log_requests=False)
    return Settings(**dict(values, **overrides))


def with_app(settings: Settings, scenario):
    """Run ``await scenario(client, app)`` against a started app; returns its result."""
    async def run():
        app = create_app(settings)
        async with served(app) as client:
            return await scenario(client, app)
    return asyncio.run(run())


def reload_failures(app) -> float:
    return app.state.service.metrics.reloads.labels(result="failure")._value.get()


def corrupt(file) -> None:
    """Overwrite everything after the first 128 bytes in place (same size), as a failing disk or
    a careless copy over the served version would."""
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.seek(128)
        f.write(bytes(range(7, 256, 3)) * ((size - 128) // 83 + 1))
        f.truncate(size)


@pytest.mark.parametrize("victim", ["user_tower.pt", "index.faiss", "item_ids.json", "item_vectors.npy"])
def test_corrupted_after_load_running_model_unaffected_reload_refused(tmp_path, victim):
    served = build_bundle(tmp_path / "bundle", seed=0)

    async def scenario(client, app):
        before = (await client.post("/recall", json=QUERY)).json()
        failures = reload_failures(app)
        corrupt(served / victim)
        after = (await client.post("/recall", json=QUERY)).json()
        refused = await client.post("/admin/reload", json={"path": "bundle"}, headers=AUTH)
        again = (await client.post("/recall", json=QUERY)).json()
        return before, after, refused, again, reload_failures(app) - failures, (await client.get("/readyz"))

    before, after, refused, again, new_failures, ready = with_app(settings_for(served), scenario)
    assert refused.status_code == 422, refused.text
    assert victim in refused.json()["error"] and "still serving" in refused.json()["error"]
    assert new_failures == 1
    assert ready.status_code == 200
    for answer in (after, again):   # same model, same items, same scores
        assert answer["model_version"] == before["model_version"]
        assert answer["items"] == before["items"]


def test_missing_bundle_dir_at_start_then_ready_when_one_appears(tmp_path, caplog):
    root = tmp_path / "bundles"          # does not exist yet

    async def scenario(client, app):
        first = [await client.get(p) for p in ("/readyz", "/healthz")]
        recall = await client.post("/recall", json=QUERY)
        await asyncio.to_thread(build_bundle, root, 0)     # a trainer exports while we serve
        for _ in range(200):
            ready = await client.get("/readyz")
            if ready.status_code == 200:
                break
            await asyncio.sleep(0.05)
        return first, recall, ready, await client.post("/recall", json=QUERY)

    with caplog.at_level(logging.INFO, logger="service"):
        (readyz, healthz), recall, ready, answer = with_app(settings_for(root, watch_interval_s=0.05), scenario)
    assert readyz.status_code == 503 and str(root) in readyz.json()["error"], readyz.text
    assert readyz.headers["retry-after"]
    assert healthz.status_code == 200
    assert recall.status_code == 503 and "not ready" in recall.json()["error"]
    assert ready.status_code == 200 and answer.status_code == 200 and len(answer.json()["items"]) == 25
    refused = [r for r in caplog.records if r.name == "service.state" and r.levelno >= logging.ERROR]
    assert refused and str(root) in getattr(refused[0], "error", ""), [r.getMessage() for r in caplog.records]


def test_missing_bundle_without_watch_logs_how_to_recover(tmp_path, caplog):
    async def scenario(client, app):
        return await client.get("/readyz"), await client.get("/healthz")

    with caplog.at_level(logging.INFO, logger="service"):
        readyz, healthz = with_app(settings_for(tmp_path / "nowhere"), scenario)
    assert readyz.status_code == 503 and healthz.status_code == 200
    assert any("MIND_WATCH_INTERVAL_S" in r.getMessage() for r in caplog.records)


@pytest.fixture
def root_with_outside(tmp_path):
    """A bundle root with one version, a valid bundle OUTSIDE it, and a symlink pointing out."""
    root = tmp_path / "root"
    root.mkdir()
    build_bundle(root, seed=0)
    outside = build_bundle(tmp_path / "outside", seed=1)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root, outside


def test_reload_path_never_leaves_the_bundle_root(root_with_outside):
    root, outside = root_with_outside
    attempts = ["../outside", str(outside), "escape", "./../root/../outside", f"{root}/../outside",
                "escape/manifest.json", "/etc", "../../../../../../etc/passwd"]

    async def scenario(client, app):
        answers = [await client.post("/admin/reload", json={"path": p}, headers=AUTH) for p in attempts]
        return answers, (await client.get("/version")).json()

    answers, version = with_app(settings_for(root), scenario)
    for path, answer in zip(attempts, answers):
        assert answer.status_code == 400, (path, answer.text)
        assert "outside the bundle root" in answer.json()["error"], (path, answer.text)
    assert os.path.commonpath([version["path"], str(root)]) == str(root), version["path"]


def test_reload_path_that_cannot_be_resolved_is_a_400(root_with_outside):
    """Found by the long fuzz run: a NUL byte made Path.resolve raise (500)."""
    root, _ = root_with_outside
    (root / "loop").symlink_to(root / "loop")
    attempts = ["a\u0000b", "loop/x"]

    async def scenario(client, app):
        answers = [await client.post("/admin/reload", json={"path": p}, headers=AUTH) for p in attempts]
        return answers, await client.get("/readyz")

    answers, ready = with_app(settings_for(root), scenario)
    for path, answer in zip(attempts, answers):
        assert answer.status_code == 400, (path, answer.text)
    assert "cannot be resolved" in answers[0].json()["error"]
    assert ready.status_code == 200


def test_admin_token_required_and_compared_in_constant_time(root_with_outside, monkeypatch):
    root, _ = root_with_outside
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))

    async def scenario(client, app):
        return [await client.post("/admin/reload", json={}, headers=h) for h in
                ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"},  # "Bearer " arrives so: HTTP strips the space
                 {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"}, AUTH)]

    none, basic, empty, wrong, longer, good = with_app(settings_for(root), scenario)
    assert none.status_code == basic.status_code == empty.status_code == 401
    assert none.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == longer.status_code == 403
    assert good.status_code == 200, good.text
    assert (b"wrong", TOKEN.encode()) in compared and (TOKEN.encode(), TOKEN.encode()) in compared


def test_checksum_checked_before_the_torchscript_file_is_loaded(tmp_path, monkeypatch):
    bundle = build_bundle(tmp_path / "bundle", seed=0)
    payload = b"import os; os.system('touch pwned')"      # same size, different bytes
    tower = bundle / "user_tower.pt"
    tower.write_bytes(payload.ljust(tower.stat().st_size, b"#"))
    loaded = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loaded.append(a))
    with pytest.raises(BundleError, match="user_tower.pt: sha256 mismatch"):
        load_bundle(bundle)
    assert loaded == []
    shutil.rmtree(bundle)


def test_overload_a_job_that_would_expire_during_its_batch_is_not_computed():
    """Past saturation the FIFO queue hands the worker jobs about to expire; computing them
    wastes the capacity (they time out during the batch). With batches taking ~0.2 s, a job
    with 0.1 s left is refused at once and never run; the goodput effect is in bench/overload.py."""
    seen = []

    slow = slow_worker(seen, 0.2)

    async def main():
        batcher = Batcher(slow, max_batch_size=1, wait_s=0, max_queue=10)
        batcher.start()
        assert await batcher.submit("first", 5) == "first"     # teaches the batch time
        started = asyncio.get_running_loop().time()
        with pytest.raises(DeadlineError, match="within a batch"):
            await batcher.submit("doomed", 0.1)
        refused_after = asyncio.get_running_loop().time() - started
        assert await batcher.submit("roomy", 5) == "roomy"
        await batcher.drain_and_stop()
        return refused_after

    refused_after = asyncio.run(main())
    assert seen == ["first", "roomy"]
    assert refused_after < 0.1                                # refused at once, not at its deadline
