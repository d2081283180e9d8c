"""Every knob of the recall service, in one frozen pydantic-settings object.

Values come from environment variables with the prefix ``MIND_`` (``MIND_PORT=9000``);
``mind serve`` flags override them. docs/service.md lists each one with its meaning.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_faiss_threads(cpu_count: int | None) -> int:
    """All cores but one (the event loop's), 1 to 8: the search is the heavy stage."""
    return max(1, min(8, (cpu_count or 2) - 1))


def usable_cores() -> int | None:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), else all."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def default_search_threads(cpu_count: int | None) -> int:
    """Every core, 1 to 8: one batch's flat-index scan is split across them."""
    return max(1, min(8, cpu_count or 1))


def auto_batch_workers(cpu_count: int | None, threads_per_batch: int, device: str) -> int:
    """Batch worker threads when ``batch_workers`` is 0: enough workers for their search threads
    to fill the cores (one when a batch's search already spans them all, as it does by
    default); one on CUDA, where the tower runs whole batches on the GPU."""
    return 1 if device == "cuda" else max(1, (cpu_count or 1) // threads_per_batch)


def batch_workers_of(settings: "Settings", device: str) -> int:
    """The batch workers ``settings`` ask for: ``batch_workers``, or (0) auto over the usable
    cores and the threads one batch's search uses."""
    return settings.batch_workers or auto_batch_workers(usable_cores(), max(settings.faiss_threads,
                                                                            settings.search_threads), device)


class Settings(BaseSettings):
    """Service configuration; immutable once the app is built."""

    model_config = SettingsConfigDict(env_prefix="MIND_", frozen=True, extra="ignore")

    # Bundle
    bundle: Path | None = Field(None, description="bundle directory, or a bundle root (newest version is served)")
    bundle_root: Path | None = Field(None, description="directory reload paths must resolve under; default: --bundle if it is a root, else its parent")
    watch_interval_s: float = Field(0.0, ge=0, description="poll the bundle root for a newer version every N s (0 = off)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="tower device; auto = cuda when available (the index stays on CPU)")
    tower_format: Literal["torchscript", "export"] = Field("torchscript", description="tower file served: TorchScript (user_tower.pt) or "
                                                           "the torch.export program (user_tower.pt2; bundles without one serve TorchScript)")

    # HTTP
    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8000, ge=0, le=65535, description="listen port")
    workers: int = Field(1, ge=1, le=1, description="one process by design: dynamic batching needs every request in one queue; scale with replicas")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="JSON-line log level")
    log_requests: bool = Field(True, description="one JSON log line per request")
    admin_token: SecretStr | None = Field(None, description="bearer token for POST /admin/reload; unset = endpoint disabled")

    # Request limits (beyond them: 422, or 413 for the body)
    default_top_n: int = Field(50, ge=1, description="top_n of a request that gives none")
    max_top_n: int = Field(1000, ge=1, description="largest accepted top_n")
    max_history: int = Field(1000, ge=1, description="longest accepted history; the tower keeps the newest max_len")
    max_exclude: int = Field(10_000, ge=0, description="longest accepted exclude list")
    max_batch_requests: int = Field(256, ge=1, description="most requests in one POST /recall/batch")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies get 413")
    explain_items: int = Field(3, ge=1, description="history items listed per interest with explain=true")

    # Batching and backpressure
    max_batch_size: int = Field(64, ge=1, description="most requests the batcher runs through tower + FAISS at once")
    batch_wait_ms: float = Field(1.0, ge=0, description="window for company of a batch whose first request waited for the "
                                 "worker or came with others, never for a lone request at an idle worker (0: batches form "
                                 "only from requests that queued while the worker was busy)")
    batch_workers: int = Field(0, ge=0, description="threads running batches at once, each with torch_threads / faiss_threads "
                               "threads; 0 = auto: usable cores // the larger of search_threads and faiss_threads on CPU (1 by "
                               "default: a batch's search spans every core), 1 with a CUDA tower")
    batch_overlap_in_flight: int = Field(0, ge=0, description="a batch starts beside a running one only with at most this many "
                                         "requests per worker in flight (running or queued); 0 = at any load (quiet 2-core machine: 3.3x the plain server's best at p99 <= 50 ms, against 1.8x with 1; bench/README.md)")
    max_queue: int = Field(512, ge=1, description="queued requests before 503 + Retry-After")
    request_timeout_ms: float = Field(1000.0, gt=0, description="deadline from arrival; past it the answer is 503")
    latency_objective_ms: float = Field(100.0, ge=0, description="refuse (503 + Retry-After) a request whose predicted wait, "
                                        "from the measured service time and its queue position, exceeds this (0 = queue bound only)")
    retry_after_s: int = Field(1, ge=0, description="Retry-After of 503 answers")

    # Compute
    torch_threads: int = Field(1, ge=1, description="intra-op threads of the tower (small: it is cheap)")
    faiss_threads: int = Field(default_factory=lambda: default_faiss_threads(usable_cores()), ge=1,
                               description="OpenMP threads of each FAISS call (an IVF or HNSW search; a split flat index "
                                "searches each shard single-threaded); default leaves one core to the event loop")
    search_threads: int = Field(default_factory=lambda: default_search_threads(usable_cores()), ge=1, le=64,
                                description="a flat index is split by rows into this many shards, which one batch's "
                                "search scans at once, one thread each (1 = not split); default: every usable core, up to 8")
    faiss_blas_threshold: int = Field(1, ge=1, description="FAISS flat search uses one BLAS matrix product from this many queries "
                                      "per call (FAISS's own default, 128000, never does at serving sizes: ~5x slower per query)")
    tower_chunk: int = Field(64, ge=1, description="most requests per tower call on CPU (CUDA: whole batches); calls are "
                             "padded to a power of two, shapes the tower is checked to give bit-identical rows on at load")
    gil_switch_interval_ms: float = Field(5.0, gt=0, description="longest the event loop or the batch worker holds the GIL "
                                          "while the other waits for it (Python's default: 5)")
    merge_policy: Literal["score", "round_robin"] = Field("score", description="how capsule lists merge: best score first, or interests taking turns")
    overfetch: int = Field(8, ge=0, description="extra candidates per capsule beyond top_n + exclusions")
    warmup_batches: int = Field(3, ge=0, description="dummy batches run on a bundle before it serves (start and reload)")
