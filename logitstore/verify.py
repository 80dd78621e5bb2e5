"""Find damage in a logit store, and what a rerun of the build must rewrite to repair it.

Two depths (docs/store-format.md, "Locks, verify and repair"):

- **structural** (``scan(path, read=False)``; ``logitstore info`` uses it): every node's
  metadata is readable and agrees with the store's (array shapes against SplitMeta rows and
  tokens, LogitsMeta rows, CheckpointMeta labels and encoding), and every chunk file of
  every complete entry is there and non-empty. No chunk is read.
- **full** (``scan(path)``; ``logitstore verify`` and a rerun of ``logitstore build``):
  also reads every chunk, so its CRC32C checksum catches flipped or truncated bytes, and
  checks that no value is the array's fill value where that value is not a legal one (NaN
  in float logits, negative fills in the integer arrays of splits).

Incomplete entries are not checked: a build resumes them anyway. :func:`repair_plan` turns
a full scan into what a build rewrites: whole splits (from its tokenized data), whole logits
entries (metadata or shape damage) and single blocks of rows (a damaged chunk).
This module only reads; the build's side of a repair is logitstore/repair.py.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np

from logitstore.errors import LogitStoreError, StoreCorruptError
from logitstore.format import CheckpointMeta, LogitsMeta, SplitMeta, StoreMeta

ATTR = "logitstore"


@dataclass(frozen=True)
class Damage:
    """One damaged thing: a node's metadata (``chunk`` None) or one chunk of an array.

    ``node`` is the store path ("splits/train", "checkpoints/ck/train/logits");
    ``span`` the [start, stop) range of the array's first axis (rows or tokens) the chunk holds."""

    node: str
    problem: str
    chunk: int | None = None
    span: tuple[int, int] | None = None

    def __str__(self) -> str:
        if self.chunk is None:
            return f"{self.node}: {self.problem}"
        return f"{self.node} chunk {self.chunk} ({self.span[0]:,}-{self.span[1]:,}): {self.problem}"  # type: ignore[index]


@dataclass
class Entry:
    """What a scan found about one entry: ``kind`` "root", "tokenizer", "split" or
    "checkpoint"; ``status`` "complete", "incomplete" or "damaged"."""

    kind: str
    name: str
    status: str
    damage: list[Damage] = field(default_factory=list)
    meta: Any = None  # SplitMeta / CheckpointMeta when readable


@dataclass
class Report:
    path: str
    entries: list[Entry]
    read: bool  # True for a full scan (every chunk read)
    layout: str = "row"  # the store's logits layout ("row" or "token")

    @property
    def damaged(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "damaged"]

    @property
    def clean(self) -> bool:
        return not self.damaged

    def entry(self, kind: str, name: str) -> Entry | None:
        return next((e for e in self.entries if e.kind == kind and e.name == name), None)


# ---------------------------------------------------------------------------- raw access
def raw_store(path: str | os.PathLike[str], writable: bool = False) -> Any:
    """The zarr store under ``path`` (local folder or fsspec URL), without opening a group,
    so damaged metadata can be listed and reported."""
    from logitstore.storage import zarr_store

    return zarr_store(path, writable)


def _sync(coro: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coro)


async def _list_dir(raw: Any, prefix: str) -> list[str]:
    return [k async for k in raw.list_dir(prefix)]


def children(raw: Any, node: str) -> list[str]:
    """Names of the sub-folders of ``node`` (its child nodes, readable or not)."""
    names = _sync(_list_dir(raw, node))
    out = []
    for n in sorted(names):
        if n == "zarr.json" or n.startswith("."):
            continue
        if _sync(_list_dir(raw, f"{node}/{n}")):  # a folder (a plain file has no children)
            out.append(n)
    return out


def _size(raw: Any, key: str) -> int | None:
    try:
        return int(_sync(raw.getsize(key)))
    except (FileNotFoundError, KeyError):
        return None


def _group_meta(raw: Any, node: str) -> Any:
    import zarr

    return zarr.open_group(store=raw, path=node, mode="r").attrs.get(ATTR)


def _array(raw: Any, node: str) -> Any:
    import zarr

    return zarr.open_array(store=raw, path=node, mode="r")


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def node_unreadable(raw: Any, node: str, parse: Any = None) -> str | None:
    """Why the group metadata of ``node`` cannot be read (None when it can); ``parse``
    (e.g. SplitMeta.from_dict) must accept its attributes too when given."""
    if _size(raw, f"{node}/zarr.json") is None:
        return "metadata missing (no zarr.json)"
    try:
        attrs = _group_meta(raw, node)
        if parse is not None:
            parse(attrs)
    except Exception as exc:  # noqa: BLE001 - JSON, zarr and value errors alike mean damaged
        return f"metadata unreadable ({_why(exc)})"
    return None


