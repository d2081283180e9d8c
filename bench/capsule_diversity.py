"""Do the capsules really differ? Test Recall and the mean pairwise cosine of each test user's
active capsules on ml-100k, for one model configuration given as JSON overrides.

    python bench/capsule_diversity.py '{"pow_p": 0.0, "routing_init_std": 0.01}'

A mean cosine near 1 means the K capsules collapsed onto one vector (the model then retrieves
like K=1); the paper's intent is distinct interests.
"""
import sys, time, torch, numpy as np, json
torch.set_num_threads(1)
from model.data import load_interactions, build_dataset
from model.config import ModelConfig, TrainConfig
from model.tower import MIND
from model.fit import fit, Progress, held_out_set, retrieval_metrics, user_interests
kw = json.loads(sys.argv[1]); tk = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
from pathlib import Path
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k" / "ml-100k.inter"
ds = build_dataset(load_interactions(DATA))
cfg = ModelConfig(n_items=ds.n_items, profile_vocab_sizes=tuple(len(ds.user_profile_vocabs[f]) for f in ds.profile_features),
                  item_side_vocab_sizes={k: len(v) for k, v in ds.item_side_vocabs.items()}, init_seed=2020, **kw)
side = {k: torch.as_tensor(v) for k, v in ds.item_side.items()}
torch.manual_seed(2020)
m = MIND(cfg, side); t0=time.time()
r = fit(m, ds, TrainConfig(**tk), torch.device("cpu"), Progress(False))
cases = held_out_set(ds, ds.test_users, cfg.max_len)
test = retrieval_metrics(m, cases, torch.device("cpu"))
caps, act = user_interests(m, cases.histories, cases.profiles, torch.device("cpu"))
cos=[]
for c,a in zip(caps,act):
    v=c[a]; v=v/np.linalg.norm(v,axis=1,keepdims=True); k=len(v)
    if k>1: cos.append(((v@v.T).sum()-k)/(k*k-k))
print(json.dumps(kw), "ep", r.best_epoch, "val", round(r.best_validation["recall@50"],4), "test R@20", round(test["recall@20"],4), "R@50", round(test["recall@50"],4), "cos", round(float(np.mean(cos)),3), f"{time.time()-t0:.0f}s", flush=True)
