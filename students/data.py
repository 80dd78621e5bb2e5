"""Batches from a logit store: token ids, labels and one checkpoint's logits, aligned by row.

The row order of an epoch is a pure function of (rows, chunk layout, mode, seed, epoch),
computed before anything is read, so cached and online training see the same batches:

* in RAM (the logits fit the memory budget): a permutation of all rows, seeded by
  ``seed + epoch``;
* streamed (they do not): the logits chunks in a random order, taken ``buffer_chunks``
  at a time; each buffer's rows are shuffled and read as whole chunks (random row access
  straight from zarr is ~100x slower than whole chunks). The next buffer is read in a
  background thread while the current one trains, so a store on object storage (``s3://``)
  costs no waiting (docs/benchmarks.md).

With ``group_by_length`` (training only), each shuffled group is then cut into windows of
4 batches, each window sorted by row length and cut into batches, and the full batches
are shuffled (a group's one short batch goes last), like the transformers Trainer's
``group_by_length`` but with a smaller window. Rotten Tomatoes at batch 32: random
batches pad to 130k tokens, windows of 4 batches to 63k (2.1x less), of 50 batches
(the Trainer's) to 40k (3.3x less) — but there the "plot" class is 3.6x longer than
the others, so long windows make batches of one class (majority share 0.62 against
0.57) and a 4-epoch teacher ended 6 points lower on test; windows of 4 keep batches
mixed (0.57). Either way every row appears exactly once per epoch. The token ids come from
``LogitStore.read_split`` (always in RAM); only the logits are streamed. Batches are padded
to their own longest row.

Token-layout stores (NER, QA; logitstore/tasks.py) hold one logit vector per token: a
batch's teacher logits are (B, T, C), zero at padding, and NER labels (B, T) are -100 at
padding (QA labels stay (B, 2)). Their "chunks" are the build's blocks of rows, so the
streamed order works the same way.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from logitstore.padding import pad_batch, padded
from logitstore.store import DEFAULT_LOGIT_CHUNK_ROWS, LogitStore, SplitData
from logitstore.tasks import IGNORE, get_task
from students.config import LoaderConfig

LENGTH_WINDOW_BATCHES = 4  # group_by_length sorts windows of this many batches
LogitsOf = np.ndarray | list[np.ndarray]  # (n, C) teacher logits of n rows; token layout: n arrays (L_i, C)


@dataclass(frozen=True)
class Batch:
    """One padded batch. ``rows`` are the split's row numbers of the examples."""

    rows: torch.Tensor  # (B,) int64
    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) int64
    token_type_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B,) int64; NER (B, T) with -100 = no label; QA (B, 2) start, end
    teacher_logits: torch.Tensor | None  # (B, C) float32; token layout (B, T, C)

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(self.rows, move(self.input_ids), move(self.attention_mask), move(self.token_type_ids),
                     move(self.labels), move(self.teacher_logits))


def collate(split: SplitData, rows: np.ndarray, logits: np.ndarray | list[np.ndarray] | None, pad_id: int,
            token_labels: bool = False) -> Batch:
    """Pad ``rows`` (B,) of ``split`` to their longest row; ``logits`` (B, C) aligned to rows,
    or (token layout) a list of each row's (L_i, C) logits. ``token_labels``: the split's
    labels are per token (NER) and are padded with -100."""
    feed = pad_batch(split.input_ids, split.offsets, split.token_type_ids, rows, pad_id,
                     ("input_ids", "attention_mask", "token_type_ids"))  # each (B, T) int64
    ids, mask, types = feed["input_ids"], feed["attention_mask"], feed["token_type_ids"]
    width = ids.shape[1]
    if token_labels:
        labels = padded(split.labels, split.offsets, rows, IGNORE)[0].astype(np.int64)  # (B, T)
    else:
        labels = split.labels[rows].astype(np.int64)  # (B,) or QA (B, 2)
    if isinstance(logits, list):  # token layout: pad each row's (L_i, C) to (B, T, C) with zeros
        teacher = np.zeros((len(rows), width, logits[0].shape[-1]), dtype=np.float32)
        for j, row_logits in enumerate(logits):
            teacher[j, :len(row_logits)] = row_logits
    else:
        teacher = None if logits is None else np.ascontiguousarray(logits, np.float32)
    return Batch(
        rows=torch.from_numpy(rows.astype(np.int64)),
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask.astype(np.int64)),
        token_type_ids=torch.from_numpy(types),
        labels=torch.from_numpy(labels),
        teacher_logits=None if teacher is None else torch.from_numpy(teacher),
    )