# ---------------------------------------------------------------------------- chunks
def _illegal_fill(arr: Any) -> Any:
    """A test for values that can only be a missing chunk's fill value, or None."""
    fill = arr.fill_value
    if np.issubdtype(arr.dtype, np.floating):
        return lambda v: bool(np.isnan(v).any())
    if np.issubdtype(arr.dtype, np.signedinteger) and fill is not None and int(fill) < 0:
        return lambda v: bool((v == fill).any())
    return None  # uint8 bytes, int8 logits: the fill value is a legal value


def check_chunks(raw: Any, node: str, arr: Any, read: bool, absent_ok: Any = None) -> list[Damage]:
    """Damage of the chunks of the array at ``node``: missing or empty chunk files, and
    (``read``) chunks that fail to decode or hold the fill value. ``absent_ok(span)`` says
    when a missing chunk is legal (an int8 chunk of zeros, which zarr does not write)."""
    out: list[Damage] = []
    if arr.size == 0:
        return out
    c0, n0 = arr.chunks[0], arr.cdata_shape[0]
    rest = list(product(*(range(n) for n in arr.cdata_shape[1:])))
    bad_value = _illegal_fill(arr) if read else None
    for i in range(n0):
        span = (i * c0, min((i + 1) * c0, arr.shape[0]))
        sizes = [_size(raw, f"{node}/{arr.metadata.encode_chunk_key((i, *r))}") for r in rest]
        if any(s is None for s in sizes):
            if absent_ok is None or not absent_ok(span):
                out.append(Damage(node, "chunk missing", i, span))
            continue
        if any(s == 0 for s in sizes):
            out.append(Damage(node, "chunk file empty", i, span))
            continue
        if read:
            try:
                values = arr[span[0]:span[1]]
            except Exception as exc:  # noqa: BLE001 - checksum, codec and truncation errors
                why = "checksum mismatch" if "checksum" in str(exc).lower() else f"codec error ({_why(exc)})"
                out.append(Damage(node, f"chunk unreadable: {why}", i, span))
                continue
            if bad_value is not None and bad_value(values):
                out.append(Damage(node, "chunk holds the fill value (lost data)", i, span))
    return out


# ---------------------------------------------------------------------------- entries
def _split_arrays(task: str, meta: SplitMeta) -> dict[str, int | None]:
    """Arrays a complete split must hold, with the first-axis length each must have
    (None: checked through other arrays, the QA texts)."""
    from logitstore.tasks import get_task

    spec = get_task(task)
    length = {"rows": meta.rows, "tokens": meta.tokens, None: None}
    out: dict[str, int | None] = {"input_ids": meta.tokens, "offsets": meta.rows + 1, "example_id": meta.rows,
                                  "labels": meta.tokens if spec.token_labels else meta.rows}
    return out | {key: length[axis] for key, axis in spec.extra_split_arrays.items()}


def _entry_meta(raw: Any, kind: str, name: str, node: str, cls: Any) -> Any:
    """The metadata of a split or checkpoint entry, or the Entry that says why it cannot be
    scanned further (damaged metadata, or incomplete)."""
    why = node_unreadable(raw, node)
    if why:
        return Entry(kind, name, "damaged", [Damage(node, why)])
    try:
        meta = cls.from_dict(_group_meta(raw, node))
    except LogitStoreError as exc:
        return Entry(kind, name, "damaged", [Damage(node, f"metadata unreadable ({exc})")])
    return meta if meta.complete else Entry(kind, name, "incomplete", meta=meta)


def _scan_split(raw: Any, name: str, task: str, read: bool) -> Entry:
    node = f"splits/{name}"
    meta = _entry_meta(raw, "split", name, node, SplitMeta)
    if isinstance(meta, Entry):
        return meta
    damage: list[Damage] = []
    expected = _split_arrays(task, meta)
    present = children(raw, node)
    for key in sorted(set(expected) | set(present)):
        anode = f"{node}/{key}"
        if key not in present:
            if key != "token_type_ids":  # only written for text pairs (always for QA, listed above)
                damage.append(Damage(anode, "array missing"))
            continue
        try:
            arr = _array(raw, anode)
        except Exception as exc:  # noqa: BLE001
            damage.append(Damage(anode, f"array metadata unreadable ({_why(exc)})"))
            continue
        length = expected.get(key)
        if length is not None and arr.shape[0] != length:
            damage.append(Damage(anode, f"shape {tuple(arr.shape)} disagrees with the split's metadata "
                                        f"({meta.rows:,} rows, {meta.tokens:,} tokens)"))
            continue
        found = check_chunks(raw, anode, arr, read)
        damage += found
        if read and key == "offsets" and not found:
            offsets = arr[:]
            if offsets[0] != 0 or offsets[-1] != meta.tokens or bool((np.diff(offsets) <= 0).any()):
                damage.append(Damage(anode, "row offsets do not add up to the split's tokens"))
    return Entry("split", name, "damaged" if damage else "complete", damage, meta)


