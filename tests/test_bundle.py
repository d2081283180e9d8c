"""Bundle format (model/bundle.py): atomic write, verified load, refusal of broken bundles.

The tower here is a small module that honours the tower contract of docs/architecture.md;
`write_bundle` must accept any such module. The real MIND tower is exercised in test_export.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import model.bundle as bundle_module
from model.bundle import (FORMAT_VERSION, BundleError, latest_bundle, load_bundle,
                          prepare_histories, write_bundle)

N_ITEMS, DIM, K, MAX_LEN = 600, 8, 3, 10


class ContractTower(torch.nn.Module):
    """Mean-pooled history plus profile embedding, repeated over K'_u active capsules."""

    def __init__(self, n_items: int, dim: int, n_interests: int, n_profile_values: int):
        super().__init__()
        self.items = torch.nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.profile = torch.nn.Embedding(n_profile_values, dim)
        self.n_interests = n_interests

    def forward(self, history: torch.Tensor, profile: torch.Tensor):
        mask = (history > 0).float()                                     # (B, L)
        n_real = mask.sum(1)                                             # (B,)
        pooled = (self.items(history) * mask[..., None]).sum(1) / n_real.clamp(min=1)[:, None]
        pooled = pooled + self.profile(profile).sum(1)                   # (B, d)
        k_u = torch.floor(torch.log2(n_real.clamp(min=1))).clamp(1, self.n_interests)
        active = torch.arange(self.n_interests)[None, :] < k_u[:, None]  # (B, K)
        capsules = pooled[:, None, :] * active[..., None].float()        # (B, K, d)
        weights = mask[:, None, :].expand(-1, self.n_interests, -1)      # (B, K, L)
        return capsules, active, weights


def make_bundle(out_dir, **overrides):
    torch.manual_seed(0)
    tower = ContractTower(N_ITEMS, DIM, K, 4)
    kwargs = dict(
        tower=tower, item_vectors=tower.items.weight.detach().numpy()[1:],
        item_ids=[f"item-{r}" for r in range(N_ITEMS)],
        profile_vocab={"gender": ["<pad>", "F", "M"], "age": ["<pad>", "18-24", "25-34", "35+"]},
        popular_rows=[5, 3, 1], hyperparameters={"max_len": MAX_LEN, "dim": DIM},
        metrics={"test": {"recall@50": 0.3}}, data={"source": "synthetic", "seed": 1})
    kwargs.update(overrides)
    return write_bundle(out_dir, **kwargs)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundles") / "b")


def test_prepare_histories_left_pads_and_keeps_most_recent():
    out = prepare_histories([[7], list(range(1, 15)), [], [3, 4]], max_len=5)
    assert out.dtype == np.int64 and out.shape == (4, 5)
    np.testing.assert_array_equal(out, [[0, 0, 0, 0, 7], [10, 11, 12, 13, 14],
                                        [0, 0, 0, 0, 0], [0, 0, 0, 3, 4]])


def test_round_trip_restores_everything(written):
    b = load_bundle(written)
    m = b.manifest
    assert m["format_version"] == FORMAT_VERSION and b.model_version == m["model_version"]
    assert (b.dim, b.n_interests, b.max_len, m["n_items"]) == (DIM, K, MAX_LEN, N_ITEMS)
    assert m["metrics"] == {"test": {"recall@50": 0.3}} and m["data"]["source"] == "synthetic"
    assert m["hyperparameters"]["max_len"] == MAX_LEN and m["index"]["type"] == "flat"
    assert b.profile_features == ("gender", "age")
    assert b.profile_vocab == {"gender": {"F": 1, "M": 2}, "age": {"18-24": 1, "25-34": 2, "35+": 3}}
    assert b.item_ids[7] == "item-7" and b.row_of["item-7"] == 7
    assert list(b.popular_rows[:4]) == [5, 3, 1, 0] and sorted(b.popular_rows) == list(range(N_ITEMS))
    assert b.item_vectors.shape == (N_ITEMS, DIM) and b.index.ntotal == N_ITEMS
    assert not b.item_vectors.flags.writeable                 # a read-only map, not a copy
    assert set(m["files"]) == {p.name for p in written.iterdir()} - {"manifest.json"}


def test_loaded_tower_matches_written_and_is_deterministic(written):
    b = load_bundle(written)
    history = torch.from_numpy(prepare_histories([[1, 2, 3, 4, 5], [9]], MAX_LEN))
    profile = torch.tensor([[1, 3], [0, 0]])
    first = b.tower(history, profile)
    again = b.tower(history, profile)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[1].tolist() == [[True, True, False], [True, False, False]]
    scores, rows = b.index.search(first[0][0, :1].numpy(), 5)
    np.testing.assert_array_equal(rows[0], np.argsort(-(b.item_vectors @ first[0][0, 0].numpy()))[:5])


def test_approximate_index_params_are_stored_and_reapplied(tmp_path):
    path = make_bundle(tmp_path / "h", index_type="hnsw")
    b = load_bundle(path)
    entry = b.manifest["index"]
    assert entry["type"] == "hnsw" and entry["tuned_recall_at_k"] >= 0.95
    assert b.index.hnsw.efSearch == entry["params"]["efSearch"]


