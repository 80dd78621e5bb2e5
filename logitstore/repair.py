"""The build's side of a repair: rewrite exactly what logitstore/verify.py found damaged.

A rerun of ``logitstore build`` on an existing store, before it skips anything as complete:

1. :func:`drop_unreadable` removes split and checkpoint entries whose own metadata cannot
   be read (listing the store would fail on them), when this build will write them again:
   a split only when the build's data is the store's (same dataset fingerprint, tokenizer,
   labels), a checkpoint only when it is one of the build's ``--teacher`` checkpoints.
2. :func:`find_damage` runs the full check (verify.repair_plan) over the splits and the
   build's checkpoints; the build rewrites each damaged split from its tokenized data.
3. :func:`repair_checkpoint` recomputes, for a complete checkpoint, exactly the damaged
   blocks (a block = the ``chunk_rows`` rows a build writes at once, so the bytes equal an
   undamaged build's with the same options) and rebuilds whole the logits entries whose
   metadata or shape is damaged. The entry stays complete; readers see the damaged chunk
   (an error) until its block is written again, never a half-written one.

Blocks are written through logitstore/blocks.py, as the build writes them.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from logitstore.blocks import BlockSpec, count, prepare, write_block
from logitstore.errors import LogitStoreError, ProviderError, StoreCorruptError, TeacherOutputError
from logitstore.format import CheckpointMeta, LogitsMeta, SplitMeta, StoreMeta
from logitstore.progress import console
from logitstore.tasks import get_task
from logitstore.verify import Report, _array, _group_meta, _sync, children, node_unreadable, raw_store, scan

_GROUP_JSON = json.dumps({"attributes": {}, "zarr_format": 3, "node_type": "group"}, indent=2)


# ---------------------------------------------------------------------------- repair plan
@dataclass(frozen=True)
class RepairPlan:
    """What a rerun of the build rewrites: ``splits`` whole (from the build's tokenized
    data); per checkpoint, ``entries`` (splits whose logits entry is rebuilt whole) and
    ``blocks`` (split -> [start, stop) row ranges of the damaged build blocks)."""

    splits: frozenset[str] = frozenset()
    entries: dict[str, frozenset[str]] = field(default_factory=dict)
    blocks: dict[str, dict[str, list[tuple[int, int]]]] = field(default_factory=dict)
    report: Report | None = None

    def touches(self, checkpoint: str) -> bool:
        return bool(self.entries.get(checkpoint) or self.blocks.get(checkpoint))

    def __bool__(self) -> bool:
        return bool(self.splits) or any(self.touches(c) for c in {*self.entries, *self.blocks})


def block_ranges(span: tuple[int, int], block_rows: int, rows: int, offsets: np.ndarray | None) -> list[tuple[int, int]]:
    """The build blocks (row ranges of ``block_rows`` rows) that write the first-axis
    ``span`` of a logits array: the span itself in rows for the row layout; for the token
    layout (``offsets`` given) every block holding a token of the span."""
    if offsets is None:
        first, last = span
    else:
        first = int(np.searchsorted(offsets, span[0], side="right")) - 1
        last = int(np.searchsorted(offsets, span[1], side="left"))
    start = (first // block_rows) * block_rows
    return [(s, min(s + block_rows, rows)) for s in range(start, min(last, rows), block_rows)]


def repair_plan(path: str | os.PathLike[str], offsets: dict[str, np.ndarray],
                checkpoints: Iterable[str] | None = None) -> RepairPlan:
    """Full scan of the store at ``path`` (the given ``checkpoints`` only) turned into what a
    build rewrites; ``offsets`` are the row offsets of each split the build has in RAM (the
    token layout maps damaged token chunks to the row blocks that wrote them)."""
    report = scan(path, read=True, checkpoints=checkpoints)
    raw = raw_store(path)
    token_layout = report.layout != "row"  # token logits, or a causal-LM entry (per token, in row blocks)
    splits = frozenset(e.name for e in report.damaged if e.kind == "split")
    entries: dict[str, set[str]] = {}
    blocks: dict[str, dict[str, set[tuple[int, int]]]] = {}
    for e in report.damaged:
        if e.kind != "checkpoint":
            continue
        for d in e.damage:
            parts = d.node.split("/")  # checkpoints/<ck>[/<split>[/<array>]]
            if len(parts) < 3:
                continue  # the checkpoint's own metadata: logitstore/repair.py rebuilds it whole
            split = parts[2]
            if d.chunk is None or split not in offsets:
                entries.setdefault(e.name, set()).add(split)
                continue
            meta = LogitsMeta.from_dict(_group_meta(raw, f"checkpoints/{e.name}/{split}"))
            if parts[-1] == "blocks":  # a block's record (format 4): chunk i is build block i
                per = int(meta.block_rows or _array(raw, f"checkpoints/{e.name}/{split}/logits").chunks[0])
                start = d.chunk * per
                blocks.setdefault(e.name, {}).setdefault(split, set()).add((start, min(start + per, meta.rows)))
                continue
            arr = _array(raw, d.node)
            block = int(meta.block_rows) if token_layout and meta.block_rows else int(arr.chunks[0])
            assert d.span is not None
            for r in block_ranges(d.span, block, meta.rows, offsets[split] if token_layout else None):
                blocks.setdefault(e.name, {}).setdefault(split, set()).add(r)
    return RepairPlan(
        splits, {c: frozenset(s) for c, s in entries.items()},
        {c: {s: sorted(r) for s, r in per.items() if s not in entries.get(c, set())} for c, per in blocks.items()},
        report)



def _same_data(old: StoreMeta, new: StoreMeta) -> bool:
    """True when a build of ``new`` writes exactly what the store of ``old`` was built from."""
    keys = ("task", "dataset_fingerprint", "tokenizer_fingerprint", "label_names", "validation_split", "stride")
    return all(getattr(old, k) == getattr(new, k) for k in keys)


def drop_unreadable(path: Path | str, meta: StoreMeta, checkpoints: Iterable[str]) -> list[str]:
    """Remove the entries of the store at ``path`` whose metadata is unreadable and that this
    build (data ``meta``, ``checkpoints``) writes again; returns what was removed. Raises
    StoreCorruptError naming an unreadable entry this build cannot write again."""
    from zarr.core.buffer import default_buffer_prototype

    from logitstore.storage import holds_store
    from logitstore.store import open_store

    if not holds_store(path):
        return []
    try:
        old = open_store(path).meta
    except LogitStoreError:
        return []  # opening the store reports an unreadable root
    raw = raw_store(path, writable=True)
    same = _same_data(old, meta)
    names = set(checkpoints)
    dropped: list[str] = []
    for group in ("splits", "checkpoints"):
        if node_unreadable(raw, group) and same:  # no attributes of its own: write it again
            # atomic: zarr's LocalStore writes a temporary file and renames it; an object PUT is whole
            _sync(raw.set(f"{group}/zarr.json", default_buffer_prototype().buffer.from_bytes(_GROUP_JSON.encode())))
            dropped.append(f"{group} (group metadata rewritten)")
    entries = (("split", "splits", lambda n: same, SplitMeta.from_dict),
               ("checkpoint", "checkpoints", lambda n: n in names, CheckpointMeta.from_dict))
    for kind, group, ok, parse in entries:
        if node_unreadable(raw, group):
            raise StoreCorruptError(f"the {group} group of store {path} is unreadable and this build's data is not "
                                    "the store's; rerun with the data the store was built from, or build a new --out")
        for n in children(raw, group):
            why = node_unreadable(raw, f"{group}/{n}", parse)
            if not why:
                continue
            if not (ok(n) and same):
                fix = (f"rerun the build with that checkpoint among --teacher to rebuild it" if kind == "checkpoint"
                       else "rerun with the data the store was built from to rewrite it")
                raise StoreCorruptError(f"{kind} {n!r} of store {path} is damaged ({why}); {fix}, or build into a "
                                        "new --out")
            _sync(raw.delete_dir(f"{group}/{n}"))
            dropped.append(f"{kind} {n}")
    for d in dropped:
        console.print(f"[yellow]repair[/]: {d} had unreadable metadata: written again by this build")
    return dropped


def find_damage(store: Any, splits: dict[str, Any], checkpoints: Iterable[str]) -> RepairPlan:
    """Full check of the splits and the given checkpoints of an existing ``store``; prints
    what is damaged and returns what the build rewrites."""
    plan = repair_plan(store.path, {n: d.offsets for n, d in splits.items()}, checkpoints)
    assert plan.report is not None
    for e in plan.report.damaged:
        if e.kind in ("split", "checkpoint"):
            what = f"{len(e.damage)} damaged part{'s' * (len(e.damage) != 1)}, first: {e.damage[0]}"
            console.print(f"[yellow]repair[/]: {e.kind} {e.name}: {what}")
    return plan


def _teacher(ck: Any, meta: CheckpointMeta, cfg: Any, task: Any) -> Any:
    """The runtime that computed the entry (its metadata's ``runtime``): its ONNX graph on
    the provider it ran on, or the model in PyTorch (``--runtime torch``)."""
    if meta.runtime == "torch":
        from logitstore.torch_runtime import torch_session

        return torch_session(ck.path, task, cfg.threads)
    from logitstore.export import export_checkpoint

    exp = export_checkpoint(ck.path, None, cfg.parity_tolerance, weights_sha=meta.weights_sha256, task=task)
    return _session(exp.onnx_path, meta.provider, cfg)


def _session(onnx_path: Path, recorded: str, cfg: Any) -> Any:
    """A session on the provider that computed the entry (when --provider is auto), so the
    rewritten blocks match the rest; any working provider if that one is not here."""
    from logitstore.infer import make_session

    if cfg.provider == "auto" and recorded:
        try:
            return make_session(onnx_path, recorded.lower(), cfg.threads)
        except ProviderError:
            console.print(f"[yellow]repair[/]: provider {recorded} is not available here; the repaired blocks may "
                          "differ from the others within the parity tolerance")
    return make_session(onnx_path, cfg.provider, cfg.threads)


def repair_checkpoint(store: Any, ck: Any, meta: CheckpointMeta, cfg: Any, splits: dict[str, Any],
                      plan: RepairPlan) -> int:
    """Rewrite the damaged blocks and entries ``plan`` lists for the complete checkpoint
    ``ck`` (store entry ``meta``); returns the number of blocks computed."""
    task = get_task(store.meta.task).for_store(store.meta)
    session = _teacher(ck, meta, cfg, task)
    raw = raw_store(store.path, writable=True)
    whole = plan.entries.get(ck.name, frozenset())
    spec = BlockSpec(cfg.chunk_rows, cfg.token_budget, meta.encoding)
    done = 0
    for split in sorted(whole):
        data = splits[split]
        _sync(raw.delete_dir(f"checkpoints/{ck.name}/{split}"))
        prepare(store, ck.name, data, spec)
        done += _write_blocks(store, ck.name, data, session, spec, list(range(count(len(data), spec))))
        store.finish_entry(ck.name, split)
    assert plan.report is not None
    damaged = next((e for e in plan.report.damaged if e.kind == "checkpoint" and e.name == ck.name), None)
    for split, ranges in sorted(plan.blocks.get(ck.name, {}).items()):
        # Drop the damaged chunks first: a block that covers a chunk only in part (token layout)
        # makes zarr read the chunk to update it, and a damaged one cannot be read.
        for d in damaged.damage if damaged else []:
            if d.chunk is not None and d.node.split("/")[2] == split:
                _delete_chunk(raw, store, d.node, d.chunk)
        # Every layout (dense rows or tokens, causal-LM top-k or sampled) rewrites the same blocks
        # as the build wrote them, through blocks.write_block (each row's draws seeded by the row).
        entry = replace(spec, chunk_rows=store.logits_chunk_rows(ck.name, split))  # the blocks it was built in
        indices = [start // entry.chunk_rows for start, _ in ranges]
        done += _write_blocks(store, ck.name, splits[split], session, entry, indices)
    if whole or plan.blocks.get(ck.name):  # the scores come from these logits
        from logitstore.scoring import scored

        store.put_checkpoint(scored(store, meta, splits))
    console.print(f"checkpoint [bold]{ck.name}[/]: repaired {done} block{'s' * (done != 1)}"
                  + (f" ({', '.join(sorted(whole))} rebuilt whole)" if whole else ""))
    return done


def _delete_chunk(raw: Any, store: Any, node: str, chunk: int) -> None:
    from itertools import product

    from logitstore.verify import _array

    arr = _array(raw, node)
    for rest in product(*(range(n) for n in arr.cdata_shape[1:])):
        _sync(raw.delete(f"{node}/{arr.metadata.encode_chunk_key((chunk, *rest))}"))


def _write_blocks(store: Any, ckpt: str, data: Any, session: Any, spec: BlockSpec, indices: list[int]) -> int:
    """Compute and write the build blocks ``indices`` of one split, as the build writes them
    (logitstore/blocks.py); a complete entry's metadata stays as it is."""
    try:
        for index in indices:
            write_block(store, ckpt, data, session, spec, index)
    except TeacherOutputError as exc:
        raise TeacherOutputError(f"{exc} (while repairing the store)") from exc
    return len(indices)