def _scan_checkpoint(raw: Any, name: str, store_meta: StoreMeta, splits: dict[str, SplitMeta | None],
                     read: bool) -> Entry:
    node = f"checkpoints/{name}"
    meta = _entry_meta(raw, "checkpoint", name, node, CheckpointMeta)
    if isinstance(meta, Entry):
        return meta
    damage: list[Damage] = []
    if meta.num_labels != store_meta.num_labels:
        damage.append(Damage(node, f"{meta.num_labels} labels in its metadata, {store_meta.num_labels} in the store's"))
    for split, smeta in sorted(splits.items()):
        if smeta is not None:
            damage += _scan_logits(raw, f"{node}/{split}", meta, store_meta, smeta, read)
    return Entry("checkpoint", name, "damaged" if damage else "complete", damage, meta)


def _scan_logits(raw: Any, node: str, ck: CheckpointMeta, store_meta: StoreMeta, split: SplitMeta,
                 read: bool) -> list[Damage]:
    """Damage of one logits entry of a complete checkpoint. Metadata, shape or dtype
    problems are reported on the entry node itself (chunk None): it is rebuilt whole."""
    why = node_unreadable(raw, node)
    if why:
        return [Damage(node, "logits entry missing" if "no zarr.json" in why and not children(raw, node) else why)]
    try:
        meta = LogitsMeta.from_dict(_group_meta(raw, node))
    except LogitStoreError as exc:
        return [Damage(node, f"metadata unreadable ({exc})")]
    if not meta.complete or meta.rows != split.rows:
        return [Damage(node, f"entry of {meta.rows:,} rows, {meta.rows_done:,} done, in a complete checkpoint "
                             f"(split has {split.rows:,} rows)")]
    from logitstore.tasks import get_task

    records = _scan_records(raw, node, read)  # format 4: a damaged record recomputes its block
    spec = get_task(store_meta.task).entry_arrays(store_meta, split.name, split.tokens)
    if spec is not None:  # a task with its own entry layout (causal-LM top-k or sampled)
        return records + _scan_entry(raw, node, spec, read)
    length = split.tokens if store_meta.layout == "token" else split.rows
    arrays = {"logits": (length, store_meta.num_labels)} | ({"scale": (length,)} if ck.encoding == "int8" else {})
    opened = {}
    for key, shape in arrays.items():
        try:
            arr = _array(raw, f"{node}/{key}")
        except Exception as exc:  # noqa: BLE001
            return [Damage(node, f"{key} array missing or unreadable ({_why(exc)})")]
        if tuple(arr.shape) != shape:
            return [Damage(node, f"{key} shape {tuple(arr.shape)} disagrees with the metadata ({shape})")]
        opened[key] = arr
    from logitstore.encode import storage_dtype

    if opened["logits"].dtype != storage_dtype(ck.encoding):
        return [Damage(node, f"logits dtype {opened['logits'].dtype} is not the checkpoint's {ck.encoding}")]
    absent_ok = None
    if "scale" in opened:  # int8: a chunk of zeros is not written; it is legal when its rows' scales are 0
        scale = opened["scale"]

        def absent_ok(span: tuple[int, int]) -> bool:
            try:
                return bool((scale[span[0]:span[1]] == 0).all())
            except Exception:  # noqa: BLE001 - a damaged scale chunk is reported on its own
                return False
    damage = check_chunks(raw, f"{node}/logits", opened["logits"], read, absent_ok)
    if "scale" in opened:
        damage += check_chunks(raw, f"{node}/scale", opened["scale"], read)
    return records + damage


def _scan_records(raw: Any, node: str, read: bool) -> list[Damage]:
    """Damage of an entry's block records (``blocks``; entries built before format 4 have none)."""
    if "blocks" not in children(raw, node):
        return []
    try:
        return check_chunks(raw, f"{node}/blocks", _array(raw, f"{node}/blocks"), read)
    except Exception as exc:  # noqa: BLE001
        return [Damage(f"{node}/blocks", f"block records unreadable ({_why(exc)})")]


