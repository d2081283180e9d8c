"""The service's state and its one path to an answer: settings, metrics, the batcher, and the
served bundle, loaded, verified, warmed up and swapped atomically on reload.

``ServiceState`` is handed to routes as a dependency. ``recall`` queues a query on the
batcher; the batcher's worker thread calls ``run_batch``, which runs the pipeline on the
bundle current when the batch starts and records every batch and answer metric. A reload
loads and warms the new bundle in a side thread while the old one keeps answering, then
replaces one reference; a batch already running keeps the bundle it started with.
"""
from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from starlette.requests import Request

from model.bundle import MANIFEST, Bundle, BundleError, latest_bundle, load_bundle
from model.index import ShardedFlatIndex, index_kind
from service.batcher import Batcher, DeadlineError, QueueFullError
from service.metrics import ServiceMetrics
from service.pipeline import RecallQuery, RetrievalOptions, bucket_shapes, configure_compute, recall_batch, run_tower
from service.settings import Settings, batch_workers_of

log = logging.getLogger("service.state")
WARMUP_BATCH_SIZE = 8
WARMUP_HISTORY_LEN = 20
STAGES = ("tower", "search", "merge")


class Unavailable(Exception):
    """The service cannot answer now (not ready, overloaded, deadline): 503 + Retry-After."""


