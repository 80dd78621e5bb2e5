"""Seeded train/validation/test files from the demo's two real corpora: Rotten Tomatoes
snippets (CSV: text, label) and WNUT-16 tweets (JSONL: tokens, ner_tags).

Both shuffle with a seed, keep the first ``limit`` examples and cut them by ``fractions``
(logitstore.util.seeded_split), so a given seed always writes the same files.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from demo.corpora import read_rotten_tomatoes
from logitstore.errors import DataError
from logitstore.tasks.ner import read_conll
from logitstore.util import seeded_split

T = TypeVar("T")


def _parts(items: Sequence[T], fractions: Sequence[float], seed: int, limit: int | None) -> dict[str, list[T]]:
    """``items`` shuffled with ``seed``, cut to ``limit`` and split by ``fractions``."""
    return {name: [items[i] for i in part]
            for name, part in zip(("train", "validation", "test"), seeded_split(len(items), fractions, seed, limit))}


def _dedupe(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(text, label) pairs with whitespace collapsed, each text once (its first label), texts
    seen with two different labels and empty texts dropped; order of first occurrence kept."""
    seen: dict[str, str] = {}
    conflicts: set[str] = set()
    for text, label in pairs:
        text = " ".join(text.split())
        if text in seen and seen[text] != label:
            conflicts.add(text)
        seen.setdefault(text, label)
    return [(t, lab) for t, lab in seen.items() if t not in conflicts and t]


def text_splits(pairs: Iterable[tuple[str, str]], out: Path, limit: int | None = None, seed: int = 0,
                fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Path:
    """Write train/validation/test CSVs (text, label) from (text, label) pairs.

    Texts are deduplicated (first occurrence kept, conflicting labels dropped), shuffled
    with ``seed``, cut to ``limit`` examples, and split by ``fractions``.
    """
    parts = _parts(_dedupe(pairs), fractions, seed, limit)
    out.mkdir(parents=True, exist_ok=True)
    for split, part in parts.items():
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["text", "label"])
        w.writerows(part)
        (out / f"{split}.csv").write_text(buf.getvalue(), encoding="utf-8")
    return out


def rotten_tomatoes_splits(corpus_bz2: Path, out: Path, limit: int | None = None, seed: int = 0,
                           fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Path:
    """text_splits of the Rotten Tomatoes corpus (a bz2 CSV with text and category columns)."""
    return text_splits(read_rotten_tomatoes([Path(corpus_bz2)]), out, limit, seed, fractions)


def wnut_splits(ner_txt: Path, out: Path, limit: int | None = None, seed: int = 0,
                fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Path:
    """Write train/validation/test JSONL ({"tokens", "ner_tags"}) from a CoNLL file.

    Sentences are shuffled with ``seed``, cut to ``limit`` and split by ``fractions``.
    Raises DataError for bad fractions or a split that would be empty.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1; got {fractions} instead")
    parts = _parts(read_conll(Path(ner_txt)), fractions, seed, limit)
    empty = [name for name, part in parts.items() if not part]
    if empty:
        kept = sum(map(len, parts.values()))
        raise DataError(f"{kept} sentences split by {tuple(fractions)} leave {', '.join(empty)} empty; "
                        "raise the limit or change the fractions")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, part in parts.items():
        lines = (json.dumps({"tokens": toks, "ner_tags": tags}, ensure_ascii=False) for toks, tags in part)
        (out / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return out
