"""Sampled encoding of causal-LM teacher distributions (RS-KD style; layout
``causal-lm-sampled``, store format 3, written as 4 since the block records;
docs/store-format.md is the contract).

Per token the teacher graph draws ``N`` token ids from its distribution at the sampling
temperature ``s`` (inverse CDF of seeded uniform draws, logitstore/tasks/causal_lm_sampled.py)
and gives each draw's logit, the row maximum and the row's log-sum-exp at each build
temperature. What is stored, in ``N`` slots per token:

- ``ids`` (T, N) uint16 (uint32 above 65,536 ids): the distinct drawn ids, ascending and
  delta-coded along N as in the top-k layout; slots after the last distinct id hold delta 0;
- ``counts`` (T, N) uint8: how often each distinct id was drawn (they sum to N; 0 in the
  unused slots, so a token whose counts do not sum to N is a missing chunk);
- ``logp`` (T, N) uint8: ``q = round((z_max - z_i) / step)`` as in the top-k layout (255 in
  unused slots);
- ``lse`` (T, n_tau) float32: ``logsumexp((z - z_max) / tau)`` at each build temperature.

So ``log p_tau(i) = -q_i * step / tau - lse[tau]`` for every drawn id, and ``counts / N`` is
an unbiased estimate of ``p_s`` (E[counts_i] = N p_s(i)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from logitstore.errors import TeacherOutputError
from logitstore.topk import id_dtype


@dataclass(frozen=True)
class Sampled:
    """Decoded sampled rows: ``ids`` (T, N) int64 (unused slots repeat the last id),
    ``counts`` (T, N) int64 (0 in unused slots), ``rel`` (T, N) float32 = z_i - z_max,
    ``lse`` (T, n_tau) float32 = logsumexp((z - z_max) / tau)."""

    ids: np.ndarray
    counts: np.ndarray
    rel: np.ndarray
    lse: np.ndarray

    def logp(self, column: int = 0, tau: float = 1.0) -> np.ndarray:
        """(T, N) log-probabilities of the drawn ids at ``tau`` (``lse[:, column]``)."""
        return self.rel / tau - self.lse[:, column:column + 1]


@dataclass(frozen=True)
class EncodedSample:
    """One block as stored (``ids``, ``counts``, ``logp``, ``lse``) and its largest
    quantisation error (nats)."""

    ids: np.ndarray
    counts: np.ndarray
    logp: np.ndarray
    lse: np.ndarray
    max_abs_err: float


def encode_sampled(draw_ids: np.ndarray, draw_values: np.ndarray, zmax: np.ndarray, lse: np.ndarray,
                   temperatures: tuple[float, ...], step: float, vocab_size: int) -> EncodedSample:
    """Encode T tokens' draws: ``draw_ids`` (T, N) int, ``draw_values`` (T, N) their logits,
    ``zmax`` (T,) the row maxima, ``lse`` (T, n_tau) the absolute ``logsumexp(z / tau)``.
    Raises TeacherOutputError for NaN/inf values."""
    values = np.asarray(draw_values, dtype=np.float32)
    zmax = np.asarray(zmax, dtype=np.float32)[:, None]  # (T, 1)
    if not (np.isfinite(values).all() and np.isfinite(zmax).all() and np.isfinite(lse).all()):
        raise TeacherOutputError("teacher produced NaN or inf logits; check the checkpoint's weights")
    t, n = draw_ids.shape
    order = np.argsort(draw_ids, axis=1, kind="stable")
    ids = np.take_along_axis(np.asarray(draw_ids, dtype=np.int64), order, axis=1)  # (T, N) ascending
    rel = np.take_along_axis(values - zmax, order, axis=1)  # (T, N) <= 0
    new = np.ones((t, n), dtype=bool)
    new[:, 1:] = ids[:, 1:] != ids[:, :-1]  # first draw of each distinct id
    slot = np.cumsum(new, axis=1) - 1  # (T, N) the distinct slot of each draw
    rows = np.broadcast_to(np.arange(t)[:, None], (t, n))
    counts = np.bincount((rows * n + slot).ravel(), minlength=t * n).reshape(t, n).astype(np.uint8)
    kept = np.zeros((t, n), dtype=np.int64)
    kept[rows[new], slot[new]] = ids[new]
    kept = np.maximum.accumulate(kept, axis=1)  # unused slots repeat the last id: delta 0
    q = np.full((t, n), 255, dtype=np.uint8)
    q[rows[new], slot[new]] = np.clip(np.rint(-rel[new] / step), 0, 255).astype(np.uint8)
    err = float(np.abs(-np.clip(np.rint(-rel / step), 0, 255) * step - rel).max(initial=0.0))
    deltas = np.diff(kept, axis=1, prepend=0).astype(id_dtype(vocab_size))  # (T, N)
    taus = np.asarray(temperatures, dtype=np.float32)[None, :]  # (1, n_tau)
    lse_rel = (np.asarray(lse, dtype=np.float32) - zmax / taus).astype(np.float32)  # (T, n_tau)
    return EncodedSample(deltas, counts, q, lse_rel, err)


def decode_sampled(ids: np.ndarray, counts: np.ndarray, logp: np.ndarray, lse: np.ndarray, step: float) -> Sampled:
    """Stored arrays back to a :class:`Sampled`."""
    return Sampled(np.cumsum(ids.astype(np.int64), axis=1), counts.astype(np.int64),
                   -logp.astype(np.float32) * np.float32(step), np.asarray(lse, dtype=np.float32))


def whole_sampled(counts: np.ndarray, lse: np.ndarray, draws: int) -> bool:
    """False when a block reads back as missing chunks (fill values): NaN lse, or a token
    whose counts do not sum to ``draws``."""
    return bool(np.isfinite(lse).all()) and bool((counts.sum(axis=1, dtype=np.int64) == draws).all())


def row_draws(seed: int, split: str, row: int, length: int, draws: int) -> np.ndarray:
    """(length, draws) float32 uniform numbers in [0, 1) for one row of a split: a function
    of (seed, split name, row number) only, so a resumed, repaired or re-batched build and
    both runtimes draw the same ids."""
    import zlib

    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), row])
    return rng.random((length, draws), dtype=np.float32)
