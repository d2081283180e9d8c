"""bench/gpu.py in its smallest form on the CPU: the three reports come out and agree."""
from __future__ import annotations

import pytest

from bench import gpu

pytestmark = pytest.mark.slow


def test_gpu_bench_runs_on_cpu_in_ci_size(tmp_path, capsys):
    code = gpu.main(["--device", "cpu", "--quick", "--items", "1500", "--dim", "16", "--history", "12",
                     "--top-n", "20", "--concurrency", "1,3", "--seconds", "0.5", "--agreement", "16",
                     "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    tower = out.split("1. tower histories/s")[1].split("2. mind serve")[0]
    assert [line.split()[0] for line in tower.strip().splitlines()[2:]] == ["1", "8", "64"]
    served = [line for line in out.splitlines() if line.startswith("mind --device cpu")]
    assert [line.split()[3] for line in served] == ["1", "3"] and all("{200:" in line for line in served)
    assert "identical ids and order 16/16" in out and "AGREE" in out and "server exit code after SIGTERM: 0" in out
