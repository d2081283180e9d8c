"""`mind evaluate --bundle` scores exactly the lists `POST /recall` serves.

A real (untrained, seeded) MIND run is exported with `mind export`'s own code; its held-out
test users are ranked by the evaluation (`rank_all` over `bundle_source`, what `mind evaluate
--bundle` runs) and asked of the service (the real app, lifespan included, over httpx's ASGI transport) with the same
histories and profiles. Both must give the same ids in the same order, and `mind evaluate`'s
printed metrics must be the metrics of the service's lists.
"""
from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from model.protocol import CURVE_MAX_N, rank_all, score_all
from tests.service_support import served, write_untrained_run

SETTINGS = {"history_included": False, "history_excluded": True}   # protocol setting -> exclude_history


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(bundle dir, dataset) of an exported untrained MIND run on a small planted dataset."""
    from model.data import data_config, rebuild_dataset
    from model.data import SyntheticSpec, generate, write_recbole
    from model.export import export_run

    tmp = tmp_path_factory.mktemp("equality")
    spec = SyntheticSpec(n_users=240, n_items=150, n_clusters=6, min_events=8, max_events=25)
    cfg = data_config(write_recbole(generate(spec), tmp / "data", "tiny"), k_core=3, seed=11)
    ds = rebuild_dataset(cfg)
    write_untrained_run(tmp / "run", ds, cfg, n_interests=3, routing_init_std=1.0)
    return export_run(tmp / "run", tmp / "bundle"), ds


def served_lists(bundle_dir, ds, held, exclude_history: bool) -> tuple[np.ndarray, int]:
    """((U, CURVE_MAX_N) dataset rows answered by POST /recall for the held-out users,
    how many answers mix several interests)."""
    from service.app import create_app
    from service.settings import Settings

    bodies = [{"history": [ds.items.tokens[i] for i in history[history > 0]], "top_n": CURVE_MAX_N,
               "exclude_history": exclude_history,
               "profile": {f: str(v[u]) for f, v in held.profile_values.items() if v[u] != ""}}
              for u, history in enumerate(held.histories)]

    async def ask():
        app = create_app(Settings(bundle=bundle_dir, device="cpu", warmup_batches=1))
        async with served(app) as client:
            return await asyncio.gather(*(client.post("/recall", json=b) for b in bodies))

    out = np.full((len(bodies), CURVE_MAX_N), -1, dtype=np.int64)
    row_of = {item: row for row, item in enumerate(ds.items.tokens[1:])}
    mixed = 0
    for u, response in enumerate(asyncio.run(ask())):
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        out[u, :len(items)] = [row_of[i["item_id"]] for i in items]
        mixed += len({i["interest"] for i in items}) > 1
    return out, mixed


def test_evaluation_scores_exactly_the_served_lists(exported, tmp_path, capsys):
    from mind_recall.cli import main
    from model.eval_sources import bundle_source

    bundle_dir, ds = exported
    source = bundle_source(bundle_dir, "test", None, "cpu")
    held = source.held
    assert len(held.histories) >= 20 and len(source.retrievers["MIND"].profile_features) >= 1
    evaluated = rank_all(held, source.retrievers)
    served = {}
    for setting, exclude_history in SETTINGS.items():
        rows, mixed = served_lists(bundle_dir, ds, held, exclude_history)
        served[setting] = {"MIND": rows}
        np.testing.assert_array_equal(evaluated[setting]["MIND"], rows, err_msg=setting)
        assert mixed >= len(rows) // 4, "the merge across interests must be exercised"
        assert (rows >= 0).all()

    assert main(["evaluate", "--bundle", str(bundle_dir), "--out", str(tmp_path / "eval")]) == 0
    printed = json.loads(capsys.readouterr().out)["metrics"]
    served_metrics, _ = score_all(served, held.target_rows)
    for setting in SETTINGS:
        assert printed[setting]["MIND"] == served_metrics[setting]["MIND"]
