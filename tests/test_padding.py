"""The one ragged-row padder (logitstore.store.padded / pad_batch) against hand-written batches."""
from __future__ import annotations

import numpy as np

from logitstore.padding import pad_batch, padded
from logitstore.store import ragged


def test_padded_rows_in_the_order_asked_with_fill_and_mask():
    flat, offsets = ragged([[5, 6, 7], [8], [9, 10]], np.int32)
    values, mask = padded(flat, offsets, np.array([2, 0, 1]), fill=-1)
    np.testing.assert_array_equal(values, [[9, 10, -1], [5, 6, 7], [8, -1, -1]])
    np.testing.assert_array_equal(mask, [[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    assert values.dtype == np.int32
    labels = np.arange(12).reshape(6, 2)  # (T, 2): trailing axes are carried along
    got, _ = padded(labels, offsets, np.array([1, 2]), fill=0)
    np.testing.assert_array_equal(got, [[[6, 7], [0, 0]], [[8, 9], [10, 11]]])


def test_pad_batch_gives_the_graphs_int64_feed():
    flat, offsets = ragged([[5, 6, 7], [8]], np.int32)
    types, _ = ragged([[0, 1, 1], [1]], np.int8)
    feed = pad_batch(flat, offsets, types, np.array([1, 0]), 0, ("input_ids", "attention_mask", "token_type_ids"))
    np.testing.assert_array_equal(feed["input_ids"], [[8, 0, 0], [5, 6, 7]])
    np.testing.assert_array_equal(feed["attention_mask"], [[1, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(feed["token_type_ids"], [[1, 0, 0], [0, 1, 1]])
    assert all(v.dtype == np.int64 for v in feed.values())
    assert list(pad_batch(flat, offsets, None, np.array([0]), 0, ("input_ids", "attention_mask"))) == \
        ["input_ids", "attention_mask"]
