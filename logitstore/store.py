"""The logit store on disk, read side: open a Zarr v3 store and read its splits and logits.

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

The student side reads a store with :func:`open_store` (a read-only :class:`LogitStore`);
only the builder writes, through :class:`logitstore.writer.StoreWriter`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from math import inf
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from logitstore import storage
from logitstore.encode import decode
from logitstore.errors import LogitStoreError, NoCheckpointError, StoreCorruptError
from logitstore.format import CheckpointMeta, LogitsMeta, SplitMeta, StoreMeta

#: Key of the metadata in every node's attributes.
ATTR = "logitstore"
#: Root attribute listing every checkpoint that ever completed in the store (added in format
#: 2; absent in older stores). A listed checkpoint that is gone makes ths/tll refuse to pick.
HELD_ATTR = "logitstore_checkpoints"
#: The only tokenizer files a store holds (written and read back by these names only).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json")
#: Rows per logits chunk (row layout) or per build block (token layout) unless --chunk-rows says otherwise.
DEFAULT_LOGIT_CHUNK_ROWS = 8192


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
    ``contexts`` and gold ``answers``. ``truncated_rows``: rows whose tokens ``max_length``
    cut (set by the task's tokenize; None when not known, e.g. read back from a store).
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
    truncated_rows: int | None = None

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
    """A logit store on disk, opened read-only. Use :func:`open_store` to read one."""

    #: The Zarr mode :meth:`open` uses ("r+" for the builder's StoreWriter).
    _MODE = "r"

    def __init__(self, path: str, root: zarr.Group, meta: StoreMeta) -> None:
        self.path = path
        self._root = root
        self.meta = meta
        self._all_stored: set[str] = set()  # int8 logits entries whose chunks were all found stored

    # ------------------------------------------------------------------ open
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "LogitStore":
        """Open an existing store; raises StoreCorruptError / FormatVersionError."""
        path = str(storage.location(path))  # a folder or a URL (issue 13: logitstore/storage.py)
        missing = storage.not_a_store(path)  # faults (issue 10): "no store" / "not a store", not "corrupt"
        if missing is not None:
            raise missing
        with _reading(path, "the root metadata"):
            root = zarr.open_group(storage.zarr_store(path, writable=cls._MODE != "r"), mode=cls._MODE)
            data = root.attrs.get(ATTR)
        return cls(path, root, StoreMeta.from_dict(data))

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
        from logitstore.tasks import IGNORE, get_task  # not at the top: the task modules import this one
        from logitstore.transfer import TRANSFER_SPLIT

        task = get_task(self.meta.task)
        marker = task.transfer_marker if name == TRANSFER_SPLIT else IGNORE  # NER transfer: word starts -2

        meta = self.split_meta(name)
        with _reading(self.path, f"split {name!r}"):
            g = self._root[f"splits/{name}"]
            ids = g["input_ids"][:]
            offsets = g["offsets"][:]
            labels = g["labels"][:]
            example_ids = g["example_id"][:]
            tt = g["token_type_ids"][:] if "token_type_ids" in g else None
            for key in ("context_utf8", "answer_utf8"):  # bytes: a missing chunk would read as NUL bytes
                if key in g:
                    _all_chunks(g[key], self.path, f"split {name!r}")
            qa = {}
            if "window_of" in g:
                qa = {"offset_mapping": g["offset_mapping"][:], "window_of": g["window_of"][:],
                      "contexts": _read_texts(g, "context"), "answers": _read_answers(g)}
        whole = (
            len(offsets) == meta.rows + 1 and len(ids) == meta.tokens and offsets[0] == 0
            # faults (issue 10): per-row arrays must have the split's rows too (a halved shape)
            and len(example_ids) == meta.rows
            and len(labels) == (meta.tokens if task.token_labels else meta.rows)
            and offsets[-1] == meta.tokens and bool((np.diff(offsets) > 0).all())
            and bool((ids >= 0).all()) and bool(((labels >= 0) | (labels == IGNORE) | (labels == marker)).all())
            and bool((example_ids >= 0).all()) and (tt is None or bool((tt >= 0).all()))
            and (not qa or (bool((qa["offset_mapping"] >= -1).all()) and bool((qa["window_of"] >= 0).all())))
        )
        if not whole:
            raise StoreCorruptError(
                f"split {name!r} of store {self.path} is truncated or has missing chunks; rerun the build to repair "
                f"it (`logitstore verify {self.path}` shows the damage)"  # faults (issue 10): repairable now
            )
        return SplitData(name, ids, offsets, labels, example_ids, tt, **qa)

    # ------------------------------------------------------------------ tokenizer
    def tokenizer_files(self) -> dict[str, bytes]:
        """The store's tokenizer files by name, each checked against the size and sha256
        recorded when it was written (stores written before that record are read as they
        are). Raises StoreCorruptError for a damaged, missing, half-written or unknown file."""
        import hashlib

        with _reading(self.path, "the tokenizer"):
            g = self._root["tokenizer"]
            record = g.attrs.get(ATTR)
            files = {name: arr[:].tobytes() for name, arr in g.arrays()}
        unknown = sorted(set(files) - set(TOKENIZER_FILES))
        problem = f"holds files that are not tokenizer files ({', '.join(unknown)})" if unknown else None
        if record is not None and not record.get("complete"):
            problem = "was being written when its build stopped"
        for name, want in (record or {}).get("files", {}).items():
            got = files.get(name)
            if got is None or len(got) != want["bytes"] or hashlib.sha256(got).hexdigest() != want["sha256"]:
                problem = problem or f"file {name} is damaged or missing"
        if problem:
            raise StoreCorruptError(f"the tokenizer of store {self.path} {problem}; rerun `logitstore build` "
                                    "with the same data and tokenizer to rewrite it")
        return files

    def save_tokenizer(self, folder: str | os.PathLike[str]) -> Path:
        """Write the store's (checked) tokenizer files into ``folder`` (created) and return it."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for name, raw in self.tokenizer_files().items():
            (out / name).write_bytes(raw)
        return out

    def load_tokenizer(self) -> Any:
        """The tokenizer the store's token ids were made with (a transformers tokenizer)."""
        from transformers import AutoTokenizer

        with tempfile.TemporaryDirectory() as tmp:
            return AutoTokenizer.from_pretrained(self.save_tokenizer(tmp), trust_remote_code=False)

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
        gone = sorted(set(self.checkpoints_held()) - {c.name for c in done})
        if gone and which in ("ths", "tll"):
            raise NoCheckpointError(
                f"checkpoint {', '.join(gone)} of store {self.path} is gone (its entry was deleted or damaged), so "
                f"{which} could silently pick another; rerun `logitstore build` with its teacher to restore it, "
                "or name a checkpoint with --teacher NAME"
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

    def checkpoints_held(self) -> list[str]:
        """Every checkpoint that ever completed in this store (empty for older stores)."""
        with _reading(self.path, "the root metadata"):
            return list(self._root.attrs.get(HELD_ATTR, []))

    # ------------------------------------------------------------------ logits
    def logits_meta(self, checkpoint: str, split: str) -> LogitsMeta | None:
        g = self._root[f"checkpoints/{checkpoint}"]
        if split not in g:
            return None
        with _reading(self.path, f"logits of {checkpoint}/{split}"):
            return LogitsMeta.from_dict(g[split].attrs.get(ATTR))

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
        meta = self._complete_entry(checkpoint, split, "logits")
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
            key = f"{checkpoint}/{split}"
            if "scale" in sg and key not in self._all_stored:  # int8: a missing chunk would read as zeros
                _all_chunks(sg["logits"], self.path, f"logits of {key}")  # one listing per entry, not per read
                self._all_stored.add(key)
            values = sg["logits"][start:stop]
            scale = sg["scale"][start:stop] if "scale" in sg else None
        out = decode(values, scale)
        if not np.isfinite(out).all():
            raise StoreCorruptError(
                f"logits of {checkpoint}/{split} in store {self.path} have missing chunks; rerun the build to repair "
                f"them (`logitstore verify {self.path}` shows the damage)"  # faults (issue 10): repairable now
            )
        return out

    def _complete_entry(self, checkpoint: str, split: str, what: str) -> LogitsMeta:
        """The progress of a complete entry; StoreCorruptError naming ``what`` otherwise."""
        meta = self.logits_meta(checkpoint, split) if self.has_checkpoint(checkpoint) else None
        if meta is None or not meta.complete:
            raise StoreCorruptError(
                f"checkpoint {checkpoint!r} has no complete {what} for split {split!r} in store {self.path}; "
                "rerun `logitstore build` to finish it"
            )
        return meta

    def read_entry(self, checkpoint: str, split: str, names: Sequence[str], start: int = 0,
                   stop: int | None = None) -> dict[str, np.ndarray]:
        """Raw arrays ``names`` [start, stop) of a complete entry of a task with its own entry
        layout (causal-LM top-k: ids, logp, lse); the task decodes them. Raises
        StoreCorruptError when the entry is incomplete or an array is unreadable."""
        self._complete_entry(checkpoint, split, "entry")
        with _reading(self.path, f"entry {checkpoint}/{split}"):
            sg = self._root[f"checkpoints/{checkpoint}/{split}"]
            return {n: sg[n][start:stop] for n in names}

    # ------------------------------------------------------------------ sizes
    def nbytes_on_disk(self, prefix: str = "", skip: Any = None) -> int:
        """Bytes stored under the store (or its node ``prefix``): files on disk, objects at a URL
        (``skip(parts)``: leave out those whose path parts below ``prefix`` it is true for)."""
        return storage.nbytes(self.path, prefix, skip)


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


def _all_chunks(arr: Any, path: str, what: str) -> None:
    """Raise StoreCorruptError unless every chunk of ``arr`` is stored: for arrays whose fill
    value is a legal value (uint8 bytes, int8 logits) a missing chunk cannot be told from
    data once read. (An int8 chunk whose every logit is exactly 0 is not written by zarr
    and reads as damaged: no real teacher gives one.)"""
    if arr.nchunks_initialized < arr.nchunks:
        raise StoreCorruptError(
            f"{what} in store {path} has {arr.nchunks - arr.nchunks_initialized} missing chunk(s) of {arr.name}; "
            f"rerun the build to repair them (`logitstore verify {path}` shows the damage)")


def _num(x: float | None, missing: float) -> float:
    return missing if x is None else float(x)


def open_store(path: str | os.PathLike[str]) -> LogitStore:
    """Open a logit store for reading; raises StoreCorruptError / FormatVersionError."""
    return LogitStore.open(path)
