"""bench/interests_e2e.py on a small planted set: train -> export -> serve -> POST /recall."""
from __future__ import annotations

import re

import pytest


@pytest.fixture(scope="module")
def small_planted(tmp_path_factory):
    from model.data import SyntheticSpec, generate, write_recbole

    spec = SyntheticSpec(n_users=300, n_items=200, n_clusters=6, min_events=15, max_events=30)
    return write_recbole(generate(spec), tmp_path_factory.mktemp("planted"), "small")


def test_end_to_end_interests_check_reports_every_number(small_planted, tmp_path, capsys):
    from bench.interests_e2e import main

    assert main(["--data", str(small_planted), "--workdir", str(tmp_path), "--", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("mind", "k1"):                       # both runs trained and exported for real
        assert (tmp_path / name / "checkpoint.pt").is_file()
        assert (tmp_path / f"{name}-bundle" / "manifest.json").is_file()
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^\| (MIND|--interests 1) \| (\S+) \| (\S+) \| (\S+) \| (\S+) \|$", out, re.MULTILINE)}
    assert set(rows) == {"MIND", "--interests 1"}
    recall, recall_one, cosine, overlap = rows["--interests 1"]
    # One interest: max_interests 1 changes nothing, the cosine is undefined, the overlap total.
    assert recall == recall_one and cosine == "n/a" and overlap == "1.0000"
    recall, recall_one, cosine, overlap = rows["MIND"]
    assert 0 < float(recall) <= 1 and 0 < float(recall_one) <= 1
    assert -1 <= float(cosine) <= 1 and 0 <= float(overlap) <= 1
    assert re.search(r"^\| item-CF \| 0?\.?\d", out, re.MULTILINE)
    assert re.search(r"^30 test users", out, re.MULTILINE)
    verdict = [line for line in out.splitlines() if line.startswith("verdict: ")]
    assert len(verdict) == 1 and verdict[0].split()[1] in ("PASS", "FAIL:")
    assert out.count("server exit code after SIGTERM: 0") == 2
