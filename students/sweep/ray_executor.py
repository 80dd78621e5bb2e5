"""The Ray executor of a sweep (`students sweep --ray [ADDRESS]`): each run is one Ray task.

Imported only when Ray is asked for (students/sweep/executors.py, make_executor), so the
single-machine path never imports Ray. A task asks the cluster for the run's CPUs (its torch
threads) and GPUs; Ray places it on any node with them free, so a stage's runs train in
parallel across the cluster while the driver (this process) records each as it finishes.

Failures: a task whose worker process dies (killed, out of memory, its node lost) is
retried once by Ray (``max_retries=1``); a second death comes back as a failed run whose
error is Ray's reason. An exception raised by the run itself is not retried: it is raised
here, unwrapped, as in the other executors.

Cluster: ``address`` "local" starts a Ray cluster on this machine for the sweep (and stops it
after); "auto" or HOST:PORT (or ray://HOST:PORT) connects to a running one, checked first
with a plain TCP connection so a wrong address fails in seconds instead of Ray's minutes of
retries. A program that has called ``ray.init`` itself keeps its own connection and cluster.
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from students.config import TrainConfig
from students.errors import ClusterError
from students.sweep.executors import STOPPED, Finished, RunFn, timed, worker_init
from students.sweep.points import RunOutcome

CONNECT_TIMEOUT_S = 5.0
RETRIES = 1  # a run whose worker dies is run once more


def _ray_run(run_fn: RunFn, config: TrainConfig, threads: int) -> tuple[RunOutcome, float]:
    """The task: one run on a Ray worker."""
    worker_init(threads)
    return timed(run_fn, config)


def check_reachable(address: str) -> None:
    """Raise ClusterError when nothing listens at ``address`` (HOST:PORT or ray://HOST:PORT)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray {address}: not a Ray cluster address; pass HOST:PORT (the head node's "
                           "`ray start --head` port, 6379 by default), auto, or no address for a local cluster")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach a Ray cluster at {address} ({exc}); start one there with "
                           "`ray start --head`, fix the address, or pass --ray without an address for a "
                           "local cluster") from exc


def _reason(exc: BaseException) -> str:
    """The first line of a Ray error, with how many times the run was tried."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__} after {RETRIES + 1} attempts: {lines[0] if lines else 'no message'}"


class RayExecutor:
    """Runs on a Ray cluster, one task per run (see the module docstring)."""

    def __init__(self, run_fn: RunFn, threads: int, address: str, gpus_per_run: float = 0.0) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ClusterError("--ray needs Ray, which is not installed: pip install 'logitstore[ray]' "
                               "(or drop --ray to train on this machine)") from exc
        self.ray, self.run_fn, self.threads, self.gpus = ray, run_fn, threads, gpus_per_run
        self._lock, self._stopped = threading.Lock(), False
        if address not in ("local", "auto"):
            check_reachable(address)
        self.owned = not ray.is_initialized()
        if self.owned:
            self._connect(address)
        self._check_resources()
        self._task = ray.remote(_ray_run).options(num_cpus=threads, num_gpus=gpus_per_run, max_retries=RETRIES,
                                                  retry_exceptions=False)

    def _connect(self, address: str) -> None:
        try:
            self.ray.init(address=address, include_dashboard=False, log_to_driver=False,
                          configure_logging=True, logging_level="ERROR")
        except ConnectionError as exc:
            raise ClusterError(f"cannot connect to the Ray cluster at {address} ({exc}); check the address "
                               "and that this machine runs the cluster's Ray and Python versions") from exc

    def _check_resources(self) -> None:
        """A run that no node of the cluster could hold would wait forever: refuse it now."""
        have: dict[str, Any] = self.ray.cluster_resources()
        for what, need, flag in (("CPU", self.threads, "--threads"), ("GPU", self.gpus, "--gpus-per-run")):
            if need > have.get(what, 0):
                self.close()
                raise ClusterError(f"each run asks for {need:g} {what}(s) ({flag}) but the Ray cluster has "
                                   f"{have.get(what, 0):g}; lower {flag} or add nodes")

    def run(self, jobs: Mapping[str, TrainConfig]) -> Iterator[Finished]:
        from ray.exceptions import RayError, RayTaskError

        with self._lock:  # stop() cannot come between the check and the submits
            if self._stopped:
                raise ClusterError(STOPPED)
            refs = {self._task.remote(self.run_fn, cfg, self.threads): key for key, cfg in jobs.items()}
        pending = list(refs)
        try:
            while pending:
                ready, pending = self.ray.wait(pending, num_returns=1)
                for ref in ready:
                    try:
                        outcome, seconds = self.ray.get(ref)
                    except RayTaskError as exc:  # the run raised: not the worker's death
                        cause = getattr(exc, "cause", None)
                        raise (cause if isinstance(cause, BaseException) else exc) from None
                    except RayError as exc:  # the worker died twice (or its node): a failed run
                        yield Finished(refs[ref], None, 0.0, _reason(exc))
                    else:
                        yield Finished(refs[ref], outcome, seconds)
        finally:
            for ref in pending:
                self.ray.cancel(ref, force=True)

    def stop(self) -> None:
        """No new runs: later ``run`` calls raise ClusterError. Runs already submitted finish on
        the cluster and reach their callers (Ray cannot drop a queued task without also ending
        a running one), so each case of a stopped study ends with its current stage."""
        with self._lock:
            self._stopped = True

    def close(self) -> None:
        self.stop()
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()
