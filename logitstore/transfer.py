"""The ``transfer`` split (issue 14): unlabelled texts the teacher labels with its logits.

`logitstore build --data ... --transfer FILE_OR_FOLDER` reads more texts (the same text
columns, the same tokenizer and ``--max-length`` as the labelled splits), tokenizes them
into a split named ``transfer`` and runs every teacher checkpoint over it. The split holds
no gold labels: its ``labels`` array holds -100 (IGNORE, the project's "no label" value)
except where the task marks a position to distil (``Task.transfer_marker``: NER stores -2,
UNLABELLED, at each word's first sub-token); any label column in the files is dropped
unread, and nothing that needs labels uses it (no split_scores, validation loss, score or
calibration; ths / tll never look at it). Students train on it with `students train
--transfer` (students/transfer.py).

Tasks say whether they take it (``Task.transfer_split``): sequence classification (texts;
every row -100), NER (sentences as word lists, the ``tokens`` column without
``ner_tags``; -2 at each word's first sub-token, -100 elsewhere, the teacher's logits on
every token) and extractive QA ((question, context) pairs without answers, cut into
windows with the labelled splits' --max-length and --stride; every window's start and end
-100, no answers kept, the teacher's start and end logits on every token). The causal LM
does not: its train split is already unlabelled text.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from logitstore.errors import DataError
from logitstore.store import SplitData
from logitstore.tasks import IGNORE

#: The split name of the unlabelled transfer data in a store.
TRANSFER_SPLIT = "transfer"
#: `logitstore build --transfer` help.
TRANSFER_HELP = ("unlabelled texts (CSV/JSON/JSONL/parquet with the --data text columns; a label column is ignored) "
                 "written as a split named transfer with the teacher's logits and no labels, for `students train "
                 "--transfer` (sequence classification, NER, extractive QA)")


def supports_transfer(task: Any) -> bool:
    """Whether a store of ``task`` can hold a transfer split (``Task.transfer_split``)."""
    return bool(task.transfer_split)


def transfer_tasks() -> str:
    """The names of the tasks whose stores can hold a transfer split, for messages."""
    from logitstore.tasks import TASKS

    return ", ".join(t.name for t in TASKS.values() if t.transfer_split)


def read_transfer(source: str | Path, cfg: Any) -> Any:
    """The transfer texts as one ``datasets.Dataset``: a .csv/.json/.jsonl/.parquet file, or
    every such file of a folder (concatenated in name order), with ``__example_id`` = row
    number; raises DataError for a missing path, no files, a missing text column or no rows."""
    import datasets

    from logitstore.data import read_source

    src = Path(source)
    if src.is_dir():
        files = sorted(f for f in src.iterdir() if f.suffix in (".csv", ".json", ".jsonl", ".parquet"))
        if not files:
            raise DataError(f"--transfer {src} holds no .csv/.json/.jsonl/.parquet files; point it at one")
        parts = [read_source(f, cfg.task) for f in files]
        ds = datasets.concatenate_datasets([p.select_columns(_columns(p, cfg, f)) for p, f in zip(parts, files)])
    elif src.is_file():
        ds = read_source(src, cfg.task)
        ds = ds.select_columns(_columns(ds, cfg, src))
    else:
        raise DataError(f"--transfer {src} does not exist; pass a file or a folder of unlabelled texts")
    if len(ds) == 0:
        raise DataError(f"--transfer {src} holds no rows; add texts or drop --transfer")
    return ds.add_column("__example_id", list(range(len(ds))))


def _columns(ds: Any, cfg: Any, path: Path) -> list[str]:
    missing = [c for c in cfg.text_columns if c not in ds.column_names]
    if missing:
        raise DataError(f"--transfer file {path} has no column {', '.join(map(repr, missing))} (columns: "
                        f"{', '.join(ds.column_names)}); give it the text columns of --data")
    return list(cfg.text_columns)


def with_transfer(raw: dict[str, Any], source: str | Path | None, cfg: Any) -> dict[str, Any]:
    """The build's splits ``raw`` (label names already resolved from them) and, when ``source``
    is given, the transfer texts read from it last. Raises DataError for a task without
    transfer support, a ``transfer`` split already in ``raw``, or unreadable texts."""
    if source is None:
        return raw
    if not supports_transfer(cfg.task):
        raise DataError(f"--transfer works for {transfer_tasks()} stores only (this is {cfg.task.name}); "
                        "drop --transfer")
    if TRANSFER_SPLIT in raw:
        raise DataError(f"--data already has a split named {TRANSFER_SPLIT!r}; rename it or drop --transfer")
    return {**raw, TRANSFER_SPLIT: read_transfer(source, cfg)}


def tokenize_transfer(ds: Any, tokenizer: Any, cfg: Any, label_map: dict[Any, int],
                      input_names: Sequence[str]) -> tuple[SplitData, str]:
    """The transfer split, tokenized like the labelled ones (the task's ``tokenize``, the same
    tokenizer and DataConfig), and its content sha256. Its labels, (R,), per token (T,) or QA's
    (R, 2), are the task's ``transfer_marker`` where ``tokenize`` put a label (NER: each word's
    first sub-token) and IGNORE elsewhere, and QA keeps no answer: no gold label survives."""
    # valid labels, only because the task's tokenize needs some: replaced by the marker below
    ds = ds.add_column(cfg.label_column, cfg.task.placeholder_labels(ds, cfg, label_map))
    data, sha = cfg.task.tokenize(TRANSFER_SPLIT, ds, tokenizer, cfg, label_map, input_names)
    labels = np.where(data.labels >= 0, cfg.task.transfer_marker, IGNORE).astype(np.int64)  # (R,), (T,) or (R, 2)
    answers = None if data.answers is None else [[] for _ in data.answers]  # QA: the placeholders go too
    return replace(data, labels=labels, answers=answers), sha


def labelled(names: Sequence[str]) -> list[str]:
    """``names`` without the transfer split: the splits whose labels can be scored."""
    return [n for n in names if n != TRANSFER_SPLIT]
