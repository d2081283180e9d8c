"""deploy/entrypoint.sh end to end, natively, as the container runs it: train a tiny model on
the embedded synthetic dataset -> export -> serve on a free port -> one POST /recall ->
SIGTERM -> exit 0; then a rerun reuses the bundle. Budget: well under 90 s on 2 cores."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO_ROOT / "deploy" / "entrypoint.sh"
# Smallest budget that still exercises every step; MIND_TRAIN_ARGS replaces the default one.
TINY_TRAIN_ARGS = "--epochs 1 --samples-per-user 1 --no-baselines --device cpu --embed-dim 16 --hidden-dim 32"
READY_TIMEOUT_S = 80.0
STOP_TIMEOUT_S = 20.0
TOP_N = 5


def load_build_default() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_default", REPO_ROOT / "deploy" / "build_default.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def entrypoint_env(tmp: Path, port: int) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "PYTHON": sys.executable, "RUN_DIR": str(tmp / "run"), "BUNDLE_DIR": str(tmp / "bundle"),
            "HOST": "127.0.0.1", "PORT": str(port), "MIND_DATA": "synthetic",
            "MIND_TRAIN_ARGS": TINY_TRAIN_ARGS}


def wait_ready(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"entrypoint exited {proc.returncode} before serving:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"not ready within {READY_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run `entrypoint.sh` (mode all) from nothing to a ready server, one request, SIGTERM."""
    tmp = tmp_path_factory.mktemp("entrypoint")
    port = free_port()
    env = entrypoint_env(tmp, port)
    log = tmp / "entrypoint.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp)
    try:
        wait_ready(proc, port, log)
        item_ids = json.loads((tmp / "bundle" / "item_ids.json").read_text())
        history = item_ids[:3]
        response = httpx.post(f"http://127.0.0.1:{port}/recall",
                              json={"history": history, "top_n": TOP_N}, timeout=30.0)
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"tmp": tmp, "env": env, "log": log.read_text(), "exit_code": exit_code,
            "response": response, "history": history, "item_ids": set(item_ids)}


@pytest.mark.slow
def test_entrypoint_serves_a_trained_bundle_and_stops_cleanly(served: dict) -> None:
    assert served["exit_code"] == 0, served["log"]
    response = served["response"]
    assert response.status_code == 200, response.text
    items = [hit["item_id"] for hit in response.json()["items"]]
    assert len(items) == TOP_N
    assert set(items) <= served["item_ids"]
    assert not set(items) & set(served["history"]), "history items are excluded by default"
    assert "curl -s -X POST http://localhost:" in served["log"], "the curl example was not printed"


@pytest.mark.slow
def test_second_run_reuses_the_bundle(served: dict) -> None:
    manifest = served["tmp"] / "bundle" / "manifest.json"
    before = manifest.read_bytes(), manifest.stat().st_mtime_ns
    done = subprocess.run(["sh", str(ENTRYPOINT), "train"], env=served["env"], cwd=served["tmp"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exists, reusing it" in done.stdout
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns) == before


def test_serve_without_bundle_fails_with_a_message(tmp_path: Path) -> None:
    done = subprocess.run(["sh", str(ENTRYPOINT), "serve"], env=entrypoint_env(tmp_path, free_port()),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"no bundle at {tmp_path / 'bundle'}" in done.stderr


def test_unknown_mode_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(["sh", str(ENTRYPOINT), "bogus"], env=entrypoint_env(tmp_path, free_port()),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "usage: entrypoint.sh" in done.stderr


def test_default_data_prefers_explicit_then_local_ml100k_then_synthetic(tmp_path: Path) -> None:
    build_default = load_build_default()
    local = tmp_path / "ml-100k.inter"
    assert build_default.resolve_data({"MIND_DATA": "/logs/x.csv"}, local) == "/logs/x.csv"
    assert build_default.resolve_data({}, local) == "synthetic"
    local.write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    assert build_default.resolve_data({"MIND_DATA": " "}, local) == str(local)


def test_blank_train_args_mean_the_default_budget() -> None:
    build_default = load_build_default()
    assert build_default.train_args({}) == build_default.DEFAULT_TRAIN_ARGS
    assert build_default.train_args({"MIND_TRAIN_ARGS": ""}) == build_default.DEFAULT_TRAIN_ARGS
    assert build_default.train_args({"MIND_TRAIN_ARGS": "--epochs 1"}) == "--epochs 1"
