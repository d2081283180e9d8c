"""What ``--data`` means: a path (a file, or a folder holding one interaction file) is used
as is; a dataset name is looked up locally first and fetched (MovieLens, from GroupLens) or
generated (``synthetic``) only when no copy exists (the lookup order: docs/data.md).

The synthetic dataset is a deterministic planted multi-interest log (the default data, and the
ground truth for multi-interest tests): items fall into `n_clusters` clusters; each user draws
from 2-3 of them, events interleaved in time, Zipf-like popularity inside a cluster. Items get
a ``genre`` (clusters map two-to-one onto genres, with noise and second genres); users an
``age`` bucket tied to their main cluster half the time.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from model.data.logs import DataFormatError, Interactions, make_interactions

REPO_ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = "synthetic"
# Bump when the generator changes, so cached copies of the default dataset are regenerated.
GENERATOR_VERSION = 1
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/"
DOWNLOAD_TIMEOUT_S = 60
FOLDER_ENTRIES = ("u.data", "ratings.dat", "ratings.csv")  # the interaction files a folder may hold
# dataset name -> its interaction file inside the extracted archive
MOVIELENS_FILES = {
    "ml-100k": "ml-100k/u.data",
    "ml-1m": "ml-1m/ratings.dat",
    "ml-latest-small": "ml-latest-small/ratings.csv",
    "ml-25m": "ml-25m/ratings.csv",
}


def cache_dir() -> Path:
    """Where fetched and generated datasets are kept."""
    if os.environ.get("MIND_DATA_DIR"):
        return Path(os.environ["MIND_DATA_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mind-recall"


def resolve_data_source(spec) -> Path:
    """A local interaction file (or folder) for `spec`: an existing path, or a dataset name
    (see the module docstring). Raises FileNotFoundError for anything else."""
    path = Path(spec)
    if path.exists():
        return path
    name = str(spec)
    if name != SYNTHETIC and name not in MOVIELENS_FILES:
        raise FileNotFoundError(f"{spec}: no such file or folder, and not a dataset name "
                                f"({', '.join([SYNTHETIC, *MOVIELENS_FILES])})")
    for candidate in _local_candidates(name):
        if candidate.is_file():
            return candidate
    if name == SYNTHETIC:
        return generate_synthetic(cache_dir())
    return fetch_movielens(name, cache_dir())


def interaction_file(path: Path) -> Path:
    """`path` itself, or the single interaction file inside a folder."""
    if not path.exists():
        raise FileNotFoundError(f"interaction log not found: {path}")
    if not path.is_dir():
        return path
    found = [path / n for n in FOLDER_ENTRIES if (path / n).is_file()] + sorted(path.glob("*.inter"))
    if len(found) != 1:
        raise DataFormatError(path, None, f"folder must hold exactly one interaction file ({', '.join(FOLDER_ENTRIES)} or *.inter); found {[p.name for p in found]}")
    return found[0]


def generate_synthetic(root: Path, spec: "SyntheticSpec | None" = None) -> Path:
    """The default synthetic dataset as ``root/synthetic-<hash>/synthetic.inter``, generated
    once (the hash covers the spec and the generator version)."""
    spec = spec or SyntheticSpec()
    digest = hashlib.sha256(repr((GENERATOR_VERSION, asdict(spec))).encode()).hexdigest()[:10]
    folder = root / f"{SYNTHETIC}-{digest}"
    inter = folder / f"{SYNTHETIC}.inter"
    if inter.is_file():
        return inter
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".synthetic-"))
    try:
        write_recbole(generate(spec), tmp, SYNTHETIC)
        if not folder.exists():
            tmp.rename(folder)  # atomic: concurrent runs never see a half-written folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return inter


def _local_candidates(name: str) -> list[Path]:
    """Existing copies of dataset `name` to try, in order."""
    data_dir = os.environ.get("MIND_DATA_DIR")
    found = [Path(data_dir) / name / f"{name}.inter"] if data_dir else []
    if data_dir and name in MOVIELENS_FILES:   # MOVIELENS_FILES[name] is <name>/<file>
        found.append(Path(data_dir) / MOVIELENS_FILES[name])
    if name == "ml-100k":
        shared = os.environ.get("MIND_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data"
        found.append(Path(shared) / "ml-100k" / "ml-100k.inter")
    if name in MOVIELENS_FILES:
        found.append(cache_dir() / MOVIELENS_FILES[name])
    return found


# ---- GroupLens downloads ----

class DownloadError(OSError):
    """A dataset could not be fetched; the message names the URL and the reason."""


def fetch_movielens(name: str = "ml-100k", dest=".", *, base_url: str = GROUPLENS_URL) -> Path:
    """Download and extract ``<base_url><name>.zip`` into `dest`; returns the interaction
    file (e.g. ``dest/ml-100k/u.data``). An already extracted copy is reused."""
    if name not in MOVIELENS_FILES:
        raise ValueError(f"unknown MovieLens dataset {name!r}; known: {sorted(MOVIELENS_FILES)}")
    dest = Path(dest)
    target = dest / MOVIELENS_FILES[name]
    if target.is_file():
        return target
    url = f"{base_url}{name}.zip"
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as err:
            raise DownloadError(f"could not download {url}: {getattr(err, 'reason', err)} "
                                f"(no network? download it by hand and pass the file path)") from None
        _extract(archive, Path(tmp) / "out", url)
        extracted = Path(tmp) / "out" / MOVIELENS_FILES[name]
        if not extracted.is_file():
            raise DownloadError(f"{url}: archive has no {MOVIELENS_FILES[name]}")
        top = Path(tmp) / "out" / MOVIELENS_FILES[name].split("/")[0]
        if not target.parent.exists():
            top.rename(target.parent)
    return target


def _extract(archive: Path, out: Path, url: str) -> None:
    """Extract a zip, refusing members that would land outside `out`."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (out / member).resolve().is_relative_to(out.resolve()):
                    raise DownloadError(f"{url}: archive member {member!r} escapes the target folder")
            zf.extractall(out)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{url}: not a zip archive ({err})") from None