class SplitBatches:
    """The batches of one split, epoch by epoch.

    ``checkpoint`` names the checkpoint whose logits are aligned to the rows; its chunk
    layout decides the row order even when ``read_logits`` is False (online KD, alpha 0),
    so that a run without stored logits sees exactly the batches of one with them.
    With ``checkpoint`` None the split is served in RAM with no logits.
    """

    def __init__(self, store: LogitStore, split: SplitData, checkpoint: str | None,
                 cfg: LoaderConfig, shuffle: bool = True, read_logits: bool = True) -> None:
        self.store = store
        self.split = split
        self.checkpoint = checkpoint
        self.cfg = cfg
        self.shuffle = shuffle
        self.read_logits = read_logits and checkpoint is not None
        self.rows = len(split)
        task = get_task(store.meta.task)
        self.per_token = task.per_token
        self.token_labels = task.token_labels
        self.chunk_rows = (store.logits_chunk_rows(checkpoint, split.name) if checkpoint is not None
                           else DEFAULT_LOGIT_CHUNK_ROWS)
        num_labels = store.meta.num_labels
        vectors = int(split.offsets[-1]) if self.per_token else self.rows
        if cfg.mode == "auto":
            self.streamed = checkpoint is not None and vectors * num_labels * 4 > cfg.memory_budget_bytes
        else:
            self.streamed = cfg.mode == "stream" and checkpoint is not None
        self._logits: np.ndarray | None = None
        if self.read_logits and not self.streamed:
            self._logits = store.read_logits(checkpoint, split.name)  # (R, C)

    def __len__(self) -> int:
        return -(-self.rows // self.cfg.batch_size)

    def _chunk_groups(self, epoch: int) -> list[np.ndarray]:
        """The row numbers of each shuffle buffer of ``epoch``, in reading order."""
        rng = np.random.default_rng(self.cfg.seed + epoch)
        groups = self._shuffled_groups(rng)
        if self.shuffle and self.cfg.group_by_length:
            groups = [self._grouped(g, rng) for g in groups]
        return groups

    def _shuffled_groups(self, rng: np.random.Generator) -> list[np.ndarray]:
        if not self.streamed:
            return [rng.permutation(self.rows) if self.shuffle else np.arange(self.rows)]
        n_chunks = -(-self.rows // self.chunk_rows)
        chunk_order = rng.permutation(n_chunks) if self.shuffle else np.arange(n_chunks)
        groups = []
        for g in range(0, n_chunks, self.cfg.buffer_chunks):
            chunks = np.sort(chunk_order[g:g + self.cfg.buffer_chunks])  # read in disk order
            rows = np.concatenate([np.arange(c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.rows))
                                   for c in chunks])
            groups.append(rng.permutation(rows) if self.shuffle else rows)
        return groups

    def _grouped(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``rows`` reordered into batches of similar length (see the module docstring)."""
        bs = self.cfg.batch_size
        window = bs * LENGTH_WINDOW_BATCHES
        lengths = self.split.lengths
        batches = []
        for start in range(0, len(rows), window):
            part = rows[start:start + window]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches += [part[i:i + bs] for i in range(0, len(part), bs)]
        full = [b for b in batches if len(b) == bs]
        short = [b for b in batches if len(b) < bs]  # at most one: the last window's remainder
        return np.concatenate([full[i] for i in rng.permutation(len(full))] + short)

    def order(self, epoch: int) -> np.ndarray:
        """(R,) the rows of ``epoch`` in the order batches take them."""
        return np.concatenate(self._chunk_groups(epoch))

    def _buffer_logits(self, rows: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """Read the whole chunks holding ``rows`` and return their logits (len(rows), C)
        (token layout: a list of each row's (L_i, C) logits)."""
        chunk_of_row = rows // self.chunk_rows  # (n,)
        chunks = np.unique(chunk_of_row)  # sorted: read in disk order
        if self.per_token:
            off = self.split.offsets
            out: list[np.ndarray] = [np.empty(0)] * len(rows)
            for c in chunks:
                first, last = int(c) * self.chunk_rows, min((int(c) + 1) * self.chunk_rows, self.rows)
                block = self.store.read_logits(self.checkpoint, self.split.name, int(off[first]), int(off[last]))
                for j in np.flatnonzero(chunk_of_row == c):
                    r = rows[j]
                    out[j] = block[off[r] - off[first]:off[r + 1] - off[first]]
            return out
        parts = [self.store.read_logits(self.checkpoint, self.split.name, int(c) * self.chunk_rows,
                                        min((int(c) + 1) * self.chunk_rows, self.rows)) for c in chunks]
        starts = np.cumsum([0] + [len(p) for p in parts[:-1]])  # (n_chunks,) offset of each chunk in block
        block = np.concatenate(parts)  # (rows in these chunks, C)
        pos = starts[np.searchsorted(chunks, chunk_of_row)] + rows % self.chunk_rows  # (n,)
        return block[pos]

    def _ram_logits(self, rows: np.ndarray) -> np.ndarray | list[np.ndarray]:
        assert self._logits is not None
        if self.per_token:
            off = self.split.offsets
            return [self._logits[off[r]:off[r + 1]] for r in rows]
        return self._logits[rows]

    def _with_logits(self, groups: list[np.ndarray]) -> Iterator[tuple[np.ndarray, LogitsOf | None]]:
        """Each group's rows with their logits ((n, C), or a list of n (L_i, C) for the token
        layout; None without). Streamed, the next group's chunks are read in a background
        thread while the current group's batches train (issue 13: a store on object storage
        answers each read after a network round trip), so at most two groups' logits are in
        memory; a read error is raised here, in the training thread."""
        if not self.read_logits or self._logits is not None:
            yield from ((rows, self._ram_logits(rows) if self.read_logits else None) for rows in groups)
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logits-prefetch")
        try:
            ahead = pool.submit(self._buffer_logits, groups[0]) if groups else None
            for i, rows in enumerate(groups):
                assert ahead is not None
                logits = ahead.result()
                ahead = pool.submit(self._buffer_logits, groups[i + 1]) if i + 1 < len(groups) else None
                yield rows, logits
        finally:  # a run that stops mid-epoch does not wait for a read it will not use
            pool.shutdown(wait=False, cancel_futures=True)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield the batches of ``epoch`` (the last one may be smaller)."""
        bs = self.cfg.batch_size
        pending_rows = np.empty(0, dtype=np.int64)
        pending_logits: np.ndarray | list[np.ndarray] | None = None
        for rows, logits in self._with_logits(self._chunk_groups(epoch)):
            pending_rows = np.concatenate([pending_rows, rows])
            if logits is not None:
                pending_logits = logits if pending_logits is None else (
                    pending_logits + logits if self.per_token else np.concatenate([pending_logits, logits]))
            while len(pending_rows) >= bs:
                yield collate(self.split, pending_rows[:bs], None if pending_logits is None else pending_logits[:bs],
                              self.cfg.pad_id, self.token_labels)
                pending_rows = pending_rows[bs:]
                pending_logits = None if pending_logits is None else pending_logits[bs:]
        if len(pending_rows):
            yield collate(self.split, pending_rows, pending_logits, self.cfg.pad_id, self.token_labels)
