"""The one ragged-row padder: rows of a split's ragged arrays (flat + offsets, see
:class:`logitstore.store.SplitData`) right-padded into batches. The teacher's inference
feeds, the export's parity sample and the students' batches all use it."""
from __future__ import annotations

from typing import Any

import numpy as np


def padded(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, fill: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``rows`` (B,) of a ragged array (``flat`` (T, ...) end to end, ``offsets``
    (R+1,)) right-padded with ``fill`` to the longest of them: (values (B, W, ...) of
    ``flat``'s dtype, mask (B, W) bool, True on real positions). The one ragged-row padder
    of the project: the teacher's inference feeds and the students' batches use it."""
    starts = offsets[rows]  # (B,)
    lengths = offsets[rows + 1] - starts  # (B,)
    pos = np.arange(int(lengths.max()))[None, :]  # (1, W)
    mask = pos < lengths[:, None]  # (B, W)
    values = flat[np.where(mask, starts[:, None] + pos, 0)]  # (B, W, ...) a copy
    values[~mask] = fill
    return values, mask


def pad_batch(input_ids: np.ndarray, offsets: np.ndarray, token_type_ids: np.ndarray | None, rows: np.ndarray,
              pad_id: int, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The int64 feed the graph declares (``names``) for ``rows`` of a split's ragged
    arrays, right-padded to the longest row: input_ids, attention_mask, token_type_ids
    (zeros when the split has none), each (B, T)."""
    ids, mask = padded(input_ids, offsets, rows, pad_id)  # (B, T), (B, T)
    types = np.zeros_like(ids) if token_type_ids is None else padded(token_type_ids, offsets, rows, 0)[0]
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {n: feed[n].astype(np.int64) for n in names}
