"""Calibration of predicted probabilities: expected calibration error and the Brier score.

Both are computed from the same logits as a task's metrics (each task's ``scores``,
logitstore/tasks/) and land in the same score dicts under the keys ``ece`` and
``brier`` (``CALIBRATION_KEYS``); both are *lower is better*, so nothing that ranks by a
task metric (``Task.metrics``, higher is better) may pick them.

* ECE: the predictions' top-1 confidences p_max are put into ``ECE_BINS`` (15)
  equal-width bins over [0, 1] (bin b holds (b/15, (b+1)/15], the first also 0);
  ECE = sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)|
  (Guo et al. 2017). Empty bins count 0.
* Brier: the multi-class Brier score, mean over predictions of
  sum_c (p_c - [c == y])**2 (Brier 1950), in [0, 2]; it is not divided by the class count.

A "prediction" is one distribution with one gold label: an example (classification), a
labelled token (NER), one start or one end distribution of a QA window (the 2R
distributions are pooled into one set), a next token (causal LM; a student's are scored a
chunk of tokens at a time, so its ECE accumulates in ``ECEBins``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from logitstore.metrics import log_softmax

ECE_BINS = 15
#: The calibration keys of a score dict: lower is better, never a task metric.
CALIBRATION_KEYS = ("ece", "brier")


class ECEBins:
    """ECE accumulated over parts (a causal-LM student's chunks of tokens, students/lm.py):
    per bin the sum of correct - confidence, and the count of predictions. ``value()`` is
    ``ece`` of all the parts concatenated (equal up to the order of float summation);
    ``ece`` itself is one ``add`` and ``value``, so there is one ECE."""

    def __init__(self, bins: int = ECE_BINS) -> None:
        self.bins, self.n = bins, 0
        self.gap = np.zeros(bins)  # (bins,) sum of acc - conf, float64

    def add(self, confidence: np.ndarray, correct: np.ndarray) -> "ECEBins":
        """Add predictions: top-1 ``confidence`` (n,) in [0, 1] and ``correct`` (n,) bool."""
        confidence = np.asarray(confidence, dtype=np.float64)
        correct = np.asarray(correct, dtype=np.float64)
        which = np.ceil(confidence * self.bins).astype(np.int64) - 1  # (n,) bin b holds (b/B, (b+1)/B]
        which = np.clip(which, 0, self.bins - 1)  # 0 into the first bin
        self.gap += np.bincount(which, weights=correct - confidence, minlength=self.bins)
        self.n += len(confidence)
        return self

    def value(self) -> float:
        """sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)|; 0.0 for N = 0."""
        return float(np.abs(self.gap).sum() / self.n) if self.n else 0.0


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of top-1 ``confidence`` (N,) in [0, 1] and ``correct`` (N,)
    bool, over ``bins`` equal-width bins. 0.0 for N = 0."""
    return ECEBins(bins).add(confidence, correct).value()


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over rows of sum_c (probs[c] - onehot(labels)[c])**2; ``probs`` (N, C), ``labels`` (N,)."""
    if not len(labels):
        return 0.0
    sq = (probs.astype(np.float64) ** 2).sum(axis=-1)  # (N,)
    p_gold = probs[np.arange(len(labels)), labels].astype(np.float64)  # (N,)
    return float((sq - 2.0 * p_gold + 1.0).mean())


def calibration(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, float]:
    """{"ece", "brier"} of the softmax of ``logits`` (N, C) against ``labels`` (N,)."""
    probs = np.exp(log_softmax(logits))  # (N, C) float64
    return calibration_of_probs(probs, labels, bins)


def calibration_of_probs(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, float]:
    """{"ece", "brier"} of probabilities ``probs`` (N, C) (rows sum to 1) against ``labels`` (N,).
    The top-1 prediction is the first maximum (numpy's argmax)."""
    pred = probs.argmax(axis=-1)  # (N,)
    conf = probs[np.arange(len(labels)), pred]  # (N,)
    return {"ece": ece(conf, pred == labels, bins), "brier": brier(probs, labels)}


def pooled(parts: list[tuple[np.ndarray, int]], bins: int = ECE_BINS) -> dict[str, float]:
    """{"ece", "brier"} over distributions of different sizes (QA: one per window and
    start/end), each ``(log_probs (L,), gold index)``, pooled into one set of predictions."""
    conf = np.empty(len(parts))
    correct = np.empty(len(parts), dtype=bool)
    sq = np.empty(len(parts))
    for i, (logp, y) in enumerate(parts):
        p = np.exp(logp.astype(np.float64))  # (L,)
        k = int(p.argmax())
        conf[i], correct[i] = p[k], k == y
        sq[i] = (p ** 2).sum() - 2.0 * p[y] + 1.0
    return {"ece": ece(conf, correct, bins), "brier": float(sq.mean()) if len(parts) else 0.0}


def lower_is_better(key: str) -> bool:
    """True for the calibration keys (and the loss): what a "higher is better" ranking must skip."""
    return key in CALIBRATION_KEYS or key == "loss"


def picks_calibration(store: Any) -> list[dict[str, Any]]:
    """The ths and tll checkpoints of an open LogitStore side by side: pick, checkpoint, metric,
    val_loss, val_score, and validation ece / brier (None for a store built before they were
    recorded, or a causal LM's brier). Empty when the store has no complete checkpoint."""
    rows = []
    for pick in ("ths", "tll"):
        try:
            c = store.select(pick)
        except LookupError:  # NoCheckpointError: no complete checkpoint, nothing to compare
            return []
        rows.append({"pick": pick, "checkpoint": c.name, "metric": c.metric, "val_loss": c.val_loss,
                     "val_score": c.val_score, **{k: c.val_scores.get(k) for k in CALIBRATION_KEYS}})
    return rows
