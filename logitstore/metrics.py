"""Task metrics and the validation loss, on numpy arrays (shared by both sides)."""
from __future__ import annotations

from typing import Any

import numpy as np

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


def classification_scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """loss, accuracy and macro_f1 of (N, C) logits against (N,) gold labels."""
    pred = logits.argmax(axis=-1)
    return {"loss": cross_entropy(logits, labels), "accuracy": accuracy(pred, labels),
            "macro_f1": macro_f1(pred, labels, logits.shape[-1])}


def task_scores(task: str, logits: np.ndarray, split: Any, label_names: list[str]) -> dict[str, float]:
    """The validation loss ("loss") and every metric of ``task`` for logits in the store's
    layout of ``split`` (a SplitData): (R, C) per row, or (T, C) per token.

    * sequence classification: mean CE over rows; accuracy, macro-F1;
    * token classification: mean CE over labelled tokens; entity-level precision, recall
      and F1 (conlleval rules, logitstore.ner.entity_scores) over the labelled positions
      (the first sub-token of each word), and token accuracy;
    * question answering: mean over windows of (CE(start) + CE(end)) / 2, each a softmax
      over the window's tokens; exact match and F1 (SQuAD v1.1 rules) of the best span
      of each question over all its windows.
    """
    if task == "sequence-classification":
        return classification_scores(logits, split.labels)
    if task == "token-classification":
        return _token_scores(logits, split, label_names)
    if task == "question-answering":
        return _qa_scores(logits, split)
    raise ValueError(f"unknown task {task!r}")


def _token_scores(logits: np.ndarray, split: Any, names: list[str]) -> dict[str, float]:
    from logitstore.ner import entity_scores
    from logitstore.tasks import IGNORE

    labels = split.labels  # (T,)
    mask = labels != IGNORE  # (T,)
    pred = logits.argmax(axis=-1)  # (T,)
    gold_seqs, pred_seqs = [], []
    for a, b in zip(split.offsets[:-1], split.offsets[1:]):
        m = mask[a:b]
        gold_seqs.append([names[x] for x in labels[a:b][m]])
        pred_seqs.append([names[x] for x in pred[a:b][m]])
    return {"loss": cross_entropy(logits[mask], labels[mask]), **entity_scores(gold_seqs, pred_seqs),
            "accuracy": accuracy(pred[mask], labels[mask])}


def _qa_scores(logits: np.ndarray, split: Any) -> dict[str, float]:
    from logitstore.qa import Windows, best_spans, squad_scores

    starts, ends, ce = [], [], 0.0
    for r, (a, b) in enumerate(zip(split.offsets[:-1], split.offsets[1:])):
        win = logits[a:b]  # (L, 2)
        ls = log_softmax(win.T)  # (2, L): start and end distributions over the window's tokens
        ce -= (ls[0, split.labels[r, 0]] + ls[1, split.labels[r, 1]]) / 2
        starts.append(win[:, 0])
        ends.append(win[:, 1])
    windows = Windows(split.input_ids, split.offsets, split.token_type_ids, split.offset_mapping, split.window_of,
                      split.labels)
    preds = best_spans(starts, ends, windows, split.contexts)
    return {"loss": float(ce / len(split)), **squad_scores(preds, split.answers)}
