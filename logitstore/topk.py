"""Sparse top-k encoding of causal-LM teacher distributions (store format 3, layout
``causal-lm-topk``; docs/store-format.md is the contract).

Per token the teacher graph gives the K largest logits ``z`` (sorted by value), their ids and
the log-sum-exp of the whole row at each build temperature. What is stored:

- ``ids`` (N, K) uint16 (uint32 for vocabularies over 65,536): the K ids sorted ascending
  and delta-coded along K (the first id, then each id minus the previous one; every delta
  after the first is >= 1, so a chunk of zeros is recognisably missing);
- ``logp`` (N, K) uint8: ``q = round((z_max - z_i) / step)`` in the same (id) order, clipped
  to 255; ``q = 0`` is the row maximum. Error <= step / 2 (clipped entries: measured);
- ``lse`` (N, n_tau) float32: ``logsumexp((z - z_max) / tau)`` over the whole vocabulary.

So ``log p_tau(i) = -q_i * step / tau - lse[tau]`` for every kept id, exactly up to the
quantisation, and the tail mass at tau is ``1 - sum_i exp(log p_tau(i))``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from logitstore.errors import TeacherOutputError

#: Quantisation step of the stored log-probabilities, in nats (255 steps reach 31.9 nats below the
#: max). Measured on SmolLM2-135M at k = 50 (docs/benchmarks.md): 1/8 stores 97.6 B/token and adds
#: 0.0017 nat to the reconstruction KL; 1/16 stores 103.9 B/token and adds 0.0003 nat.
DEFAULT_STEP = 1 / 8


def id_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocabularies up to 65,536), else uint32."""
    return np.dtype("uint16") if vocab_size <= 1 << 16 else np.dtype("uint32")


@dataclass(frozen=True)
class TopK:
    """Decoded top-k rows: ``ids`` (N, K) int64 ascending, ``rel`` (N, K) float32 = z_i - z_max
    (<= 0, dequantised), ``lse`` (N, n_tau) float32 = logsumexp((z - z_max) / tau)."""

    ids: np.ndarray
    rel: np.ndarray
    lse: np.ndarray

    def logp(self, column: int = 0, tau: float = 1.0) -> np.ndarray:
        """(N, K) log-probabilities of the kept ids at temperature ``tau`` (``lse[:, column]``)."""
        return self.rel / tau - self.lse[:, column:column + 1]


@dataclass(frozen=True)
class EncodedTopK:
    """One block as stored: ``ids`` (N, K) deltas, ``logp`` (N, K) uint8, ``lse`` (N, n_tau)
    float32, and the largest quantisation error of the block (nats)."""

    ids: np.ndarray
    logp: np.ndarray
    lse: np.ndarray
    max_abs_err: float


def encode_topk(values: np.ndarray, ids: np.ndarray, lse: np.ndarray, temperatures: tuple[float, ...],
                step: float, vocab_size: int) -> EncodedTopK:
    """Encode the graph's outputs for N tokens: ``values`` (N, K) top-k logits sorted by
    value (largest first), ``ids`` (N, K) their token ids, ``lse`` (N, n_tau) the absolute
    ``logsumexp(z / tau)``. Raises TeacherOutputError for NaN/inf values."""
    values = np.asarray(values, dtype=np.float32)
    if not (np.isfinite(values).all() and np.isfinite(lse).all()):
        raise TeacherOutputError("teacher produced NaN or inf logits; check the checkpoint's weights")
    zmax = values[:, :1]  # (N, 1)
    order = np.argsort(ids, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(np.asarray(ids, dtype=np.int64), order, axis=1)  # (N, K) ascending
    rel = np.take_along_axis(values - zmax, order, axis=1)  # (N, K) <= 0
    q = np.clip(np.rint(-rel / step), 0, 255).astype(np.uint8)  # (N, K)
    err = float(np.abs(-q.astype(np.float32) * step - rel).max(initial=0.0))
    deltas = np.diff(sorted_ids, axis=1, prepend=0).astype(id_dtype(vocab_size))  # (N, K)
    taus = np.asarray(temperatures, dtype=np.float32)[None, :]  # (1, n_tau)
    lse_rel = (np.asarray(lse, dtype=np.float32) - zmax / taus).astype(np.float32)  # (N, n_tau)
    return EncodedTopK(deltas, q, lse_rel, err)


def decode_topk(ids: np.ndarray, logp: np.ndarray, lse: np.ndarray, step: float) -> TopK:
    """Stored arrays back to a :class:`TopK` (ids (N, K) int64 ascending)."""
    return TopK(np.cumsum(ids.astype(np.int64), axis=1), -logp.astype(np.float32) * np.float32(step),
                np.asarray(lse, dtype=np.float32))


def whole(ids: np.ndarray, lse: np.ndarray) -> bool:
    """False when a block reads back as missing chunks (fill values): NaN lse, or a zero
    delta after the first id (kept ids are distinct)."""
    return bool(np.isfinite(lse).all()) and bool((ids[:, 1:] > 0).all())
