"""Metrics and the cross-entropy on numpy arrays, the building blocks of each task's
``scores`` (logitstore/tasks/): the validation loss and the task metrics that both the
store (per teacher checkpoint) and the student trainer report."""
from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

from logitstore.errors import DataError


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (N, C) float logits, computed in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of ``labels`` (N,) under ``logits`` (N, C)."""
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean())


def macro_f1(pred: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    scores = []
    for c in range(num_labels):
        tp = int(((pred == c) & (labels == c)).sum())
        fp = int(((pred == c) & (labels != c)).sum())
        fn = int(((pred != c) & (labels == c)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def _normalize(s: str) -> str:
    """SQuAD v1.1 answer normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


_PUNCT = set(string.punctuation)


def _f1(pred: str, gold: str) -> float:
    p, g = _normalize(pred).split(), _normalize(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """SQuAD v1.1 exact match and token F1 as fractions in [0, 1] (max over gold answers, mean over questions)."""
    if len(predictions) != len(answers):
        raise DataError(f"got {len(predictions)} predictions for {len(answers)} questions; pass one per question")
    if not predictions:
        raise DataError("no predictions to score; pass at least one question")
    em = f1 = 0.0
    for q, (pred, golds) in enumerate(zip(predictions, answers)):
        if not golds:
            raise DataError(f"question {q} has no gold answer; drop unanswerable questions before scoring")
        em += max(float(_normalize(pred) == _normalize(g)) for g in golds)
        f1 += max(_f1(pred, g) for g in golds)
    return {"exact_match": em / len(predictions), "f1": f1 / len(predictions)}