def _scan_entry(raw: Any, node: str, spec: dict[str, tuple[tuple[int, ...], str]], read: bool) -> list[Damage]:
    """Damage of an entry whose arrays (shape, dtype) the task names; any shape or dtype
    problem is reported on the entry itself (rebuilt whole)."""
    damage: list[Damage] = []
    for key, (shape, dtype) in spec.items():
        try:
            arr = _array(raw, f"{node}/{key}")
        except Exception as exc:  # noqa: BLE001
            return [Damage(node, f"{key} array missing or unreadable ({_why(exc)})")]
        if tuple(arr.shape) != shape or arr.dtype != np.dtype(dtype):
            return [Damage(node, f"{key} is {tuple(arr.shape)} {arr.dtype}, the metadata says {shape} {dtype}")]
        damage += check_chunks(raw, f"{node}/{key}", arr, read)
    return damage


def _scan_tokenizer(raw: Any, read: bool) -> Entry:
    damage: list[Damage] = []
    for key in children(raw, "tokenizer"):
        try:
            arr = _array(raw, f"tokenizer/{key}")
        except Exception as exc:  # noqa: BLE001
            damage.append(Damage(f"tokenizer/{key}", f"array metadata unreadable ({_why(exc)})"))
            continue
        damage += check_chunks(raw, f"tokenizer/{key}", arr, read)
    return Entry("tokenizer", "tokenizer", "damaged" if damage else "complete", damage)


def scan(path: str | os.PathLike[str], read: bool = True, checkpoints: Iterable[str] | None = None) -> Report:
    """Check the store at ``path``: structural only (``read=False``) or full. ``checkpoints``
    limits the checkpoint entries checked (default: all). Raises StoreCorruptError when
    ``path`` is not a logit store or its root metadata is unreadable (nothing else can be
    checked then)."""
    from logitstore.store import open_store

    store = open_store(path)  # the one-line errors for a missing, foreign or unreadable root
    raw = raw_store(path)
    smeta = store.meta
    entries: list[Entry] = []
    for group in ("splits", "checkpoints", "tokenizer"):
        why = node_unreadable(raw, group)
        if why:
            entries.append(Entry("root", group, "damaged", [Damage(group, why)]))
    splits = {n: _scan_split(raw, n, smeta.task, read) for n in children(raw, "splits")}
    entries += splits.values()
    complete = {n: e.meta for n, e in splits.items() if e.status != "incomplete"}
    wanted = None if checkpoints is None else set(checkpoints)
    for name in children(raw, "checkpoints"):
        if wanted is None or name in wanted:
            entries.append(_scan_checkpoint(raw, name, smeta, complete, read))
    entries.append(_scan_tokenizer(raw, read))
    return Report(str(path), entries, read, smeta.layout)


# ---------------------------------------------------------------------------- summaries
def damaged_names(path: str | os.PathLike[str]) -> dict[tuple[str, str], Entry]:
    """Structural check (no chunk read) for ``logitstore info``: (kind, name) -> damaged entry."""
    try:
        report = scan(path, read=False)
    except StoreCorruptError:
        return {}
    return {(e.kind, e.name): e for e in report.damaged}


def summary(e: Entry, limit: int = 3) -> str:
    """One cell of text: the first ``limit`` problems of an entry, and how many more."""
    parts = [str(d) for d in e.damage[:limit]]
    more = len(e.damage) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def print_report(report: Report, console: Any = None) -> None:
    """The verify table: one row per entry, with what is damaged."""
    import sys

    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 150)
    table = Table("entry", "status", "damage", title=f"verify {report.path} ({'every chunk read' if report.read else 'files only'})")
    for e in report.entries:
        label = e.name if e.kind in ("tokenizer", "root") else f"{e.kind} {e.name}"
        style = {"damaged": "[red]damaged[/]", "incomplete": "[yellow]incomplete[/]"}.get(e.status, "complete")
        table.add_row(label, style, summary(e, limit=6))
    console.print(table)
    if report.clean:
        console.print("no damage found")
    else:
        n, k = sum(len(e.damage) for e in report.damaged), len(report.damaged)
        console.print(f"[red]{k} damaged {'entry' if k == 1 else 'entries'} ({n} problem{'s' * (n != 1)})[/]: "
                      "rerun the same `logitstore build` command (same data and --teacher) to rewrite exactly "
                      "the damaged parts")
