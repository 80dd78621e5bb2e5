"""The logit store on disk, write side: what ``logitstore build`` writes, and nothing else uses.

:class:`StoreWriter` is a :class:`~logitstore.store.LogitStore` opened for writing: it
reads like one (the builder checks what a store already holds) and adds the writes, each
of which marks its node complete only after its arrays are written, so a killed build
leaves nothing that reads as whole. The layout is docs/store-format.md.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs

from logitstore import storage
from logitstore.encode import Encoded, storage_dtype
from logitstore.format import CheckpointMeta, LogitsMeta, SplitMeta, StoreMeta
from logitstore.errors import StoreCorruptError
from logitstore.store import ATTR, HELD_ATTR, TOKENIZER_FILES, LogitStore, SplitData

#: Rows per chunk of the per-row arrays of a split (offsets, labels, example_id...).
ROW_CHUNK = 65_536
#: Elements per chunk of the per-token arrays of a split (input_ids, token_type_ids...).
TOKEN_CHUNK = 1 << 20
#: Tokens per chunk of token-layout logits (65,536 x C values).
TOKEN_LOGIT_CHUNK = 1 << 16
#: The array of an entry's block records (format 4): (n_blocks,) float32, one chunk per block.
BLOCKS = "blocks"


def _compressors(typesize: int) -> list[Any]:
    # Byte shuffle + zstd inside blosc; crc32c after it, so flipped or truncated chunk
    # bytes fail loudly on read instead of decoding to garbage.
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=typesize),
            zarr.codecs.Crc32cCodec()]


def _split_arrays(data: SplitData) -> dict[str, tuple[np.ndarray, int]]:
    """The arrays of one split, each with its chunk length along the first axis."""
    arrays: dict[str, tuple[np.ndarray, int]] = {
        "input_ids": (data.input_ids.astype(np.int32), TOKEN_CHUNK),
        "offsets": (data.offsets.astype(np.int64), ROW_CHUNK),
        "labels": (data.labels.astype(np.int64), ROW_CHUNK),
        "example_id": (data.example_ids.astype(np.int64), ROW_CHUNK),
    }
    if data.token_type_ids is not None:
        arrays["token_type_ids"] = (data.token_type_ids.astype(np.int8), TOKEN_CHUNK)
    if data.window_of is not None:  # QA: windows, their character offsets and the texts to score
        assert data.offset_mapping is not None and data.contexts is not None and data.answers is not None
        arrays["offset_mapping"] = (data.offset_mapping.astype(np.int32), TOKEN_CHUNK)
        arrays["window_of"] = (data.window_of.astype(np.int64), ROW_CHUNK)
        flat = [a for answers in data.answers for a in answers]
        counts = np.fromiter(map(len, data.answers), dtype=np.int64, count=len(data.answers))
        arrays["answers_of"] = (np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), ROW_CHUNK)
        for prefix, texts in (("context", data.contexts), ("answer", flat)):
            raw = [t.encode("utf-8") for t in texts]
            lengths = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
            arrays[f"{prefix}_utf8"] = (np.frombuffer(b"".join(raw), dtype=np.uint8), TOKEN_CHUNK)
            arrays[f"{prefix}_offsets"] = (np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), ROW_CHUNK)
    return arrays


class StoreWriter(LogitStore):
    """A logit store opened for writing: :meth:`create` a new one, or :meth:`open` an
    existing one ("r+") to resume or extend it."""

    _MODE = "r+"

    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: StoreMeta) -> "StoreWriter":
        """Create a new empty store at ``path`` (which must not hold a store yet)."""
        path = str(storage.location(path))  # a folder or a URL (issue 13)
        root = zarr.open_group(storage.zarr_store(path, writable=True), mode="w-")
        root.attrs[ATTR] = meta.to_dict()
        root.require_group("splits")
        root.require_group("checkpoints")
        root.require_group("tokenizer")
        return cls(path, root, meta)

    # ------------------------------------------------------------------ splits
    def write_split(self, data: SplitData, content_sha256: str) -> SplitMeta:
        """Write one split (replacing an incomplete one) and mark it complete last."""
        g = self._root.require_group("splits").create_group(data.name, overwrite=True)
        meta = SplitMeta(data.name, len(data), int(data.offsets[-1]), content_sha256, complete=False,
                         truncated_rows=data.truncated_rows)
        g.attrs[ATTR] = meta.to_dict()
        for key, (values, chunk) in _split_arrays(data).items():
            # -1 marks a missing chunk; offset_mapping holds -1 itself, so its fill is -2.
            a = g.create_array(key, shape=values.shape, dtype=values.dtype, chunks=(chunk, *values.shape[1:]),
                               fill_value=-2 if key == "offset_mapping" else (0 if values.dtype == np.uint8 else -1),
                               compressors=_compressors(values.dtype.itemsize))
            if values.size:
                a[:] = values
        meta = replace(meta, complete=True)
        g.attrs[ATTR] = meta.to_dict()
        return meta

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "StoreWriter":
        """Open an existing store to resume or extend it; refuses a store holding links
        (a write through one could land outside the store)."""
        where = storage.location(path)
        if isinstance(where, Path):  # object storage (issue 13) has no links
            refuse_links(where)
        return super().open(path)

    # ------------------------------------------------------------------ tokenizer
    def write_tokenizer(self, folder: str | os.PathLike[str], files: list[str]) -> bool:
        """Copy tokenizer ``files`` (names inside ``folder``, from TOKENIZER_FILES) into the
        store as raw bytes, recording each one's size and sha256 last. A store whose
        tokenizer is already whole is left alone (a reader may be reading it); a damaged
        one is rewritten. Returns whether anything was written."""
        import hashlib

        try:
            if self.tokenizer_files() and self._root["tokenizer"].attrs.get(ATTR):
                return False
        except StoreCorruptError:
            pass  # damaged or half-written: write it again
        g = self._root.create_group("tokenizer", overwrite=True)  # drops any file that does not belong
        g.attrs[ATTR] = {"complete": False, "files": {}}
        record = {}
        for name in files:
            if name not in TOKENIZER_FILES:
                raise ValueError(f"{name!r} is not a tokenizer file name ({', '.join(TOKENIZER_FILES)})")
            data = (Path(folder) / name).read_bytes()
            raw = np.frombuffer(data, dtype=np.uint8)
            a = g.create_array(name, shape=raw.shape, dtype="uint8", chunks=(max(1, len(raw)),),
                               compressors=_compressors(1), overwrite=True)
            a[:] = raw
            record[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        g.attrs[ATTR] = {"complete": True, "files": record}
        return True

    # ------------------------------------------------------------------ checkpoints
    def put_checkpoint(self, meta: CheckpointMeta) -> None:
        """Create or update a checkpoint entry's metadata."""
        g = self._root.require_group("checkpoints").require_group(meta.name)
        g.attrs[ATTR] = meta.to_dict()
        held = self.checkpoints_held()
        if meta.complete and meta.name not in held:  # remembered, so a deleted entry is noticed
            self._root.attrs[HELD_ATTR] = sorted([*held, meta.name])

    # ------------------------------------------------------------------ logits
    def prepare_logits(self, checkpoint: str, split: str, rows: int, num_labels: int,
                       encoding: str, chunk_rows: int, tokens: int | None = None) -> LogitsMeta:
        """Create the logits arrays of one checkpoint and split, or return the progress of
        an existing matching one (resume). A mismatching partial entry is started over.

        ``tokens`` (the split's token count) makes a token-layout array (tokens, C), chunked
        by TOKEN_LOGIT_CHUNK tokens and written in blocks of ``chunk_rows`` rows; without it
        the array is (rows, C), chunked by ``chunk_rows`` rows."""
        length = rows if tokens is None else tokens
        chunk = chunk_rows if tokens is None else TOKEN_LOGIT_CHUNK
        dt = storage_dtype(encoding)
        arrays = {"logits": ((length, num_labels), dt, 0 if encoding == "int8" else float("nan"))}
        if encoding == "int8":  # a missing float chunk reads as NaN; int8 chunks are checked through scale
            arrays["scale"] = ((length,), np.dtype("float32"), float("nan"))
        return self._prepare(checkpoint, split, rows, chunk_rows, None if tokens is None else chunk_rows,
                             arrays, chunk)

    def prepare_entry(self, checkpoint: str, split: str, rows: int, block_rows: int,
                      arrays: dict[str, tuple[tuple[int, ...], str, Any]]) -> LogitsMeta:
        """Create the arrays of one checkpoint and split for a task with its own entry layout
        (causal-LM top-k), or return the progress of an existing matching entry (resume).
        ``arrays``: name -> (shape, dtype, fill value); chunked by TOKEN_LOGIT_CHUNK along the
        first axis (tokens), written in blocks of ``block_rows`` rows."""
        spec = {k: (shape, np.dtype(dt), fill) for k, (shape, dt, fill) in arrays.items()}
        return self._prepare(checkpoint, split, rows, block_rows, block_rows, spec, TOKEN_LOGIT_CHUNK)

    def _prepare(self, checkpoint: str, split: str, rows: int, block: int, block_rows: int | None,
                 arrays: dict[str, tuple[tuple[int, ...], np.dtype, Any]], chunk: int) -> LogitsMeta:
        """An entry's arrays (chunked by ``chunk`` along the first axis) and its block records
        (format 4): kept when they match (resume), else created anew."""
        g = self._root[f"checkpoints/{checkpoint}"]
        meta = self.logits_meta(checkpoint, split)
        if meta is not None and meta.rows == rows and meta.block_rows == block_rows:
            sg = g[split]
            if all(k in sg and sg[k].shape == shape and sg[k].dtype == dt and sg[k].chunks[0] == chunk
                   for k, (shape, dt, _) in arrays.items()):
                if BLOCKS not in sg:  # an entry a build of format <= 3 began: its done prefix becomes records
                    self._records(sg, rows, block, done=meta.rows_done // block, err=meta.max_abs_err)
                return meta
        self._upgrade_root()
        sg = g.create_group(split, overwrite=True)
        meta = LogitsMeta(rows=rows, block_rows=block_rows)
        sg.attrs[ATTR] = meta.to_dict()
        for key, (shape, dt, fill) in arrays.items():
            sg.create_array(key, shape=shape, dtype=dt, chunks=(chunk, *shape[1:]), fill_value=fill,
                            compressors=_compressors(dt.itemsize))
        self._records(sg, rows, block)
        return meta

    def _records(self, sg: Any, rows: int, block: int, done: int = 0, err: float = 0.0) -> None:
        """The ``blocks`` array of an entry: one float32 per build block, one chunk (object)
        each, so concurrent writers never touch the same object; ``done`` blocks recorded."""
        self._upgrade_root()
        a = sg.create_array(BLOCKS, shape=(-(-rows // block),), dtype="float32", chunks=(1,),
                            fill_value=float("nan"), compressors=_compressors(4), overwrite=True)
        if done:
            a[:done] = np.float32(err)

    def _upgrade_root(self) -> None:
        """A build that writes block records into a store of an older format version says so
        at its root (older readers then refuse it in one line instead of misreading it)."""
        from logitstore.format import FORMAT_VERSION

        if self.meta.format_version < FORMAT_VERSION:
            self.meta = replace(self.meta, format_version=FORMAT_VERSION)
            self._root.attrs[ATTR] = self.meta.to_dict()

    def write_logits_block(self, checkpoint: str, split: str, start: int, block: Encoded, index: int) -> None:
        """Write encoded logits (rows, C) or (tokens, C) at [start, start + len) of the first
        axis (rows, or tokens for the token layout), then record build block ``index`` done."""
        values = {"logits": block.values} | ({"scale": block.scale} if block.scale is not None else {})
        self.write_entry_block(checkpoint, split, index, start, values, block.max_abs_err)

    def write_entry_block(self, checkpoint: str, split: str, index: int, start: int,
                          values: dict[str, np.ndarray], max_abs_err: float) -> None:
        """Write each array's block at [start, start + len) of the first axis, then the record
        of build block ``index`` (its largest encoding error): the block's own object, so
        writers of other blocks (Ray actors) never race on it. The entry's metadata is the
        driver's to update (:meth:`note_blocks`, :meth:`finish_entry`)."""
        sg = self._root[f"checkpoints/{checkpoint}/{split}"]
        for key, part in values.items():
            if len(part):
                sg[key][start:start + len(part)] = part
        if BLOCKS in sg:  # (an entry built before format 4, being repaired, has none)
            sg[BLOCKS][index] = np.float32(max_abs_err)

    def recorded_blocks(self, checkpoint: str, split: str) -> np.ndarray:
        """(n_blocks,) float32 of an entry: each finished block's largest encoding error,
        NaN for a block not written yet."""
        return self._root[f"checkpoints/{checkpoint}/{split}/{BLOCKS}"][:]

    def note_blocks(self, checkpoint: str, split: str, rows_done: int, max_abs_err: float) -> LogitsMeta:
        """Record progress in the entry's metadata (the driver only): ``rows_done`` rows of
        recorded blocks so far, the largest encoding error so far."""
        sg = self._root[f"checkpoints/{checkpoint}/{split}"]
        meta = replace(LogitsMeta.from_dict(sg.attrs.get(ATTR)), rows_done=rows_done,
                       max_abs_err=max(0.0, float(max_abs_err)))
        sg.attrs[ATTR] = meta.to_dict()
        return meta

    def finish_entry(self, checkpoint: str, split: str) -> bool:
        """Mark an entry complete when every block is recorded (its error: the largest of
        theirs); returns whether it is complete."""
        err = self.recorded_blocks(checkpoint, split)
        if not np.isfinite(err).all():
            return False
        sg = self._root[f"checkpoints/{checkpoint}/{split}"]
        meta = LogitsMeta.from_dict(sg.attrs.get(ATTR))
        sg.attrs[ATTR] = replace(meta, rows_done=meta.rows, complete=True,
                                 max_abs_err=float(err.max(initial=0.0))).to_dict()
        return True


def refuse_links(root: Path) -> None:
    """Raise StoreCorruptError when a folder or file inside the local store ``root`` is a
    symbolic link: the store never makes one, and writing through it could overwrite a file
    outside the store."""
    if not root.is_dir():
        return
    for p in root.rglob("*"):
        if p.is_symlink():
            raise StoreCorruptError(
                f"{p} inside store {root} is a link (to {os.readlink(p)}); a store holds no links and a build "
                "will not write through one: remove it (and rerun to rebuild what it replaced)"
            )
