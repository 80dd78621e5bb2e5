"""`logitstore build --ray [ADDRESS]`: the blocks of each split on Ray actors (issue 13).

The driver (the `logitstore build` process) does what a single-process build does (data,
tokenized splits, ONNX export, parity, scores) except computing blocks: for each checkpoint
it starts N actors (:class:`BlockWorker`), each with one ONNX Runtime session (one GPU each,
``num_gpus=1``, on GPU nodes; one CPU each otherwise), or with ``--runtime torch`` the model
in PyTorch (logitstore/torch_runtime.py; each worker then needs the checkpoint folder). An actor reads the split's token ids
from the store, computes the blocks it is given, and writes each block and its record
straight to the store (a folder or a URL) through logitstore/blocks.py, the code the single
process build runs. The driver hands out blocks, shows one progress bar and alone updates an
entry's metadata (progress, ``complete``).

Why Ray core actors and not Ray Data: a block here is a Zarr chunk the worker writes itself,
with its own record, and a rerun must compute exactly the blocks without one; an actor keeps
one ONNX session (one GPU) and the split's tokens for every block it computes, and the plain
``ray`` package is enough. Ray Data would bring pandas/pyarrow (``ray[data]``), cut the rows
into its own blocks, and its resume/ordering would be a second bookkeeping next to the records.

Chunks shared by blocks: in the row layout a block is whole chunks, so any blocks may run at
once. In the token layouts (token logits, causal-LM top-k) a 65,536-token chunk may hold the
tokens of two neighbouring blocks; there consecutive blocks are grouped into units of at
least one chunk of tokens, a unit runs on one actor in order, and the even units run before
the odd ones, so no two actors ever write the same chunk.
"""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from logitstore.blocks import BlockSpec, Tally, count, prepare, write_block
from logitstore.errors import ClusterError, LogitStoreError
from logitstore.store import SplitData
from logitstore.writer import TOKEN_LOGIT_CHUNK

#: Test hook (tests/test_ray_build.py): each actor ends its process (os._exit) after this many blocks.
EXIT_AFTER_ENV = "LOGITSTORE_TEST_ACTOR_EXIT_AFTER"
#: Seconds to wait for the actors to start (a cluster without the resources asked for never starts them).
START_TIMEOUT = 300.0


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs Ray, which is not installed: pip install 'logitstore[ray]'") from None
    return ray


