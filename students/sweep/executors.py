"""Where the runs of a sweep train: the Executor interface and its local implementations.

An executor takes a batch of independent runs (run key -> TrainConfig) and yields each as it
finishes, in any order; the caller (Runner, or anything that trains many runs, such as a
study) records them. It never writes results itself and never decides which runs to do.

    executor = make_executor(train_run, threads=4, workers=2)   # or ray="local" / an address
    for done in executor.run({key: config, ...}):               # a generator: runs as they finish
        done.key, done.outcome, done.seconds, done.error        # outcome None = failed (error says why)
    executor.close()

Three implementations, one per way of running, each behind the same two methods:

* ``Serial`` (workers = 1): in this process, one run after another.
* ``Pool`` (workers = N > 1): a ProcessPoolExecutor of N spawned processes on this machine,
  each run with THREADS // N torch threads. Zero dependencies beyond the standard library.
  A worker process that dies breaks the pool: the sweep stops with a one-line error and a
  rerun resumes (nothing is retried). A batch of one run trains in the calling process,
  unless the pool is ``shared``.
* ``Ray`` (students/sweep/ray_executor.py, ``ray`` set): each run is one Ray task with the
  CPUs (= its threads) and GPUs it asks for, on a local or remote Ray cluster. A task whose
  worker dies is retried once by Ray; if it dies again the run comes back failed
  (``outcome`` None, ``error`` the reason), and the others go on.

In every implementation an exception raised by the run function itself (a bad
configuration, a missing store) is raised from ``run``: it would fail the same way again.
``threads`` is the torch threads of each run: callers put it in the configs they submit.

Shared executors (``make_executor(..., shared=True)``): a study that runs several cases at
once (students/study/run.py) gives every case's sweep the same executor, each calling
``run`` from its own thread; the pool then trains every run, even a batch of one, in its
worker processes, so N workers train N runs at most. To end, the study calls ``stop`` (no
new runs; the pool drops its queued runs, lets the running ones finish and hands them to
their callers, whose ``run`` then raises ClusterError if runs of theirs were dropped), waits
for the case threads, then ``close``.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

from students.config import TrainConfig, default_threads
from students.errors import ClusterError
from students.sweep.points import RunOutcome

RunFn = Callable[[TrainConfig], RunOutcome]
#: What ``run`` of a stopped shared executor raises (ClusterError).
STOPPED = "the study stopped (another case failed or was interrupted) before this case's next runs; rerun the same " \
          "command to resume"


@dataclass(frozen=True)
class Finished:
    """One run, done: its key, its outcome (None when it failed) and its wall seconds
    (the whole ``run_fn`` call, on the worker); ``error`` says why it failed."""

    key: str
    outcome: RunOutcome | None
    seconds: float
    error: str | None = None


class Executor(Protocol):
    """Runs batches of independent runs (see the module docstring)."""

    threads: int  # torch threads of each run

    def run(self, jobs: Mapping[str, TrainConfig]) -> Iterator[Finished]:
        """Start every run of ``jobs`` (key -> config) and yield each as it finishes."""
        ...

    def stop(self) -> None:
        """Take no more runs (a shared executor, before its callers are joined): queued runs
        are dropped where the executor can drop them (the local pool), runs already training
        finish and reach their ``run`` callers, later ``run`` calls raise ClusterError.
        Idempotent."""
        ...

    def close(self) -> None:
        """Release the workers (idempotent); pending runs are cancelled."""
        ...


def worker_init(threads: int) -> None:
    """What every worker process does before its first run: quiet transformers, torch threads."""
    import torch
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)


def timed(run_fn: RunFn, config: TrainConfig) -> tuple[RunOutcome, float]:
    """``run_fn(config)`` and its wall seconds."""
    started = time.perf_counter()
    outcome = run_fn(config)
    return outcome, time.perf_counter() - started


class Serial:
    """Every run in this process, one after another."""

    def __init__(self, run_fn: RunFn, threads: int) -> None:
        self.run_fn, self.threads = run_fn, threads

    def run(self, jobs: Mapping[str, TrainConfig]) -> Iterator[Finished]:
        for key, config in jobs.items():
            yield Finished(key, *timed(self.run_fn, config))

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


class Pool:
    """N spawned processes on this machine (a batch of one run trains in this process unless
    ``shared``: then every run goes to the pool, whichever thread submits it)."""

    def __init__(self, run_fn: RunFn, threads: int, workers: int, shared: bool = False) -> None:
        self.run_fn, self.threads, self.workers, self.shared = run_fn, threads, workers, shared
        self._pool: ProcessPoolExecutor | None = None
        self._lock, self._closed = threading.Lock(), False
        self._stopped: Future = Future()  # done once ``stop`` has run: wakes the threads waiting in ``run``

    def _submit(self, jobs: Mapping[str, TrainConfig]) -> dict[Future, str]:
        """Every job submitted (the pool made on first use), under the lock: ``stop`` cannot come
        between the closed check and the submits. Raises ClusterError once stopped."""
        with self._lock:
            if self._closed:
                raise ClusterError(STOPPED)
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=worker_init, initargs=(self.threads,))
            return {self._pool.submit(timed, self.run_fn, cfg): key for key, cfg in jobs.items()}

    def run(self, jobs: Mapping[str, TrainConfig]) -> Iterator[Finished]:
        if len(jobs) <= 1 and not self.shared:  # not worth a process
            yield from Serial(self.run_fn, self.threads).run(jobs)
            return
        futures = self._submit(jobs)
        pending, dropped = set(futures), 0
        try:
            while pending:
                # a future cancelled by the pool's shutdown never wakes ``wait``: ``stop`` does
                wait(pending | {self._stopped}, return_when=FIRST_COMPLETED)
                stopped = self._stopped.done()  # then every run here is finished or was dropped
                for fut in [f for f in pending if f.done() or stopped]:
                    pending.discard(fut)
                    if fut.cancelled() or not fut.done():
                        dropped += 1
                    else:
                        yield Finished(futures[fut], *fut.result())
        except BrokenProcessPool as exc:
            raise ClusterError(f"a worker process of --workers {self.workers} died ({exc}); rerun the same "
                               "command to resume, or use --ray, which retries a run whose worker dies") from exc
        finally:
            for fut in pending:
                fut.cancel()
        if dropped:
            raise ClusterError(f"the study stopped (another case failed or was interrupted): {dropped} queued "
                               "run(s) of this case were dropped; rerun the same command to resume")

    def stop(self) -> None:
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # queued runs cancelled, running ones finish
        with self._lock:
            if not self._stopped.done():
                self._stopped.set_result(None)

    def close(self) -> None:
        if self.shared:  # stays closed: a case thread must not start a new pool
            self.stop()
            return
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def make_executor(run_fn: RunFn, threads: int | None = None, workers: int = 1, ray: str | None = None,
                  gpus_per_run: float = 0.0, shared: bool = False) -> Executor:
    """The executor for a sweep's options. ``threads``: the torch threads to share (None: the
    CPUs this process may use); the local pool gives each of its ``workers`` threads // workers,
    a Ray task asks the cluster for ``threads`` CPUs (None: 1) and ``gpus_per_run`` GPUs.
    ``ray``: None = no Ray, "local" = start a local Ray cluster, else a cluster address.
    ``shared``: several threads will call ``run`` (a study's cases at once; see the module
    docstring); a local pool then trains every run in its workers.

    Raises ClusterError (Ray not installed, cluster unreachable)."""
    if ray is not None:
        from students.sweep.ray_executor import RayExecutor

        return RayExecutor(run_fn, threads or 1, ray, gpus_per_run)
    per_run = max(1, (threads or default_threads()) // workers)
    return Pool(run_fn, per_run, workers, shared) if workers > 1 else Serial(run_fn, per_run)
