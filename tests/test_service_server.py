"""`mind serve` as a real uvicorn process on a free port: reload under load, SIGTERM drain."""
from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model.bundle import load_bundle
from tests.service_support import build_bundle, free_port, item_id, start_server

pytestmark = pytest.mark.slow
TOKEN = "t0ken"
BATCH_WAIT_MS = 1000


def wait_for_in_progress(base: str, n: int, timeout_s: float = 20) -> None:
    """Until the server reports at least ``n`` requests received and not yet answered."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
            if family.name == "mind_recall_requests_in_progress" and family.samples[0].value >= n:
                return
        time.sleep(0.02)
    raise AssertionError(f"never {n} requests in flight")


def keep_sending(url: str, stop: threading.Event, seen: list) -> None:
    """POST /recall until ``stop``; record (status, model_version or error)."""
    with httpx.Client(timeout=10) as client:
        i = 0
        while not stop.is_set():
            r = client.post(url, json={"history": [item_id(i % 300), item_id((i * 7) % 300), item_id(5)], "top_n": 20,
                                          "user_id": "u-7"})
            seen.append((r.status_code, r.json().get("model_version") or r.text))
            i += 1


def test_reload_under_load_then_sigterm_drains(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    first = build_bundle(root, seed=0)          # a version inside the root
    port = free_port()
    log_path = tmp_path / "server.log"
    server = start_server(root, port, log_path, {"MIND_ADMIN_TOKEN": TOKEN, "MIND_WARMUP_BATCHES": "1",
                                                 # a long batch window keeps requests in flight at SIGTERM
                                                 "MIND_BATCH_WAIT_MS": str(BATCH_WAIT_MS),
                                                 "MIND_REQUEST_TIMEOUT_MS": "20000",
                                                 # held requests must not be shed on predicted wait
                                                 "MIND_LATENCY_OBJECTIVE_MS": "0"})
    base = f"http://127.0.0.1:{port}"
    try:
        stop, seen = threading.Event(), []
        senders = [threading.Thread(target=keep_sending, args=(f"{base}/recall", stop, seen)) for _ in range(3)]
        for t in senders:
            t.start()
        time.sleep(1.5)
        second = build_bundle(root, seed=1)     # newer version in the root
        reload = httpx.post(f"{base}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        time.sleep(1.5)
        stop.set()
        for t in senders:
            t.join()
        assert reload.status_code == 200, reload.text
        old, new = load_bundle(first).model_version, load_bundle(second).model_version
        assert reload.json()["model_version"] == new and reload.json()["previous_model_version"] == old
        assert all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
        versions = [v for _, v in seen]
        assert old in versions and versions[-1] == new
        assert versions.index(new) > max(i for i, v in enumerate(versions) if v == old) - 3  # swap, no flapping

        # SIGTERM while requests are in flight: a batch of 2 makes the batcher wait its (long)
        # window for company from then on, so the 6 requests below are held there.
        pair = [{"history": [item_id(1), item_id(2)]}] * 2
        assert httpx.post(f"{base}/recall/batch", json=pair, timeout=30).status_code == 200
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(httpx.post, f"{base}/recall/batch", timeout=30,
                                   json=[{"history": [item_id(i), item_id(i + 1)], "top_n": 50}] * 4)
                       for i in range(6)]
            wait_for_in_progress(base, 6 + 1)       # + the scrape itself
            server.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert [a.status_code for a in answers] == [200] * 6
        assert all(len(a.json()) == 4 and len(a.json()[0]["items"]) == 50 for a in answers)
        assert server.wait(timeout=30) == 0
        log = log_path.read_text()
        assert '"msg": "drained and stopped"' in log and '"request_id"' in log and '"user_id": "u-7"' in log
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
