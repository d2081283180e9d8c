"""The torch.export program in the bundle (user_tower.pt2, model/tower_format.py): checksummed,
equivalent to the TorchScript tower, servable with MIND_TOWER_FORMAT=export, optional."""
from __future__ import annotations

import asyncio
import json
import warnings

import numpy as np
import pytest
import torch

from mind_recall import cli
from model.bundle import BundleError, load_bundle, prepare_histories
from model.bundle_files import MANIFEST, TOWER_PROGRAM, sha256_of
from service.app import create_app
from service.pipeline import RecallQuery, RetrievalOptions, recall_batch
from service.settings import Settings
from tests.service_support import build_bundle, served
from tests.test_export import MAX_LEN, N_ITEMS, write_tiny_run

N_TEST_USERS = 512
PROFILE_VALUES = 3        # the tiny run's "age" vocabulary (<pad>, young, old)
CAPSULE_ATOL = 1e-5       # float32 rounding of two compilations of the same graph
SOMEONE_ELSES = "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`."


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    """A tiny run exported by `mind export` (TorchScript + export program)."""
    tmp = tmp_path_factory.mktemp("tower-export")
    write_tiny_run(tmp / "run", seed=5)
    assert cli.main(["export", "--run", str(tmp / "run"), "--out", str(tmp / "bundle")]) == 0
    return tmp / "bundle"


@pytest.fixture(scope="module")
def test_set():
    """(history (U, L), profile (U, 1)) of users with histories of 1 .. 3 * max_len items drawn
    towards popular items, and profile values including out-of-range ones (unknown)."""
    rng = np.random.default_rng(11)
    weights = 1.0 / (np.arange(N_ITEMS) + 10.0)
    lengths = rng.integers(1, 3 * MAX_LEN + 1, N_TEST_USERS)
    histories = [rng.choice(N_ITEMS, n, p=weights / weights.sum()) + 1 for n in lengths]
    profile = rng.integers(-1, PROFILE_VALUES + 2, (N_TEST_USERS, 1))
    return torch.from_numpy(prepare_histories(histories, MAX_LEN)), torch.from_numpy(profile)


def test_bundle_carries_a_checksummed_export_program(bundle_path):
    manifest = json.loads((bundle_path / MANIFEST).read_text())
    assert manifest["files"][TOWER_PROGRAM] == sha256_of(bundle_path / TOWER_PROGRAM)
    assert manifest["file_bytes"][TOWER_PROGRAM] == (bundle_path / TOWER_PROGRAM).stat().st_size
    bundle = load_bundle(bundle_path, tower_format="export")
    assert bundle.tower_format == "export" and not isinstance(bundle.tower, torch.jit.ScriptModule)
    assert load_bundle(bundle_path).tower_format == "torchscript"


@pytest.mark.parametrize("batch", [1, 7, N_TEST_USERS])
def test_export_program_matches_torchscript_on_a_test_set(bundle_path, test_set, batch):
    """Same active masks, capsules and routing weights within float32 rounding, on batch
    sizes other than the one the program was exported with (dynamic batch dimension)."""
    scripted = load_bundle(bundle_path).tower
    exported = load_bundle(bundle_path, tower_format="export").tower
    history, profile = test_set
    with torch.inference_mode():
        for start in range(0, N_TEST_USERS, batch):
            rows = slice(start, start + batch)
            s_caps, s_active, s_weights = scripted(history[rows], profile[rows])
            e_caps, e_active, e_weights = exported(history[rows], profile[rows])
            assert torch.equal(s_active, e_active)
            torch.testing.assert_close(e_caps, s_caps, atol=CAPSULE_ATOL, rtol=0)
            torch.testing.assert_close(e_weights, s_weights, atol=CAPSULE_ATOL, rtol=0)
            assert e_caps.dtype == torch.float32 and e_active.dtype == torch.bool


def test_export_program_retrieves_the_same_ids(bundle_path, test_set):
    """The whole pipeline (tower -> FAISS -> merge) on both towers: identical answers."""
    scripted, exported = load_bundle(bundle_path), load_bundle(bundle_path, tower_format="export")
    history = test_set[0].numpy()
    queries = [RecallQuery(history=tuple(scripted.item_ids[r - 1] for r in row[row > 0]), top_n=20)
               for row in history[:128]]
    options = RetrievalOptions()
    expected, _ = recall_batch(scripted, queries, options)
    got, _ = recall_batch(exported, queries, options)
    assert [[i["item_id"] for i in a["items"]] for a in got] == [[i["item_id"] for i in a["items"]] for a in expected]
    assert [a["interests"] for a in got] == [a["interests"] for a in expected]


def test_service_serves_from_the_export_program(bundle_path):
    async def run(tower_format: str):
        app = create_app(Settings(bundle=bundle_path, device="cpu", warmup_batches=1, tower_format=tower_format))
        async with served(app) as client:
            answer = await client.post("/recall", json={"history": ["movie-3", "movie-8", "movie-1"], "top_n": 10})
            metrics = await client.get("/metrics")
        return answer.json(), metrics.text

    (scripted, _), (exported, metrics) = asyncio.run(run("torchscript")), asyncio.run(run("export"))
    assert 'tower_format="export"' in metrics
    assert [i["item_id"] for i in exported["items"]] == [i["item_id"] for i in scripted["items"]]
    assert len(exported["items"]) == 10


def test_bundle_without_export_program_still_loads(tmp_path):
    """Bundles written before the program existed (or without one) serve TorchScript."""
    path = build_bundle(tmp_path / "b")           # write_bundle without tower_program
    assert TOWER_PROGRAM not in json.loads((path / MANIFEST).read_text())["files"]
    assert load_bundle(path, tower_format="export").tower_format == "torchscript"


def test_tampered_export_program_is_refused(bundle_path, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(bundle_path, copy)
    data = bytearray((copy / TOWER_PROGRAM).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / TOWER_PROGRAM).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{TOWER_PROGRAM}: sha256 mismatch"):
        load_bundle(copy)
    (copy / TOWER_PROGRAM).unlink()
    with pytest.raises(BundleError, match=f"{TOWER_PROGRAM}: missing"):
        load_bundle(copy, tower_format="export")


def test_torchscript_deprecation_is_silenced_only_at_its_call_sites(bundle_path, tmp_path):
    """Loading and exporting emit no torch.jit deprecation warning, and leave the process's
    warning filters as they were (no global ignore)."""
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_bundle(bundle_path)
        write_tiny_run(tmp_path / "run", seed=6)
        assert cli.main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "b")]) == 0
        warnings.warn(SOMEONE_ELSES, DeprecationWarning)   # same text, other call site
    messages = [str(w.message) for w in caught]
    assert [m for m in messages if "deprecated" in m] == [SOMEONE_ELSES]
    assert list(warnings.filters) == before
