"""MIND model: data, network, training, evaluation and export.

Importing the package first names the CPU's BLAS kernel family for OpenBLAS (the one FAISS's
wheel bundles) unless ``OPENBLAS_CORETYPE`` is already set. OpenBLAS picks its kernels from the
CPU model at load time, and on virtual machines that report a generic model ("Intel Xeon
Processor") it finds none and falls back to its generic SSE3 kernels ("Prescott"): the flat
index's matrix products then run ~4x slower (bench/README.md, "Serving, fifth pass"). The
instruction-set flags are what the kernels need, so they decide. It must run before faiss is
loaded, hence here, in the package that every faiss user of this project imports first.
"""
from __future__ import annotations

import os

# OpenBLAS kernel family -> the CPU flags its sgemm kernels use, best first
OPENBLAS_KERNELS = (("SkylakeX", frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})),
                    ("Haswell", frozenset({"avx2", "fma"})))


def openblas_core_type(flags: frozenset[str] | set[str]) -> str | None:
    """The best OpenBLAS kernel family a CPU with these /proc/cpuinfo ``flags`` runs (None:
    leave it to OpenBLAS, e.g. on ARM, whose cpuinfo has no x86 flags)."""
    return next((core for core, needs in OPENBLAS_KERNELS if needs <= flags), None)


def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


if "OPENBLAS_CORETYPE" not in os.environ and (_core := openblas_core_type(_cpu_flags())) is not None:
    os.environ["OPENBLAS_CORETYPE"] = _core
