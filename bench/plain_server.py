"""The serving baseline: a plain one-request-at-a-time FastAPI server doing the same work.

No dynamic batching, no tuned thread counts, no pre-serialised answers: each request runs the
TorchScript tower on its own history, one FAISS search over its active capsules, a merge by
score, and returns a pydantic response. `python -m bench.load --server plain` measures it with
the same client and workload as `mind serve`, so the two numbers sit side by side.

    python -m bench.plain_server --bundle BUNDLE_DIR --port 8001
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from model.bundle import load_bundle


class Request(BaseModel):
    history: list[str]
    top_n: int = 50
    exclude_history: bool = True


class Item(BaseModel):
    item_id: str
    score: float


class Response(BaseModel):
    items: list[Item]


def build_app(bundle_path: str) -> FastAPI:
    bundle = load_bundle(bundle_path)
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict:
        return {"ready": True}

    @app.post("/recall", response_model=Response)
    def recall(request: Request) -> Response:
        rows = [bundle.row_of[i] for i in request.history if i in bundle.row_of][-bundle.max_len:]
        history = torch.zeros(1, bundle.max_len, dtype=torch.int64)
        if rows:
            history[0, -len(rows):] = torch.tensor(rows) + 1
        profile = torch.zeros(1, len(bundle.profile_features), dtype=torch.int64)
        with torch.no_grad():
            capsules, active, _ = bundle.tower(history, profile)
        queries = capsules[0][active[0]].numpy()
        scores, found = bundle.index.search(queries, request.top_n + len(rows))
        best: dict[int, float] = {}
        excluded = set(rows) if request.exclude_history else set()
        for score, row in zip(scores.ravel().tolist(), found.ravel().tolist()):
            if row >= 0 and row not in excluded and score > best.get(row, -np.inf):
                best[row] = score
        top = sorted(best.items(), key=lambda kv: -kv[1])[:request.top_n]
        return Response(items=[Item(item_id=bundle.item_ids[r], score=s) for r, s in top])

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(build_app(args.bundle), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