def rewrite_manifest(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_tampered_file_is_refused_naming_it(tmp_path):
    path = make_bundle(tmp_path / "b")
    data = bytearray((path / "item_ids.json").read_bytes())
    data[5] = ord("X") if data[5] != ord("X") else ord("Y")           # same size, new content
    (path / "item_ids.json").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"item_ids\.json: sha256 mismatch"):
        load_bundle(path)


def test_tampered_tower_is_refused_before_it_is_loaded(tmp_path, monkeypatch):
    path = make_bundle(tmp_path / "b")
    data = bytearray((path / "user_tower.pt").read_bytes())
    data[-10] ^= 0xFF
    (path / "user_tower.pt").write_bytes(bytes(data))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("tower loaded before checksum"))
    with pytest.raises(BundleError, match=r"user_tower\.pt: sha256 mismatch"):
        load_bundle(path)


def test_truncated_file_is_refused_naming_it(tmp_path):
    path = make_bundle(tmp_path / "b")
    data = (path / "index.faiss").read_bytes()
    (path / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"index\.faiss: truncated"):
        load_bundle(path)


def test_missing_file_and_bad_manifest_are_refused_naming_them(tmp_path):
    path = make_bundle(tmp_path / "b")
    (path / "popularity.json").unlink()
    with pytest.raises(BundleError, match=r"popularity\.json: missing"):
        load_bundle(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        load_bundle(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="holds no bundle"):
        load_bundle(tmp_path / "empty")


def test_unsupported_format_version_and_malformed_manifest_are_refused(tmp_path):
    path = make_bundle(tmp_path / "b")
    rewrite_manifest(path, dim="8")
    with pytest.raises(BundleError, match=r"manifest\.json: malformed entries \['dim'\]"):
        load_bundle(path)
    rewrite_manifest(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(BundleError, match=r"manifest\.json: unsupported format_version"):
        load_bundle(path)


def test_mismatched_dimensions_are_refused_naming_the_file(tmp_path):
    """Consistent checksums but item vectors of another width: caught by the dim checks."""
    path = make_bundle(tmp_path / "b")
    np.save(path / "item_vectors.npy", np.zeros((N_ITEMS, DIM + 1), np.float32), allow_pickle=False)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["item_vectors.npy"] = hashlib.sha256((path / "item_vectors.npy").read_bytes()).hexdigest()
    manifest["file_bytes"]["item_vectors.npy"] = (path / "item_vectors.npy").stat().st_size
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"item_vectors\.npy: shape .* != manifest"):
        load_bundle(path)
    rewrite_manifest(path, dim=DIM + 1)                         # now the tower disagrees
    with pytest.raises(BundleError, match=r"index\.faiss: d=8"):
        load_bundle(path)


def test_writer_refuses_inconsistent_inputs(tmp_path):
    with pytest.raises(ValueError, match="tower output d=8"):
        make_bundle(tmp_path / "b", item_vectors=np.zeros((N_ITEMS, DIM * 2), np.float32))
    with pytest.raises(ValueError, match="unique item_ids"):
        make_bundle(tmp_path / "b", item_ids=["same"] * N_ITEMS)
    with pytest.raises(ValueError, match="expected float32 and bool"):
        make_bundle(tmp_path / "b", tower=ContractTower(N_ITEMS, DIM, K, 4).double())
    assert not (tmp_path / "b").exists()


def test_crash_mid_write_leaves_no_bundle_and_keeps_the_old_one(tmp_path, monkeypatch):
    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module.faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        make_bundle(tmp_path / "b")
    assert list(tmp_path.iterdir()) == []                       # no target, no temp dir left
    monkeypatch.undo()
    path = make_bundle(tmp_path / "b")
    before = load_bundle(path).model_version
    monkeypatch.setattr(bundle_module.faiss, "write_index", crash)
    with pytest.raises(OSError):
        make_bundle(path, force=True, metrics={"other": 1})
    assert load_bundle(path).model_version == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_existing_bundle_needs_force_and_a_root_gets_versions(tmp_path):
    path = make_bundle(tmp_path / "b")
    with pytest.raises(FileExistsError, match="force"):
        make_bundle(path)
    replaced = make_bundle(path, force=True, metrics={"v": 2})
    assert replaced == path and load_bundle(path).manifest["metrics"] == {"v": 2}
    root = tmp_path / "root"
    root.mkdir()
    first = make_bundle(root, metrics={"v": 1})
    second = make_bundle(root, popular_rows=[9])                # different content, newer
    assert first.parent == root == second.parent and first.name < second.name
    assert latest_bundle(root) == second and load_bundle(root).path == second
    assert second.name.endswith(load_bundle(root).model_version[:12])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_with_the_reason(written):
    with pytest.raises(BundleError, match=r"user_tower\.pt: device cuda requested but CUDA is not available"):
        load_bundle(written, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_tower_runs_on_cuda_like_on_cpu(written):
    cpu, gpu = load_bundle(written), load_bundle(written, device="cuda")
    history = torch.from_numpy(prepare_histories([[1, 2, 3, 4, 5], [9]], MAX_LEN))
    profile = torch.tensor([[1, 3], [0, 0]])
    on_gpu = gpu.tower(history.cuda(), profile.cuda())
    assert on_gpu[0].device.type == "cuda" and gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu[0].cpu(), cpu.tower(history, profile)[0], atol=1e-5, rtol=1e-5)
