"""The logit store on disk: open, read and (for the builder) write a Zarr v3 store.

Layout (docs/store-format.md is the contract)::

    STORE/                              attrs["logitstore"]: StoreMeta
      tokenizer/<file>                  uint8 bytes of each tokenizer file
      splits/<split>/                   attrs["logitstore"]: SplitMeta
        input_ids   (T,)   int32        all rows' token ids end to end (ragged, no padding)
        offsets     (R+1,) int64        row i is input_ids[offsets[i]:offsets[i+1]]
        token_type_ids (T,) int8        only when two text columns are used
        labels      (R,) | (T,) | (R, 2) int64   by task (logitstore/tasks.py)
        example_id  (R,)   int64        row number of the example in its source split
        (QA only) offset_mapping (T, 2) int32, window_of (R,) int64, context_* and answer_* texts
      checkpoints/<name>/               attrs["logitstore"]: CheckpointMeta
        <split>/                        attrs["logitstore"]: LogitsMeta (progress)
          logits    (R, C) | (T, C) fp16|fp32|int8   chunked by many rows (or tokens)
          scale     (R,) | (T,) float32 only for int8: logits = values * scale[:, None]

The student side reads a store with :func:`open_store` and the read methods; only the
builder uses the write methods.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from math import inf
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs

from logitstore.encode import Encoded, decode, storage_dtype
from logitstore.errors import LogitStoreError, NoCheckpointError, StoreCorruptError
from logitstore.format import CheckpointMeta, LogitsMeta, SplitMeta, StoreMeta
from logitstore.tasks import IGNORE

ATTR = "logitstore"
ROW_CHUNK = 65_536
TOKEN_CHUNK = 1 << 20
DEFAULT_LOGIT_CHUNK_ROWS = 8192
#: Tokens per chunk of token-layout logits (65,536 x C values).
TOKEN_LOGIT_CHUNK = 1 << 16


def _compressors(typesize: int) -> list[Any]:
    # Byte shuffle + zstd inside blosc; crc32c after it, so flipped or truncated chunk
    # bytes fail loudly on read instead of decoding to garbage.
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=typesize),
            zarr.codecs.Crc32cCodec()]


@contextlib.contextmanager
def _reading(path: str, what: str) -> Iterator[None]:
    """Turn low-level read failures into one StoreCorruptError naming ``what``."""
    try:
        yield
    except LogitStoreError:
        raise
    except Exception as exc:  # zarr, numcodecs and JSON errors have no common base
        raise StoreCorruptError(  # faults (issue 10): point at verify and the repairing rerun
            f"cannot read {what} of store {path} ({type(exc).__name__}: {exc}); the store is corrupt or "
            f"truncated: `logitstore verify {path}` says what is damaged, and rerunning the build repairs it"
        ) from exc


@dataclass(frozen=True)
class SplitData:
    """One split's tokenized examples, in RAM.

    ``input_ids`` (T,) int32 holds every row's token ids end to end; row i is
    ``input_ids[offsets[i]:offsets[i + 1]]`` with ``offsets`` (R+1,) int64.
    ``token_type_ids`` is (T,) int8, or None when every token has type 0.
    ``labels`` is (R,) for sequence classification, (T,) for token classification (-100 =
    no label) and (R, 2) start/end token positions for QA. QA splits also carry
    ``offset_mapping`` (T, 2) (character span in the context of each context token, -1
    elsewhere), ``window_of`` (R,) (the example each window belongs to), and per example
    ``contexts`` and gold ``answers``.
    """

    name: str
    input_ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    example_ids: np.ndarray
    token_type_ids: np.ndarray | None = None
    offset_mapping: np.ndarray | None = None
    window_of: np.ndarray | None = None
    contexts: list[str] | None = None
    answers: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """(R,) number of tokens of each row."""
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.input_ids[self.offsets[i]:self.offsets[i + 1]]


def ragged(rows: Sequence[Sequence[int]], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ints end to end, and their offsets: (flat (T,) of ``dtype``, offsets (R+1,) int64)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.fromiter((t for r in rows for t in r), dtype=dtype, count=int(offsets[-1])), offsets


class LogitStore:
    """A logit store on disk. Use :func:`open_store` to read one."""

    def __init__(self, path: str, root: zarr.Group, meta: StoreMeta) -> None:
        self.path = path
        self._root = root
        self.meta = meta

    # ------------------------------------------------------------------ open / create
    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r") -> "LogitStore":
        """Open an existing store (``mode`` "r" or "r+"); raises StoreCorruptError."""
        path = str(path)
        if "://" not in path and not Path(path).exists():
            raise StoreCorruptError(f"no store at {path}; build one with `logitstore build --out {path}`")
        if "://" not in path and not (Path(path) / "zarr.json").exists():  # faults (issue 10): not "corrupt"
            raise StoreCorruptError(f"{path} is not a logit store (no zarr.json in it); pass the folder that "
                                    "`logitstore build --out` wrote")
        with _reading(path, "the root metadata"):
            root = zarr.open_group(path, mode=mode)
            data = root.attrs.get(ATTR)
        return cls(path, root, StoreMeta.from_dict(data))

    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: StoreMeta) -> "LogitStore":
        """Create a new empty store at ``path`` (which must not hold a store yet)."""
        path = str(path)
        root = zarr.open_group(path, mode="w-")
        root.attrs[ATTR] = meta.to_dict()
        root.require_group("splits")
        root.require_group("checkpoints")
        root.require_group("tokenizer")
        return cls(path, root, meta)

    # ------------------------------------------------------------------ splits
    def split_names(self, complete_only: bool = True) -> list[str]:
        with _reading(self.path, "the split list"):
            names = sorted(k for k, _ in self._root["splits"].groups())
        return [n for n in names if not complete_only or self.split_meta(n).complete]

    def split_meta(self, name: str) -> SplitMeta:
        with _reading(self.path, f"split {name!r}"):
            return SplitMeta.from_dict(self._root[f"splits/{name}"].attrs.get(ATTR))

    def has_split(self, name: str) -> bool:
        return name in self.split_names(complete_only=False)

    def read_split(self, name: str) -> SplitData:
        """Load one complete split into RAM and check it is whole."""
        if name not in self.split_names():
            raise StoreCorruptError(
                f"split {name!r} is not in store {self.path} (splits: {', '.join(self.split_names()) or 'none'}); "
                "pick one of those or rebuild the store with it"
            )
        meta = self.split_meta(name)
        with _reading(self.path, f"split {name!r}"):
            g = self._root[f"splits/{name}"]
            ids = g["input_ids"][:]
            offsets = g["offsets"][:]
            labels = g["labels"][:]
            example_ids = g["example_id"][:]
            tt = g["token_type_ids"][:] if "token_type_ids" in g else None
            qa = {}
            if "window_of" in g:
                qa = {"offset_mapping": g["offset_mapping"][:], "window_of": g["window_of"][:],
                      "contexts": _read_texts(g, "context"), "answers": _read_answers(g)}
        whole = (
            len(offsets) == meta.rows + 1 and len(ids) == meta.tokens and offsets[0] == 0
            # faults (issue 10): per-row arrays must have the split's rows too (a halved shape)
            and len(example_ids) == meta.rows and len(labels) == (meta.tokens if labels.ndim == 1 and
                                                                  self.meta.task == "token-classification" else meta.rows)
            and offsets[-1] == meta.tokens and bool((np.diff(offsets) > 0).all())
            and bool((ids >= 0).all()) and bool(((labels >= 0) | (labels == IGNORE)).all())
            and bool((example_ids >= 0).all())
            and (not qa or (bool((qa["offset_mapping"] >= -1).all()) and bool((qa["window_of"] >= 0).all())))
        )
        if not whole:
            raise StoreCorruptError(
                f"split {name!r} of store {self.path} is truncated or has missing chunks; rerun the build to repair "
                f"it (`logitstore verify {self.path}` shows the damage)"  # faults (issue 10): repairable now
            )
        return SplitData(name, ids, offsets, labels, example_ids, tt, **qa)

    def write_split(self, data: SplitData, content_sha256: str) -> SplitMeta:
        """Write one split (replacing an incomplete one) and mark it complete last."""
        g = self._root.require_group("splits").create_group(data.name, overwrite=True)
        meta = SplitMeta(data.name, len(data), int(data.offsets[-1]), content_sha256, complete=False)
        g.attrs[ATTR] = meta.to_dict()
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
        for key, (values, chunk) in arrays.items():
            # -1 marks a missing chunk; offset_mapping holds -1 itself, so its fill is -2.
            a = g.create_array(key, shape=values.shape, dtype=values.dtype, chunks=(chunk, *values.shape[1:]),
                               fill_value=-2 if key == "offset_mapping" else (0 if values.dtype == np.uint8 else -1),
                               compressors=_compressors(values.dtype.itemsize))
            if values.size:
                a[:] = values
        meta = replace(meta, complete=True)
        g.attrs[ATTR] = meta.to_dict()
        return meta

    # ------------------------------------------------------------------ tokenizer
    def write_tokenizer(self, folder: str | os.PathLike[str], files: list[str]) -> None:
        """Copy tokenizer ``files`` (names inside ``folder``) into the store as raw bytes."""
        g = self._root.require_group("tokenizer")
        for name in files:
            raw = np.frombuffer((Path(folder) / name).read_bytes(), dtype=np.uint8)
            a = g.create_array(name, shape=raw.shape, dtype="uint8", chunks=(max(1, len(raw)),),
                               compressors=_compressors(1), overwrite=True)
            a[:] = raw

    def save_tokenizer(self, folder: str | os.PathLike[str]) -> Path:
        """Write the store's tokenizer files into ``folder`` (created) and return it."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        with _reading(self.path, "the tokenizer"):
            for name, arr in self._root["tokenizer"].arrays():
                (out / name).write_bytes(arr[:].tobytes())
        return out

    def load_tokenizer(self) -> Any:
        """The tokenizer the store's token ids were made with (a transformers tokenizer)."""
        from transformers import AutoTokenizer

        with tempfile.TemporaryDirectory() as tmp:
            return AutoTokenizer.from_pretrained(self.save_tokenizer(tmp))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_names(self, complete_only: bool = True) -> list[str]:
        with _reading(self.path, "the checkpoint list"):
            names = sorted(k for k, _ in self._root["checkpoints"].groups())
        return [n for n in names if not complete_only or self.checkpoint(n).complete]

    def checkpoints(self, complete_only: bool = True) -> list[CheckpointMeta]:
        return [self.checkpoint(n) for n in self.checkpoint_names(complete_only)]

    def checkpoint(self, name: str) -> CheckpointMeta:
        with _reading(self.path, f"checkpoint {name!r}"):
            g = self._root["checkpoints"]
            if name not in g:
                known = ", ".join(sorted(k for k, _ in g.groups())) or "none"
                raise NoCheckpointError(
                    f"no checkpoint named {name!r} in store {self.path} (checkpoints: {known}); "
                    "use one of those names"
                )
            return CheckpointMeta.from_dict(g[name].attrs.get(ATTR))

    def has_checkpoint(self, name: str) -> bool:
        return name in self.checkpoint_names(complete_only=False)

    def put_checkpoint(self, meta: CheckpointMeta) -> None:
        """Create or update a checkpoint entry's metadata."""
        g = self._root.require_group("checkpoints").require_group(meta.name)
        g.attrs[ATTR] = meta.to_dict()

    def select(self, which: str) -> CheckpointMeta:
        """Pick a complete checkpoint: "ths" (highest validation score), "tll" (lowest
        validation loss) or a name. Ties: ths prefers the lower loss, tll the higher score,
        then the name. Raises NoCheckpointError when none fits."""
        done = self.checkpoints()
        if not done:
            raise NoCheckpointError(
                f"store {self.path} has no complete teacher checkpoint; "
                "add one with `logitstore build --teacher PATH`, or train with --alpha 0"
            )
        if which == "ths":
            return min(done, key=lambda c: (-_num(c.val_score, -inf), _num(c.val_loss, inf), c.name))
        if which == "tll":
            return min(done, key=lambda c: (_num(c.val_loss, inf), -_num(c.val_score, -inf), c.name))
        for c in done:
            if c.name == which:
                return c
        raise NoCheckpointError(
            f"no complete checkpoint named {which!r} in store {self.path}; "
            f"use ths, tll or one of: {', '.join(c.name for c in done)}"
        )

    # ------------------------------------------------------------------ logits
    def logits_meta(self, checkpoint: str, split: str) -> LogitsMeta | None:
        g = self._root[f"checkpoints/{checkpoint}"]
        if split not in g:
            return None
        with _reading(self.path, f"logits of {checkpoint}/{split}"):
            return LogitsMeta.from_dict(g[split].attrs.get(ATTR))

    def prepare_logits(self, checkpoint: str, split: str, rows: int, num_labels: int,
                       encoding: str, chunk_rows: int, tokens: int | None = None) -> LogitsMeta:
        """Create the logits arrays of one checkpoint and split, or return the progress of
        an existing matching one (resume). A mismatching partial entry is started over.

        ``tokens`` (the split's token count) makes a token-layout array (tokens, C), chunked
        by TOKEN_LOGIT_CHUNK tokens and written in blocks of ``chunk_rows`` rows."""
        g = self._root[f"checkpoints/{checkpoint}"]
        meta = self.logits_meta(checkpoint, split)
        length = rows if tokens is None else tokens
        chunk = chunk_rows if tokens is None else TOKEN_LOGIT_CHUNK
        block_rows = None if tokens is None else chunk_rows
        if meta is not None and meta.rows == rows and meta.block_rows == block_rows:
            a = g[f"{split}/logits"]
            if a.shape == (length, num_labels) and a.dtype == storage_dtype(encoding) and a.chunks[0] == chunk:
                return meta
        sg = g.create_group(split, overwrite=True)
        meta = LogitsMeta(rows=rows, block_rows=block_rows)
        sg.attrs[ATTR] = meta.to_dict()
        dt = storage_dtype(encoding)
        fill = 0 if encoding == "int8" else float("nan")  # a missing float chunk reads as NaN
        sg.create_array("logits", shape=(length, num_labels), dtype=dt, chunks=(chunk, num_labels),
                        fill_value=fill, compressors=_compressors(dt.itemsize))
        if encoding == "int8":
            sg.create_array("scale", shape=(length,), dtype="float32", chunks=(chunk,),
                            fill_value=float("nan"), compressors=_compressors(4))
        return meta

    def write_logits_block(self, checkpoint: str, split: str, start: int, block: Encoded,
                           rows_done: int | None = None) -> None:
        """Write encoded logits at [start, start + len) of the first axis (rows, or tokens
        for the token layout) and then record ``rows_done`` rows as done (default: the
        block's end, for the row layout)."""
        sg = self._root[f"checkpoints/{checkpoint}/{split}"]
        stop = start + len(block.values)
        if len(block.values):
            sg["logits"][start:stop] = block.values
            if block.scale is not None:
                sg["scale"][start:stop] = block.scale
        meta = LogitsMeta.from_dict(sg.attrs.get(ATTR))
        done = stop if rows_done is None else rows_done
        sg.attrs[ATTR] = replace(meta, rows_done=done, complete=done == meta.rows,
                                 max_abs_err=max(meta.max_abs_err, block.max_abs_err)).to_dict()

    def logits_chunk_rows(self, checkpoint: str, split: str) -> int:
        """Rows per chunk (row layout) or per build block (token layout) of a logits entry."""
        meta = self.logits_meta(checkpoint, split)
        if meta is not None and meta.block_rows:
            return int(meta.block_rows)
        with _reading(self.path, f"logits of {checkpoint}/{split}"):
            return int(self._root[f"checkpoints/{checkpoint}/{split}/logits"].chunks[0])

    def read_logits(self, checkpoint: str, split: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Decoded float32 teacher logits [start, stop) of a split's first axis: rows
        (R, C) for the row layout, tokens (T, C) for the token layout (row i's tokens are
        ``offsets[i]:offsets[i + 1]`` of the split).

        Raises StoreCorruptError when the entry is incomplete or a chunk is missing/corrupt.
        """
        meta = self.logits_meta(checkpoint, split) if self.has_checkpoint(checkpoint) else None
        if meta is None or not meta.complete:
            raise StoreCorruptError(
                f"checkpoint {checkpoint!r} has no complete logits for split {split!r} in store {self.path}; "
                "rerun `logitstore build` to finish it"
            )
        with _reading(self.path, f"logits of {checkpoint}/{split}"):
            sg = self._root[f"checkpoints/{checkpoint}/{split}"]
            # faults (issue 10): a shape that disagrees with the metadata (a damaged zarr.json) is
            # corrupt, not an IndexError in the reader later
            length = self.split_meta(split).tokens if self.meta.layout == "token" else meta.rows
            if sg["logits"].shape[0] != length:
                raise StoreCorruptError(
                    f"logits of {checkpoint}/{split} in store {self.path} have {sg['logits'].shape[0]:,} rows in "
                    f"their metadata but the entry has {length:,}; the store is damaged: `logitstore verify "
                    f"{self.path}` says what else is, and rerunning the build repairs it")
            values = sg["logits"][start:stop]
            scale = sg["scale"][start:stop] if "scale" in sg else None
        out = decode(values, scale)
        if not np.isfinite(out).all():
            raise StoreCorruptError(
                f"logits of {checkpoint}/{split} in store {self.path} have missing chunks; rerun the build to repair "
                f"them (`logitstore verify {self.path}` shows the damage)"  # faults (issue 10): repairable now
            )
        return out

    # ------------------------------------------------------------------ sizes
    def nbytes_on_disk(self, prefix: str = "") -> int:
        """Bytes of the files under the store (local stores only; 0 elsewhere)."""
        root = Path(self.path) / prefix
        if not root.exists():
            return 0
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _read_texts(g: Any, prefix: str) -> list[str]:
    raw = g[f"{prefix}_utf8"][:].tobytes()
    ends = g[f"{prefix}_offsets"][:]
    if len(ends) == 0 or ends[0] != 0 or ends[-1] != len(raw) or bool((np.diff(ends) < 0).any()):
        raise ValueError(f"{prefix} texts are truncated")
    return [raw[a:b].decode("utf-8") for a, b in zip(ends[:-1], ends[1:])]


def _read_answers(g: Any) -> list[list[str]]:
    flat = _read_texts(g, "answer")
    of = g["answers_of"][:]
    if len(of) == 0 or of[-1] != len(flat) or bool((np.diff(of) < 0).any()):
        raise ValueError("answer lists are truncated")
    return [flat[a:b] for a, b in zip(of[:-1], of[1:])]


def _num(x: float | None, missing: float) -> float:
    return missing if x is None else float(x)


def open_store(path: str | os.PathLike[str]) -> LogitStore:
    """Open a logit store for reading; raises StoreCorruptError / FormatVersionError."""
    return LogitStore.open(path, mode="r")