# ---- the planted synthetic dataset ----

@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of `generate`; the defaults are the embedded default dataset."""

    n_users: int = 2000
    n_items: int = 1000
    n_clusters: int = 10
    min_events: int = 30  # per user, uniform in [min_events, max_events]
    max_events: int = 90
    interests: tuple[int, ...] = (2, 3)  # clusters per user, drawn uniformly from these
    popularity_exponent: float = 1.2  # item weight ∝ 1 / rank**exponent inside a cluster
    genre_noise: float = 0.15  # share of items whose genre is not their cluster's
    second_genre: float = 0.3  # share of items with an extra random genre
    n_age_buckets: int = 5
    age_signal: float = 0.5  # share of users whose age bucket follows their main cluster
    seed: int = 0


@dataclass(frozen=True)
class PlantedTruth:
    item_cluster: dict[str, int]  # item id -> cluster
    user_clusters: dict[str, tuple[int, ...]]  # user id -> its clusters, main one first


def generate(spec: SyntheticSpec = SyntheticSpec()) -> Interactions:
    """The planted dataset of `spec` (same spec -> same data)."""
    return generate_with_truth(spec)[0]


def generate_with_truth(spec: SyntheticSpec = SyntheticSpec()) -> tuple[Interactions, PlantedTruth]:
    """The planted dataset and the clusters behind it."""
    rng = np.random.default_rng(spec.seed)
    cluster_of = rng.permutation(np.arange(spec.n_items) % spec.n_clusters)  # (n_items,)
    members = [np.flatnonzero(cluster_of == c) for c in range(spec.n_clusters)]
    item_ids = [f"i{i + 1}" for i in range(spec.n_items)]
    users, items, times = [], [], []
    profiles, user_clusters = {}, {}
    for u in range(spec.n_users):
        uid = f"u{u + 1}"
        clusters, events = _user_events(rng, spec, members)
        user_clusters[uid] = tuple(int(c) for c in clusters)
        users += [uid] * len(events)
        items += [item_ids[i] for i in events]
        times += list(u * 1e6 + np.sort(rng.uniform(0, 1e6, len(events))))
        age = clusters[0] % spec.n_age_buckets if rng.random() < spec.age_signal else rng.integers(spec.n_age_buckets)
        profiles[uid] = {"age": f"a{int(age)}"}
    features = {item_ids[i]: {"genre": _genres(rng, spec, int(cluster_of[i]))} for i in range(spec.n_items)}
    data = make_interactions(users, items, times, profiles, features)
    truth = PlantedTruth({item_ids[i]: int(cluster_of[i]) for i in range(spec.n_items)}, user_clusters)
    return data, truth


def _user_events(rng: np.random.Generator, spec: SyntheticSpec, members: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(clusters, item rows in time order) for one user: no item repeats; events of the
    clusters are interleaved at random."""
    n_interests = int(rng.choice(spec.interests))
    clusters = rng.choice(len(members), size=n_interests, replace=False)
    weights = np.sort(rng.dirichlet(np.ones(n_interests)))[::-1]  # main cluster first
    n_events = int(rng.integers(spec.min_events, spec.max_events + 1))
    counts = np.minimum(rng.multinomial(n_events, weights), [len(members[c]) for c in clusters])
    picked = []
    for cluster, count in zip(clusters, counts):
        pool = members[cluster]
        popularity = 1.0 / np.arange(1, len(pool) + 1) ** spec.popularity_exponent
        picked.append(rng.choice(pool, size=int(count), replace=False, p=popularity / popularity.sum()))
    events = np.concatenate(picked)
    return clusters, events[rng.permutation(len(events))]


