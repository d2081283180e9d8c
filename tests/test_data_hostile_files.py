"""Random small logs, most valid and some malformed (wrong column counts, empty or padded ids,
bad or non-finite times, quotes, stray separators, blank and whitespace lines, CRLF, bytes
that are not UTF-8), in every text format: each either loads to the same data or fails with
the same `DataFormatError` message as the row-by-row Python path did before the columnar
reader replaced it. The digest of all outcomes was computed by running this file against
that path (model/data as of the commit before "model/data on pyarrow") and is asserted here."""
from __future__ import annotations

import hashlib
import json
import random

from model.data import DataFormatError, build_dataset, load_interactions

N_CASES = 300
SEED = 2
# computed by the Python path this replaced, over generate_cases(SEED, N_CASES)
OUTCOMES_DIGEST = "0d8a800da92b55a65fc3335f08227a45f0b3234e4489334927fc0d9674d209fa"

PIECES = ["u1", "u2", " 7", "007", "", " ", "i1", "i2", "3", "4.5", "nan", "inf", "1e3",
          "2024-01-01T10:00:00+02:00", "x y", '"q"', '"a,b"', '"open', "é", "\xff", "::", ":", "|",
          "1_0", " 5 ", "+3", "-0.0"]
COMMON = PIECES[:3] + PIECES[6:10]
FILES = {  # name -> (header or None, separator, columns)
    "log.csv": ("user,item,time", ",", 3), "log.tsv": ("user\titem\ttime", "\t", 3),
    "log.inter": ("user_id:token\titem_id:token\ttimestamp:float", "\t", 3), "ratings.dat": (None, "::", 4),
    "u.data": (None, "\t", 4), "ratings.csv": ("userId,movieId,rating,timestamp", ",", 4),
    "log.txt": ("user\titem", "\t", 2)}


def generate_cases(seed: int, n: int):
    """(file name, bytes) pairs; a cell is hostile 3% of the time, a row miscounted 3%."""
    rng = random.Random(seed)
    for _ in range(n):
        name = rng.choice(list(FILES))
        header, sep, width = FILES[name]
        lines = [header] if header else []
        for _ in range(rng.randint(0, 8)):
            count = width + (rng.choice([-1, 1]) if rng.random() < 0.03 else 0)
            lines.append(sep.join(rng.choice(COMMON) if rng.random() < 0.97 else rng.choice(PIECES)
                                  for _ in range(count)))
            if rng.random() < 0.1:
                lines.append(rng.choice(["", "  ", "\t"]))
        text = ("\r\n" if rng.random() < 0.2 else "\n").join(lines) + ("\n" if rng.random() < 0.8 else "")
        latin = name in ("u.data", "ratings.dat") or "\xff" in text
        yield name, text.encode("latin-1" if latin else "utf-8", errors="replace")


def outcome(path) -> list:
    """What loading `path` gives: the columns and the k_core=1 dataset, or the error."""
    try:
        x = load_interactions(path)
    except DataFormatError as err:
        return ["error", str(err).replace(str(path.parent), "<dir>")]
    ds = build_dataset(x, k_core=1)
    return [list(x.user_ids), list(x.item_ids), x.timestamps.tolist(), ds.vocab_json(), ds.split_json(),
            {str(u): s.tolist() for u, s in sorted(ds.sequences.items())}]


def outcomes_digest(root) -> str:
    results = []
    for case, (name, data) in enumerate(generate_cases(SEED, N_CASES)):
        folder = root / f"c{case}"
        folder.mkdir()
        (folder / name).write_bytes(data)
        results.append(outcome(folder / name))
    return hashlib.sha256(json.dumps(results).encode()).hexdigest()


def test_random_files_load_or_fail_as_the_old_path_did(tmp_path):
    assert outcomes_digest(tmp_path) == OUTCOMES_DIGEST
