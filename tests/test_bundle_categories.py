"""Item categories in the bundle (item_categories.npy): written by `mind export` from an item
side feature, verified on load, and used by the `diversity` merge of POST /recall."""
from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

from mind_recall import cli
from model.bundle import BundleError, load_bundle
from model.bundle_files import ITEM_CATEGORIES, MANIFEST, sha256_of
from model.export import category_feature
from tests.service_support import build_bundle, served, write_untrained_run

TOKEN = "categories-token"
N_CLUSTERS = 24           # the planted set's genre of an item is its cluster // 2: 12 genres
TOP_N = 20


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(tmp dir, run dir, dataset, item features) of an untrained MIND on a planted set whose
    items carry a `genre` side feature."""
    from model.data import SyntheticSpec, data_config, generate, rebuild_dataset, write_recbole

    tmp = tmp_path_factory.mktemp("categories")
    interactions = generate(SyntheticSpec(n_users=240, n_items=300, n_clusters=N_CLUSTERS, min_events=8,
                                          max_events=25, seed=3))
    cfg = data_config(write_recbole(interactions, tmp / "data", "tiny"), k_core=3, seed=11)
    ds = rebuild_dataset(cfg)
    write_untrained_run(tmp / "run", ds, cfg, n_interests=3, routing_init_std=1.0)
    return tmp, tmp / "run", ds, interactions.item_features


def export(run, out, *flags) -> int:
    return cli.main(["export", "--run", str(run), "--out", str(out), *flags])


@pytest.fixture(scope="module")
def bundles(planted):
    """Bundle roots: 'with' (categories, default flags) and 'without' (--category-feature none)
    of the same run; each root holds one version."""
    tmp, run, _, _ = planted
    roots = {name: tmp / "bundles" / name for name in ("with", "without")}
    for root in roots.values():
        root.mkdir(parents=True)
    assert export(run, roots["with"]) == 0
    assert export(run, roots["without"], "--category-feature", "none") == 0
    return roots


def test_export_writes_each_items_first_genre(planted, bundles):
    _, run, ds, features = planted
    bundle = load_bundle(bundles["with"])
    manifest = json.loads((bundle.path / MANIFEST).read_text())
    assert manifest["files"][ITEM_CATEGORIES] == sha256_of(bundle.path / ITEM_CATEGORIES)
    vocab = json.loads((run / "vocab.json").read_text())
    assert manifest["item_categories"]["feature"] == "genre" == bundle.categories.feature
    assert list(bundle.categories.names) == vocab["item_side"]["genre"][1:] == manifest["item_categories"]["names"]
    of_row = bundle.categories.of_row
    assert of_row.shape == (len(bundle.item_ids),) and of_row.dtype == np.int64
    first_genre = [features[item]["genre"][0] for item in bundle.item_ids]      # from the generator itself
    assert [bundle.categories.names[c] for c in of_row] == first_genre
    assert manifest["item_categories"]["items_with_category"] == len(of_row)
    assert len(set(of_row.tolist())) == N_CLUSTERS // 2


def test_category_feature_none_and_unknown(planted, bundles, capsys, tmp_path):
    bundle = load_bundle(bundles["without"])
    assert bundle.categories is None and "item_categories" not in bundle.manifest
    assert not (bundle.path / ITEM_CATEGORIES).exists()
    assert export(planted[1], tmp_path / "b", "--category-feature", "mood") == 2
    err = capsys.readouterr().err
    assert "vocab.json" in err and "'mood'" in err and "genre" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("features, requested, chosen", [
    ({"Genre": [], "class": []}, "auto", "class"),         # preference order, any case
    ({"title": [], "GENRE": []}, "auto", "GENRE"),
    ({"title": [], "year": []}, "auto", None),              # nothing named like a category
    ({}, "auto", None),                                     # no item side data (Amazon Toys)
    ({"title": [], "class": []}, "title", "title"),
    ({"class": []}, "none", None),
])
def test_category_feature_choice(tmp_path, features, requested, chosen):
    assert category_feature(tmp_path, {"item_side": features}, requested) == chosen


def test_bundle_written_without_categories_loads_unchanged(tmp_path):
    path = build_bundle(tmp_path / "old", seed=0)           # write_bundle without item_categories
    manifest = json.loads((path / MANIFEST).read_text())
    assert ITEM_CATEGORIES not in manifest["files"] and "item_categories" not in manifest
    assert load_bundle(path).categories is None


# --- damaged category files: refused on load, naming the file --------------------------------

def rewrite(path, array=None, raw: bytes | None = None, **manifest_changes) -> None:
    """Replace item_categories.npy (an array, or raw bytes) and, unless told otherwise, record
    its new sha256 and size so that only the content checks can refuse it."""
    file = path / ITEM_CATEGORIES
    if array is not None:
        np.save(file, array, allow_pickle=True)
    if raw is not None:
        file.write_bytes(raw)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][ITEM_CATEGORIES] = sha256_of(file)
    manifest["file_bytes"][ITEM_CATEGORIES] = file.stat().st_size
    for key, value in manifest_changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    (path / MANIFEST).write_text(json.dumps(manifest))


DAMAGE = {
    "sha256 mismatch": lambda p, n: (p / ITEM_CATEGORIES).write_bytes(
        (p / ITEM_CATEGORIES).read_bytes()[:-8] + b"\x07" * 8),
    "truncated": lambda p, n: (p / ITEM_CATEGORIES).write_bytes((p / ITEM_CATEGORIES).read_bytes()[:-16]),
    "missing": lambda p, n: (p / ITEM_CATEGORIES).unlink(),
    "wrong length": lambda p, n: rewrite(p, np.zeros(n - 1, dtype=np.int64)),
    "floats": lambda p, n: rewrite(p, np.zeros(n, dtype=np.float32)),
    "two-dimensional": lambda p, n: rewrite(p, np.zeros((n, 1), dtype=np.int64)),
    "beyond the names": lambda p, n: rewrite(p, np.full(n, 12, dtype=np.int64)),
    "below -1": lambda p, n: rewrite(p, np.full(n, -2, dtype=np.int64)),
    "pickled objects": lambda p, n: rewrite(p, np.array([None] * n, dtype=object)),
    "not an npy file": lambda p, n: rewrite(p, raw=b"not numpy at all"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_category_file_is_refused_naming_it(bundles, tmp_path, damage):
    path = shutil.copytree(load_bundle(bundles["with"]).path, tmp_path / "bundle")
    DAMAGE[damage](path, json.loads((path / MANIFEST).read_text())["n_items"])
    with pytest.raises(BundleError, match=ITEM_CATEGORIES.replace(".", r"\.")):
        load_bundle(path)


@pytest.mark.parametrize("entry", [None, {"feature": "genre"}, {"feature": 3, "names": []}, ["genre"]])
def test_manifest_entry_missing_or_malformed_is_refused(bundles, tmp_path, entry):
    path = shutil.copytree(load_bundle(bundles["with"]).path, tmp_path / "bundle")
    manifest = json.loads((path / MANIFEST).read_text())
    rewrite(path, item_categories=entry)                  # None: the entry removed
    assert manifest["item_categories"]["feature"] == "genre"
    with pytest.raises(BundleError, match=MANIFEST.replace(".", r"\.") + ".*item_categories"):
        load_bundle(path)


# --- served: POST /recall, GET /readyz, POST /admin/reload --------------------------------------

def with_app(root, scenario):
    """``await scenario(client)`` against the started app serving ``root``."""
    from service.app import create_app
    from service.settings import Settings

    async def run():
        # no shedding, no deadline: these tests are about answers, on a machine of any speed
        app = create_app(Settings(bundle=root, device="cpu", warmup_batches=1, admin_token=TOKEN,
                                  log_requests=False, latency_objective_ms=0, request_timeout_ms=600_000))
        async with served(app) as client:
            return await scenario(client)
    return asyncio.run(run())


def held_histories(ds, n=12) -> list[list[str]]:
    """Histories (external ids) of the first ``n`` test users."""
    return [[ds.items.tokens[i] for i in ds.sequences[int(u)]] for u in ds.test_users[:n]]


def ask_all(root, histories, lambdas):
    """{lambda: [answer per history]} plus /readyz, each request sent twice (the second copy
    in a batch with the others, the first alone)."""
    async def scenario(client):
        ready = (await client.get("/readyz")).json()
        answers = {}
        for lam in lambdas:
            bodies = [{"history": h, "top_n": TOP_N, "diversity": lam} for h in histories]
            alone = [(await client.post("/recall", json=b)) for b in bodies]
            assert all(a.status_code == 200 for a in alone), [a.text for a in alone]
            alone = [a.json() for a in alone]
            together = await asyncio.gather(*(client.post("/recall", json=b) for b in bodies))
            assert all(t.status_code == 200 for t in together), [t.text for t in together]
            assert [a["items"] for a in alone] == [t.json()["items"] for t in together]
            answers[lam] = alone
        return ready, answers
    return with_app(root, scenario)


def mean_distinct(answers, key) -> float:
    return float(np.mean([len({key(i) for i in a["items"]}) for a in answers]))


def largest_interest(answers) -> float:
    """Mean number of items of an answer that come from its most frequent interest."""
    return float(np.mean([np.bincount([i["interest"] for i in a["items"]]).max() for a in answers]))


def test_served_diversity_spreads_over_item_categories(planted, bundles):
    ds = planted[2]
    histories = held_histories(ds)
    categories = load_bundle(bundles["with"]).categories
    row_of = {item: r for r, item in enumerate(load_bundle(bundles["with"]).item_ids)}
    category = lambda item: int(categories.of_row[row_of[item["item_id"]]])   # noqa: E731
    ready, answers = ask_all(bundles["with"], histories, (0.0, 0.5, 2.0))
    ready_plain, plain = ask_all(bundles["without"], histories, (0.0, 2.0))
    assert ready["item_categories"] == "genre" and ready_plain["item_categories"] is None
    assert all(len(a["items"]) == TOP_N for lam in answers for a in answers[lam])
    spread = [mean_distinct(answers[lam], category) for lam in (0.0, 0.5, 2.0)]
    assert spread[0] < min(spread[1:]), spread
    # the same lambda without categories spreads over interests only: fewer categories
    assert mean_distinct(plain[2.0], category) < spread[2]
    assert [a["items"] for a in plain[0.0]] == [a["items"] for a in answers[0.0]]   # lambda 0: by score
    # without categories, diversity still spreads over interests: the largest interest's share drops
    assert largest_interest(plain[2.0]) < largest_interest(plain[0.0])


def test_reload_of_a_bundle_with_a_bad_category_file_keeps_the_old_one(bundles, tmp_path):
    root = tmp_path / "root"
    served = shutil.copytree(load_bundle(bundles["with"]).path, root / "good")
    bad = shutil.copytree(served, root / "bad")
    rewrite(bad, np.zeros(3, dtype=np.int64))               # wrong length, checksum recorded
    query = {"history": load_bundle(served).item_ids[:6], "top_n": TOP_N, "diversity": 1.0}

    async def scenario(client):
        before = (await client.post("/recall", json=query)).json()
        refused = await client.post("/admin/reload", json={"path": "bad"},
                                    headers={"Authorization": f"Bearer {TOKEN}"})
        after = (await client.post("/recall", json=query)).json()
        return before, refused, after, (await client.get("/readyz")).json()

    before, refused, after, ready = with_app(served, scenario)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert "still serving" in error and str(bad / ITEM_CATEGORIES) in error
    assert after["model_version"] == before["model_version"] and after["items"] == before["items"]
    assert ready["item_categories"] == "genre"


def test_bench_served_curve_counts_categories_through_the_bundle(bundles, capsys):
    """bench.diversity_curve --bundle: the served lists' category coverage rises with lambda,
    and withholding the categories from the merge gives less of it at the same lambda."""
    from bench import diversity_curve

    assert diversity_curve.main(["--bundle", str(bundles["with"]), "--lambdas", "0,2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 0 |") or line.startswith("| 2 |")]
    served, withheld = rows[:2], rows[2:]
    assert "categories: 'genre' (12 values" in out and len(withheld) == 2
    categories = lambda row: float(row[4])                                      # noqa: E731
    assert categories(served[0]) < categories(served[1])
    assert categories(withheld[1]) < categories(served[1])
    assert served[0][:5] == withheld[0][:5]             # lambda 0: the same lists either way