def _genres(rng: np.random.Generator, spec: SyntheticSpec, cluster: int) -> list[str]:
    """An item's genre tokens: its cluster's genre (cluster // 2) unless noised, maybe plus one."""
    n_genres = max(1, spec.n_clusters // 2)
    genre = cluster // 2 if rng.random() >= spec.genre_noise else int(rng.integers(n_genres))
    genres = [f"g{genre}"]
    extra = int(rng.integers(n_genres))
    if rng.random() < spec.second_genre and extra != genre:
        genres.append(f"g{extra}")
    return genres


def write_recbole(interactions: Interactions, out_dir, name: str) -> Path:
    """Write `interactions` as RecBole atomic files ``name.inter`` (+ ``.user``, ``.item``
    when there are side features) into `out_dir`; returns the ``.inter`` path. Ids and
    tokens must not hold whitespace (the format's separators)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inter = out / f"{name}.inter"
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{_token(u)}\t{_token(i)}\t{t!r}" for u, i, t in zip(interactions.user_ids, interactions.item_ids, interactions.timestamps.tolist())]
    inter.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if interactions.user_profiles:
        _write_side(out / f"{name}.user", "user_id", interactions.user_profiles, "token")
    if interactions.item_features:
        _write_side(out / f"{name}.item", "item_id", interactions.item_features, "token_seq")
    return inter


def _write_side(path: Path, id_name: str, table: dict, kind: str) -> None:
    """One side file; a row's missing feature is an empty cell."""
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    lines = ["\t".join([f"{id_name}:token"] + [f"{c}:{kind}" for c in columns])]
    for row_id, row in table.items():
        cells = [row.get(c, "") for c in columns]
        cells = [" ".join(_token(t) for t in c) if kind == "token_seq" else _token(c) for c in cells]
        lines.append("\t".join([_token(row_id)] + cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _token(value) -> str:
    text = str(value)
    if any(ch.isspace() for ch in text):
        raise ValueError(f"token {text!r} holds whitespace, which RecBole atomic files use as separators")
    return text
