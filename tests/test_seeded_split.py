"""The seeded train/validation/test splits, pinned: the same seed puts the same rows in the
same splits (and, for the demo's split writers, in the same order) as it always did.

Three writers share one shuffle-and-cut rule: ``load_splits`` dividing a single split,
the demo's Rotten Tomatoes CSV splits and its WNUT-16 JSONL splits. The expected lists
were recorded before that rule moved into one helper.
"""
from __future__ import annotations

import bz2
import json

import pytest

from demo.splits import rotten_tomatoes_splits, wnut_splits
from logitstore.data import DataConfig, load_splits
from logitstore.tasks import get_task


@pytest.mark.parametrize("rows, seed, fractions, expected", [
    (23, 5, (0.6, 0.2, 0.2), {"train": [1, 2, 3, 6, 7, 9, 11, 12, 16, 17, 18, 19, 21, 22],
                              "validation": [4, 10, 13, 15, 20], "test": [0, 5, 8, 14]}),
    (23, 0, (0.8, 0.1, 0.1), {"train": [0, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 16, 18, 19, 20, 21, 22],
                              "validation": [14, 17], "test": [1, 9, 15]}),
    # validation gets at least one row; an empty test split is left out
    (7, 2, (0.9, 0.05, 0.05), {"train": [0, 2, 3, 4, 5, 6], "validation": [1]}),
])
def test_load_splits_divides_one_split_as_before(tmp_path, rows, seed, fractions, expected):
    path = tmp_path / "one.csv"
    path.write_text("text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(rows)))
    dd = load_splits(DataConfig(str(path), get_task("classification"), split_seed=seed, split_fractions=fractions))
    assert {name: list(ds["__example_id"]) for name, ds in dd.items()} == expected


@pytest.mark.parametrize("seed, limit, expected", [
    (1, None, {"train": [2, 11, 19, 17, 8, 12, 13, 18, 16, 3, 4, 5, 6, 9, 0], "validation": [10, 15],
               "test": [14, 7]}),
    (4, 12, {"train": [0, 14, 9, 11, 18, 6, 8, 10, 2, 16], "validation": [3], "test": [19]}),
])
def test_rotten_tomatoes_splits_as_before(tmp_path, seed, limit, expected):
    corpus = ("text,category\n" + "".join(f"snippet number {i},{['fresh', 'rotten', 'plot'][i % 3]}\n"
                                           for i in range(20))
              + "snippet number 0,fresh\nsnippet number 1,fresh\n")  # a duplicate and a label conflict
    (tmp_path / "rt.csv.bz2").write_bytes(bz2.compress(corpus.encode()))
    out = rotten_tomatoes_splits(tmp_path / "rt.csv.bz2", tmp_path / "rt", limit=limit, seed=seed)
    got = {s: [int(line.split(",")[0].split()[-1]) for line in (out / f"{s}.csv").read_text().splitlines()[1:]]
           for s in ("train", "validation", "test")}
    assert got == expected


@pytest.mark.parametrize("seed, limit, expected", [
    (0, None, {"train": [10, 18, 16, 4, 2, 12, 6, 19, 3, 11, 8, 0, 17, 13, 7, 20, 5], "validation": [14, 9],
               "test": [1, 15]}),
    (7, 15, {"train": [3, 8, 13, 10, 15, 17, 16, 12, 1, 14, 6, 0], "validation": [7, 4], "test": [19]}),
])
def test_wnut_splits_as_before(tmp_path, seed, limit, expected):
    (tmp_path / "ner.txt").write_text("".join(f"w{i} O\nx{i} B-thing\n\n" for i in range(21)))
    out = wnut_splits(tmp_path / "ner.txt", tmp_path / "ner", limit=limit, seed=seed)
    got = {s: [int(json.loads(line)["tokens"][0][1:]) for line in (out / f"{s}.jsonl").read_text().splitlines()]
           for s in ("train", "validation", "test")}
    assert got == expected