def created_timestamp(manifest: dict) -> float:
    """Unix seconds of the manifest's ``created_at`` (export time); 0 when absent or unreadable."""
    try:
        return datetime.fromisoformat(manifest["created_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return 0.0


class ReloadPathError(ValueError):
    """A reload path outside the bundle root, or no bundle root configured."""


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def bundle_root_of(settings: Settings) -> Path | None:
    """The directory reload paths must lie under (see Settings.bundle_root)."""
    if settings.bundle_root is not None:
        return settings.bundle_root.resolve()
    if settings.bundle is None:
        return None
    path = settings.bundle.resolve()
    return path.parent if (path / MANIFEST).is_file() else path


def reload_target(root: Path | None, requested: str | None) -> Path:
    """Resolve a reload request's path; it must be ``root`` or lie under it (default: root,
    i.e. its newest bundle)."""
    if root is None:
        raise ReloadPathError("no bundle root configured (start with --bundle or MIND_BUNDLE_ROOT)")
    if requested is None:
        return root
    path = Path(requested)
    try:
        path = (path if path.is_absolute() else root / path).resolve()
    except (ValueError, RuntimeError, OSError) as err:   # NUL byte, symlink loop: a 400, not a 500
        raise ReloadPathError(f"path {requested!r} cannot be resolved: {err}") from None
    if path != root and root not in path.parents:
        raise ReloadPathError(f"path {requested!r} is outside the bundle root {root}")
    return path


def warm_up(bundle: Bundle, options: RetrievalOptions, n_batches: int) -> None:
    """Run a few dummy batches so the first real request pays no lazy initialisation.
    Raises whatever the pipeline raises: a bundle that cannot answer is refused."""
    rng = np.random.default_rng(0)
    n_items = len(bundle.item_ids)
    for _ in range(n_batches):
        queries = [RecallQuery(history=tuple(bundle.item_ids[r] for r in rng.integers(0, n_items, WARMUP_HISTORY_LEN)),
                               top_n=min(100, n_items)) for _ in range(WARMUP_BATCH_SIZE)]
        answers, _ = recall_batch(bundle, queries, options)
        if any(not a["items"] for a in answers):
            raise BundleError(f"{bundle.path}: warm-up recall returned no items")


def batch_invariant_shapes(bundle: Bundle, shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The largest tail of ``shapes`` (ascending) at every one of which the tower gives each
    row bit-identical outputs (a random batch of the largest shape against its prefixes):
    a user's answer must never depend on its batch-mates. Smaller batches are padded to the
    tail's first shape. MKL's one- and two-row GEMMs, for one, sum in another order than its
    wider ones: there a lone request runs a 4-row call rather than, as before, a 64-row one."""
    rng = np.random.default_rng(0)
    n = shapes[-1]
    history = rng.integers(1, len(bundle.item_ids) + 1, size=(n, bundle.max_len))
    history[rng.random(n) < 0.5, : bundle.max_len // 2] = 0                   # some short histories
    profile = np.zeros((n, len(bundle.profile_features)), dtype=np.int64)
    for p, feature in enumerate(bundle.profile_features):
        profile[:, p] = rng.integers(0, len(bundle.profile_vocab[feature]) or 1, n)
    full = run_tower(bundle, history, profile, (n,))
    for i in reversed(range(len(shapes) - 1)):        # from the widest down
        size = shapes[i]
        part = run_tower(bundle, history[:size], profile[:size], (size,))
        if not all(np.array_equal(got, want[:size]) for got, want in zip(part, full)):
            log.warning("tower rows change with the call shape: calls of %s rows only", shapes[i + 1:],
                        extra={"bundle": str(bundle.path), "shape": size})
            return shapes[i + 1:]
    return shapes


def search_pool(settings: Settings) -> ThreadPoolExecutor | None:
    """The threads that scan shards 1.. of a split flat index (shard 0: the batch worker
    itself), each with the serving thread counts; None when the search is not split."""
    if settings.search_threads < 2:
        return None
    return ThreadPoolExecutor(settings.search_threads - 1, thread_name_prefix="recall-search",
                              initializer=functools.partial(configure_compute, settings))


def split_index(bundle: Bundle, n_shards: int, pool: ThreadPoolExecutor | None) -> Bundle:
    """``bundle`` with its flat index split into ``n_shards`` row shards searched at once on
    ``pool`` and the caller (same answers; IVF and HNSW indexes are kept as they are). The
    shards replace the index: the item vectors are held once by it and once by the bundle."""
    if pool is None or n_shards < 2 or index_kind(bundle.index) != "flat":
        return bundle
    return replace(bundle, index=ShardedFlatIndex(bundle.item_vectors, n_shards, pool))


class ServiceState:
    """What the routes need: settings, metrics, the batcher, and the current bundle."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = resolve_device(settings.device)
        # On CUDA the tower runs whole batches; on CPU at most MIND_TOWER_CHUNK rows a call.
        max_rows = max(settings.tower_chunk, settings.max_batch_size) if self.device == "cuda" else settings.tower_chunk
        self._tower_shapes = bucket_shapes(max_rows)       # probed again for every bundle loaded
        self.options = replace(RetrievalOptions.from_settings(settings), tower_shapes=self._tower_shapes)
        self.root = bundle_root_of(settings)
        self.bundle: Bundle | None = None
        self.not_ready_reason = "no bundle loaded yet"
        self.batcher: Batcher | None = None      # created by start(), on the running loop
        self._reload_lock = asyncio.Lock()
        self._configure_compute = functools.partial(configure_compute, settings)
        self._search_pool = search_pool(settings)
        self.batch_workers = batch_workers_of(settings, self.device)

    def start(self) -> None:
        """Start the batcher and its worker threads (on the running event loop)."""
        settings = self.settings
        self._configure_compute()
        self.batcher = Batcher(self.run_batch, max_batch_size=settings.max_batch_size,
                               wait_s=settings.batch_wait_ms / 1000, max_queue=settings.max_queue,
                               objective_s=settings.latency_objective_ms / 1000, workers=self.batch_workers,
                               overlap_in_flight=settings.batch_overlap_in_flight,
                               thread_init=self._configure_compute)
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.metrics.busy_workers.set_function(lambda: self.batcher.busy)
        self.metrics.overlap_efficiency.set_function(lambda: self.batcher.overlap_efficiency)
        self.batcher.start()

    async def stop(self) -> None:
        """Answer everything queued, then stop the worker."""
        await self.batcher.drain_and_stop()     # the search threads stay: a restart reuses the bundle

    def refusal(self) -> QueueFullError | None:
        """Why a recall request arriving now would be refused (counted), or None; the
        middleware asks before reading the body."""
        refused = self.batcher.refusal() if self.batcher is not None else None
        if refused is not None:
            self.metrics.rejected.labels(reason=refused.reason).inc()
        return refused

    def submit(self, query: RecallQuery, started: float) -> asyncio.Future:
        """Queue one query (``started``: its arrival, perf_counter); ``settle`` the future once
        it is done. Raises Unavailable when not ready or overloaded."""
        if self.bundle is None:
            raise Unavailable(f"not ready: {self.not_ready_reason}")
        waited_s = time.perf_counter() - started
        try:
            return self.batcher.enqueue((query, time.perf_counter()), self.settings.request_timeout_ms / 1000 - waited_s,
                                        waited_s)
        except QueueFullError as err:
            raise self._refused(err) from None

    def settle(self, job: asyncio.Future, started: float) -> dict:
        """The answer of a done ``submit`` future, with its took_ms; raises Unavailable when it
        was refused at dispatch or its deadline passed (each counted)."""
        try:
            answer = job.result()
        except QueueFullError as err:
            raise self._refused(err) from None
        except DeadlineError as err:
            self.metrics.rejected.labels(reason="deadline").inc()
            raise Unavailable(f"request deadline passed: {err}") from None
        return dict(answer, took_ms=round((time.perf_counter() - started) * 1000, 3))

    def _refused(self, err: QueueFullError) -> Unavailable:
        self.metrics.rejected.labels(reason=err.reason).inc()
        return Unavailable(f"overloaded: {err}")

    async def recall(self, query: RecallQuery, started: float) -> dict:
        """``submit`` and ``settle``: the answer, or Unavailable."""
        job = self.submit(query, started)
        await asyncio.wait((job,))
        return self.settle(job, started)

    def run_batch(self, jobs: list[tuple[RecallQuery, float]]) -> list[dict]:
        """The worker thread's body: one batch on the bundle current when it starts, and all
        its metrics (queue wait per request, batch size, stage times, answer counts)."""
        metrics, started = self.metrics, time.perf_counter()
        queue_stage = metrics.stage_seconds.labels(stage="queue")
        for _, queued in jobs:
            queue_stage.observe(started - queued)
        answers, times = recall_batch(self.bundle, [query for query, _ in jobs], self.options)
        metrics.batch_size.observe(len(jobs))
        for stage in STAGES:
            metrics.stage_seconds.labels(stage=stage).observe(getattr(times, f"{stage}_s"))
        for answer in answers:
            metrics.observe_answer(answer)
        return answers

    def _load_and_warm(self, path: Path) -> tuple[Bundle, RetrievalOptions]:
        self._configure_compute()   # this side thread warms up with the serving thread counts
        bundle = load_bundle(path, device=self.device, tower_format=self.settings.tower_format)
        # A private copy of the memory-mapped item vectors (n_items x d x 4 bytes): with the map,
        # an in-place write to the served item_vectors.npy changed live scores (a truncation
        # would SIGBUS the process). Found by tests/test_faults.py.
        bundle = replace(bundle, item_vectors=np.array(bundle.item_vectors))
        bundle = split_index(bundle, self.settings.search_threads, self._search_pool)
        options = replace(self.options, tower_shapes=batch_invariant_shapes(bundle, self._tower_shapes))
        warm_up(bundle, options, self.settings.warmup_batches)
        return bundle, options

    async def load(self, path: Path) -> Bundle:
        """Load, verify and warm ``path`` (a bundle or a root) off the loop, then swap it in.
        On failure the current bundle stays; raises BundleError (counted and logged)."""
        async with self._reload_lock:
            previous = self.bundle
            try:
                bundle, options = await asyncio.to_thread(self._load_and_warm, path)
            except (BundleError, RuntimeError, ValueError, OSError) as err:
                self.metrics.reloads.labels(result="failure").inc()
                log.error("bundle refused", extra={"bundle": str(path), "error": str(err)})
                if previous is None:
                    self.not_ready_reason = f"bundle not loaded: {err}"
                raise BundleError(str(err)) from err
            # The tower shapes checked on this bundle. A batch starting during these two lines
            # may pair them with the old bundle; both bundles' probes agree unless the tower
            # architecture itself changed, so no answer depends on its batch-mates either way.
            self.options = options
            self.bundle = bundle
            # The new bundle lives until the next reload: keep it out of the cyclic GC (see
            # app.lifespan). The old one is still freed by reference counting (no cycles).
            gc.freeze()
            self.metrics.reloads.labels(result="success").inc()
            self.metrics.model.info({"model_version": bundle.model_version, "path": str(bundle.path),
                                     "tower_format": bundle.tower_format})
            self.metrics.model_created.set(created_timestamp(bundle.manifest))
            self.metrics.ready.set(1)
            log.info("bundle serving", extra={"bundle": str(bundle.path), "model_version": bundle.model_version,
                                              "tower_format": bundle.tower_format,
                                              "previous_model_version": previous.model_version if previous else None})
            return bundle

    async def watch(self, interval_s: float) -> None:
        """Poll the bundle root; load a newer version when one appears (also the first one).
        A version that was refused is not retried until a newer one appears."""
        refused: Path | None = None
        while True:
            await asyncio.sleep(interval_s)
            try:
                newest = latest_bundle(self.root)
            except BundleError as err:
                self.not_ready_reason = self.not_ready_reason if self.bundle else f"waiting for a bundle: {err}"
                continue
            current = self.bundle
            newest = newest.resolve()
            if newest != refused and (current is None or newest != current.path.resolve()):
                try:
                    await self.load(newest)
                except BundleError:
                    refused = newest  # logged and counted in load(); keep watching


async def get_state(request: Request) -> ServiceState:
    """FastAPI dependency: the app's ServiceState (async: a sync dependency would cost a
    threadpool hop per request)."""
    return request.app.state.service
