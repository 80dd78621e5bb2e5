"""ONNX Runtime inference over ragged token ids, batched by length under a token budget.

Rows are sorted by length and cut into batches whose padded size (rows x longest row)
stays under ``token_budget``, so almost no padding is computed; the logits come back in
the order the rows were given. Sessions (provider choice, threads) are made by
:func:`logitstore.runtime.make_session`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

# Sessions are made in logitstore.runtime; make_session stays importable from here (build, benchmarks).
from logitstore.runtime import Session, make_session  # noqa: F401
from logitstore.padding import pad_batch


def plan_batches(lengths: np.ndarray, token_budget: int, max_batch: int = 512) -> list[np.ndarray]:
    """Index batches (into ``lengths``) sorted by length, each with rows x longest <= budget
    (a single row longer than the budget gets a batch of its own)."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and stop - start < max_batch and (stop - start + 1) * lengths[order[stop]] <= token_budget:
            stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


def infer_rows(session: Session, input_ids: np.ndarray, offsets: np.ndarray, token_type_ids: np.ndarray | None,
               rows: np.ndarray, pad_id: int, token_budget: int, on_batch: Any = None,
               per_token: bool = False) -> np.ndarray:
    """Logits for the given row numbers, in that order: (len(rows), C) float32, or with
    ``per_token`` (a graph whose logits are (B, T, C)) the rows' tokens end to end,
    (sum of their lengths, C), without padding.

    ``input_ids``/``offsets``/``token_type_ids`` are a split's ragged arrays (see SplitData).
    ``on_batch(n)`` is called after each batch with the number of rows done.
    """
    lengths = offsets[rows + 1] - offsets[rows]
    starts = np.concatenate([[0], np.cumsum(lengths)])  # (n+1,) where each row's tokens go in the output
    out: np.ndarray | None = None
    for batch in plan_batches(lengths, token_budget):
        feed = pad_batch(input_ids, offsets, token_type_ids, rows[batch], pad_id, session.input_names)
        logits = session.run(feed).astype(np.float32)
        if out is None:
            out = np.empty((int(starts[-1]) if per_token else len(rows), logits.shape[-1]), dtype=np.float32)
        if per_token:  # logits (B, T, C): keep each row's own tokens
            for j, i in enumerate(batch):
                out[starts[i]:starts[i + 1]] = logits[j, :lengths[i]]
        else:  # logits (B, C)
            out[batch] = logits
        if on_batch is not None:
            on_batch(len(batch))
    assert out is not None
    return out