def _reachable(address: str) -> None:
    """Refuse at once an address nothing listens on (ray.init would retry for minutes)."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot reach a Ray cluster at {address!r} ({exc}); start one there (`ray start --head`) "
                           "or pass its address as HOST:PORT (or --ray alone for a local cluster)") from None


@contextlib.contextmanager
def connected(address: str, cpus: int | None = None) -> Iterator[None]:
    """Ray connected for the build: a new local cluster (``address`` "local", with ``cpus``
    CPUs, default all), or the cluster at ``address``; left as it was when this process is
    connected already. Raises ClusterError naming the fix."""
    ray = _ray()
    if address != "local":
        _reachable(address)
    if ray.is_initialized():
        yield
        return
    if address == "local":
        # Ray runs its workers at nice 15 by default; on a machine shared with other busy processes
        # that gives the actors less CPU than a build without --ray gets (docs/benchmarks.md)
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    else:
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"cannot connect to the Ray cluster at {address!r} ({exc}); check the address "
                               "(HOST:PORT of the head, or auto)") from None
    try:
        yield
    finally:
        ray.shutdown()


class BlockWorker:
    """One Ray actor: an ONNX Runtime session of one checkpoint (or, with ``--runtime torch``,
    the model in PyTorch, loaded from the checkpoint folder) and the store, open for writing."""

    def __init__(self, store_path: str, ckpt: str, onnx_path: str | None, export: tuple[Any, ...], provider: str,
                 threads: int | None, spec: BlockSpec, exit_after: int | None) -> None:
        from logitstore.infer import make_session
        from logitstore.tasks import get_task
        from logitstore.writer import StoreWriter

        self.store = StoreWriter.open(store_path)
        source, tolerance, sha = export
        task = get_task(self.store.meta.task).for_store(self.store.meta)
        if onnx_path is None:  # --runtime torch: the model in PyTorch, from the checkpoint folder
            from logitstore.torch_runtime import torch_session

            self.session: Any = torch_session(Path(source), task, threads)
        else:
            path = Path(onnx_path)
            if not path.is_file():  # this worker has no shared export cache: export the checkpoint here
                from logitstore.export import export_checkpoint

                path = export_checkpoint(Path(source), None, tolerance, weights_sha=sha, task=task).onnx_path
            self.session = make_session(path, provider, threads)
        self.ckpt, self.spec, self.exit_after, self.done = ckpt, spec, exit_after, 0
        self.splits: dict[str, SplitData] = {}

    def provider(self) -> str:
        return self.session.provider

    def run(self, split: str, indices: list[int]) -> list[tuple[int, float]]:
        """Compute, write and record blocks ``indices`` of ``split``; (rows, error) of each."""
        if split not in self.splits:
            self.splits = {split: self.store.read_split(split)}  # one split at a time in memory
        out = []
        for index in indices:
            out.append(write_block(self.store, self.ckpt, self.splits[split], self.session, self.spec, index))
            self.done += 1
            if self.exit_after is not None and self.done >= self.exit_after:
                os._exit(1)  # test hook: a worker lost after writing its block, before the driver hears of it
        return out


def units(todo: list[int], data: SplitData, spec: BlockSpec, row_layout: bool) -> list[list[list[int]]]:
    """The blocks ``todo`` as phases of units (lists of consecutive blocks, one actor each):
    one phase of single blocks for the row layout; for the token layouts, units of at least
    TOKEN_LOGIT_CHUNK tokens, the even ones then the odd ones (no chunk is written by two units
    of one phase: a unit between them holds a whole chunk's worth of tokens)."""
    if row_layout:
        return [[[i] for i in todo]]
    grouped: list[list[int]] = [[]]
    for i in range(count(len(data), spec)):
        grouped[-1].append(i)
        first = int(data.offsets[grouped[-1][0] * spec.chunk_rows])
        if int(data.offsets[min((i + 1) * spec.chunk_rows, len(data))]) - first >= TOKEN_LOGIT_CHUNK:
            grouped.append([])
    wanted = set(todo)
    kept = [[i for i in u if i in wanted] for u in grouped]
    return [[u for u in kept[0::2] if u], [u for u in kept[1::2] if u]]


class ActorPool:
    """The actors of one checkpoint (a context manager: they are ended on exit)."""

    def __init__(self, store: Any, ck: Any, onnx_path: Path | str | None, cfg: Any, spec: BlockSpec) -> None:
        self.ray = _ray()
        self.store, self.ckpt, self.spec = store, ck.name, spec
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if cfg.provider != "cpu" else 0
        n = cfg.actors or gpus or int(resources.get("CPU", 1))
        threads = cfg.threads if gpus else (cfg.threads or 1)
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": threads}
        need = n * (1 if gpus else threads)
        have = gpus or int(resources.get("CPU", 0))
        if need > have:
            raise ClusterError(f"{n} actors need {need} {'GPU' if gpus else 'CPU'}s but the Ray cluster has {have}; "
                               "pass fewer --actors (or --threads), or add nodes")
        exit_after = int(os.environ[EXIT_AFTER_ENV]) if os.environ.get(EXIT_AFTER_ENV) else None
        export = (str(ck.path), cfg.parity_tolerance, store.checkpoint(ck.name).weights_sha256)
        remote = self.ray.remote(BlockWorker).options(max_restarts=0, **options)
        graph = None if onnx_path is None else str(onnx_path)  # None: --runtime torch
        self.actors = [remote.remote(str(store.path), ck.name, graph, export, cfg.provider, threads, spec,
                                     exit_after) for _ in range(n)]
        self._check_provider(store.checkpoint(ck.name).provider)

    def _check_provider(self, driver: str) -> None:
        try:
            used = set(self.ray.get([a.provider.remote() for a in self.actors], timeout=START_TIMEOUT))
        except self.ray.exceptions.GetTimeoutError:
            raise ClusterError(f"the Ray actors did not start within {START_TIMEOUT:.0f} s (is the cluster short of "
                               "the CPUs/GPUs asked for?); pass fewer --actors or add nodes") from None
        except self.ray.exceptions.RayError as exc:
            raise _reason(exc, "starting the Ray actors") from None
        if used != {driver}:  # (--runtime torch: "torch" on both)
            raise ClusterError(f"the Ray actors run ONNX Runtime on {', '.join(sorted(used))} but this driver on "
                               f"{driver} (where parity was checked); run the build on a node like the workers, "
                               "or pass --provider")

    def __enter__(self) -> "ActorPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        for a in self.actors:
            self.ray.kill(a)

    def fill_split(self, data: SplitData) -> None:
        """Build one split's entry on the actors: its missing blocks, one progress bar."""
        from logitstore.progress import Progress, console

        if prepare(self.store, self.ckpt, data, self.spec).complete:
            return
        tally = Tally(self.store, self.ckpt, data.name, len(data), self.spec)
        console.print(f"{self.ckpt} / {data.name}: {len(tally.todo)} of {tally.total_blocks} blocks to compute on "
                      f"{len(self.actors)} Ray actor{'s' * (len(self.actors) != 1)}")
        with Progress() as bar:
            shown = bar.add_task(f"{self.ckpt} / {data.name}", total=len(data), completed=tally.rows,
                                 resumed_from=tally.rows)
            for phase in units(tally.todo, data, self.spec, self.store.meta.layout == "row"):
                self._run(phase, data.name, tally, lambda n: bar.advance(shown, n))
        tally.finish()

    def _run(self, queue: list[list[int]], split: str, tally: Tally, advance: Any) -> None:
        """Keep every actor busy with one unit until ``queue`` is done; note each block."""
        queue, idle, running = list(queue), list(self.actors), {}
        while queue or running:
            while queue and idle:
                actor = idle.pop()
                running[actor.run.remote(split, queue.pop(0))] = actor
            ready, _ = self.ray.wait(list(running), num_returns=1)
            for ref in ready:
                idle.append(running.pop(ref))
                try:
                    done = self.ray.get(ref)
                except self.ray.exceptions.RayError as exc:
                    raise _reason(exc, f"writing blocks of {self.ckpt}/{split}") from None
                for rows, err in done:
                    tally.note(rows, err)
                    advance(rows)


def _reason(exc: Exception, doing: str) -> LogitStoreError:
    """The error of a failed actor call: the build's own error when the actor raised one,
    else a ClusterError saying that a rerun computes only the missing blocks."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, LogitStoreError):
        return cause
    what = str(cause or exc).strip().splitlines()
    return ClusterError(f"a Ray actor failed while {doing} ({type(exc).__name__}: {what[-1] if what else ''}); "
                        "rerun the same command: the blocks already recorded are kept, only the missing ones are "
                        "computed")
