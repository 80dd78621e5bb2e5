"""Build blocks: the unit a build computes, writes, records and resumes (format 4).

A checkpoint's entry for a split is written in blocks of ``chunk_rows`` rows. Block ``i``
(rows ``[i * chunk_rows, (i + 1) * chunk_rows)``) is computed by :func:`write_block`, which
writes the block's arrays and then its record (writer.StoreWriter.write_entry_block), so a
block is done exactly when its record is there, whatever order blocks finish in. The single
process build (:func:`fill_split`), the Ray build (logitstore/ray_build.py) and repair
(logitstore/repair.py) all write blocks through :func:`write_block`, and all decide what is
left from the records (:func:`missing`); the driver alone updates an entry's metadata
(:func:`note`, :func:`finish`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from logitstore.errors import StoreCorruptError, TeacherOutputError
from logitstore.store import SplitData
from logitstore.tasks import get_task


@dataclass(frozen=True)
class BlockSpec:
    """How an entry's blocks are computed and stored: ``chunk_rows`` rows per block (and per
    chunk of the row layout), ``token_budget`` padded tokens per inference batch, the dense
    ``encoding`` (fp16, fp32, int8; tasks with their own layout ignore it)."""

    chunk_rows: int
    token_budget: int
    encoding: str


def block_rows(index: int, rows: int, spec: BlockSpec) -> np.ndarray:
    """The row numbers of block ``index`` of a split of ``rows`` rows."""
    return np.arange(index * spec.chunk_rows, min((index + 1) * spec.chunk_rows, rows))


def count(rows: int, spec: BlockSpec) -> int:
    return -(-rows // spec.chunk_rows)


def prepare(store: Any, ckpt: str, data: SplitData, spec: BlockSpec) -> Any:
    """Create the entry of ``ckpt`` for split ``data`` (or keep a matching one to resume):
    its arrays and block records. Returns its LogitsMeta."""
    task = get_task(store.meta.task).for_store(store.meta)
    meta = task.prepare_entry(store, ckpt, data, spec)
    if meta is not None:  # a task with its own entry layout (causal-LM top-k or sampled)
        return meta
    per_token = store.meta.layout == "token"
    return store.prepare_logits(ckpt, data.name, len(data), store.meta.num_labels, spec.encoding, spec.chunk_rows,
                                tokens=int(data.offsets[-1]) if per_token else None)


def missing(store: Any, ckpt: str, split: str) -> list[int]:
    """The blocks of an entry that have no record yet (to compute), in order."""
    return [int(i) for i in np.flatnonzero(~np.isfinite(store.recorded_blocks(ckpt, split)))]


def write_block(store: Any, ckpt: str, data: SplitData, session: Any, spec: BlockSpec, index: int,
                on_rows: Callable[[int], None] | None = None) -> tuple[int, float]:
    """Compute block ``index`` of split ``data`` with ``session`` (an ONNX Runtime session, or
    a torch_runtime.TorchSession for ``--runtime torch``), write it and then its record. Returns (its rows, its largest encoding error). ``on_rows(n)`` after each
    inference batch of n rows. Raises TeacherOutputError for NaN or inf logits."""
    task = get_task(store.meta.task).for_store(store.meta)
    rows = block_rows(index, len(data), spec)
    err = task.write_block(store, ckpt, data, session, spec, index, rows, on_rows)
    if err is not None:  # a task with its own entry layout wrote it
        return len(rows), err
    from logitstore.encode import encode
    from logitstore.infer import infer_rows

    per_token = store.meta.layout == "token"
    logits = infer_rows(session, data.input_ids, data.offsets, data.token_type_ids, rows, store.meta.pad_token_id,
                        spec.token_budget, on_rows, per_token=per_token)  # (rows, C), or (their tokens, C)
    finite = np.isfinite(logits).all(axis=1)
    if not finite.all():
        where = int(np.argmin(finite))
        start = int(rows[0])
        bad = int(rows[np.searchsorted(data.offsets[rows + 1] - data.offsets[start], where, side="right")]
                  if per_token else rows[where])
        raise TeacherOutputError(
            f"checkpoint {ckpt} gave NaN or inf logits on split {data.name!r}, example id "
            f"{int(data.example_ids[bad])}; check its weights (a diverged step?) and leave it out"
        )
    first = int(data.offsets[rows[0]]) if per_token else int(rows[0])
    enc = encode(logits, spec.encoding)
    store.write_logits_block(ckpt, data.name, first, enc, index)
    return len(rows), float(np.float32(enc.max_abs_err))


class Tally:
    """The driver's view of one entry's progress: rows of recorded blocks and the largest
    error so far, written to the entry's metadata after each block (a count for displays;
    resume reads the records)."""

    def __init__(self, store: Any, ckpt: str, split: str, rows: int, spec: BlockSpec) -> None:
        self.store, self.ckpt, self.split = store, ckpt, split
        recorded = store.recorded_blocks(ckpt, split)
        done = np.isfinite(recorded)
        self.todo = [int(i) for i in np.flatnonzero(~done)]
        self.rows = rows - sum(len(block_rows(i, rows, spec)) for i in self.todo)
        self.err = float(recorded[done].max(initial=0.0))
        self.total_blocks = len(recorded)

    def note(self, rows: int, err: float) -> None:
        self.rows += rows
        self.err = max(self.err, err)
        self.store.note_blocks(self.ckpt, self.split, self.rows, self.err)

    def finish(self) -> None:
        """Mark the entry complete (every block must be recorded: the caller ran them all)."""
        if not self.store.finish_entry(self.ckpt, self.split):
            left = len(missing(self.store, self.ckpt, self.split))
            raise StoreCorruptError(f"entry {self.ckpt}/{self.split} of store {self.store.path} still misses {left} "
                                    "block record(s) after the build ran them; rerun the same command to compute them")


def fill_split(store: Any, ckpt: str, data: SplitData, session: Any, spec: BlockSpec) -> None:
    """Single-process build of one entry: prepare it, then compute, write and record each
    block that has no record yet, in order, with one progress bar."""
    from logitstore.progress import Progress, console

    meta = prepare(store, ckpt, data, spec)
    if meta.complete:
        return
    tally = Tally(store, ckpt, data.name, len(data), spec)
    if len(tally.todo) < tally.total_blocks:
        console.print(f"{ckpt} / {data.name}: {len(tally.todo)} of {tally.total_blocks} blocks to compute")
    with Progress() as bar:
        shown = bar.add_task(f"{ckpt} / {data.name}", total=len(data), completed=tally.rows, resumed_from=tally.rows)
        for index in tally.todo:
            tally.note(*write_block(store, ckpt, data, session, spec, index, lambda n: bar.advance(shown, n)))
    tally.finish()
