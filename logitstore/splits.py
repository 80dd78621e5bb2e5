"""`logitstore splits`: write the splits a build made back out as data files, with the
source file's original columns (e.g. to fine-tune the teacher on exactly the train split).

A store keeps token ids, not texts. When ``--data`` was one file, the store records that
file's path, sha256 and size (StoreMeta ``source_file``), and every split's ``example_id``
is a row number in it. This module reads the file again the way the build read it,
checks its sha256 (a changed file's row numbers point at other rows), and writes each
split's rows, in the store's order, to ``DIR/<split>.csv`` or ``DIR/<split>.jsonl``.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from logitstore.errors import DataError
from logitstore.store import open_store
from logitstore.tasks import get_task
from logitstore.transfer import labelled
from logitstore.util import sha256_file

FORMATS = ("csv", "jsonl")


def export_splits(store_path: Path, out: Path, fmt: str | None = None,
                  data: Path | None = None) -> dict[str, tuple[Path, int]]:
    """Write every complete split of the store at ``store_path`` into ``out`` (created) as
    ``<split>.<fmt>``; ``fmt`` None: csv for a .csv source, else jsonl. ``data``: the source
    file's path when it moved (its sha256 must still match). Returns, per split, the file
    written and its rows (examples: a QA example's windows are one row).

    Raises DataError when the store records no source file, the file is gone or changed, or
    a column holds lists (CSV cannot: use jsonl); StoreCorruptError for a damaged store."""
    store = open_store(store_path)
    src = store.meta.source_file
    if not src:
        raise DataError(f"store {store_path} records no source file: it was built from a folder of split files or a "
                        "dataset (whose splits are those files), or before stores recorded it; rebuild it from the "
                        "one file to export the splits it makes")
    path = Path(data or src["path"])
    if not path.is_file():
        raise DataError(f"the source file of store {store_path}, {path}, is gone; pass where it is now with --data")
    if sha256_file(path) != src["sha256"]:
        raise DataError(f"{path} changed since store {store_path} was built (its sha256 differs), so the store's row "
                        "numbers no longer point at the same rows; restore the file or pass the original with --data")
    fmt = fmt or ("csv" if path.suffix == ".csv" else "jsonl")
    if fmt not in FORMATS:
        raise DataError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r} instead")
    from logitstore.data import read_source

    ds = read_source(path, get_task(store.meta.task))
    columns = [c for c in ds.column_names if c != "__example_id"]
    if fmt == "csv":
        nested = [c for c in columns if not _flat(ds.features[c])]
        if nested:
            raise DataError(f"column {', '.join(map(repr, nested))} holds lists or records, which CSV cannot; "
                            "use --format jsonl")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in labelled(store.split_names()):  # not transfer: its rows come from --transfer, not this file
        ids = _examples(store.read_split(name).example_ids)
        if len(ids) and int(ids.max()) >= len(ds):
            raise DataError(f"split {name!r} of store {store_path} names row {int(ids.max())} but {path} has "
                            f"{len(ds)} rows; pass the file the store was built from with --data")
        written[name] = (out / f"{name}.{fmt}", len(ids))
        _write(written[name][0], ds.select(ids).select_columns(columns), columns, fmt)
    return written


def _examples(example_ids: np.ndarray) -> np.ndarray:
    """The split's examples in order: rows, or for windowed tasks (QA) one per run of
    windows of the same example (its windows are consecutive rows)."""
    if len(example_ids) == 0:
        return example_ids
    first = np.concatenate([[True], example_ids[1:] != example_ids[:-1]])
    return example_ids[first]


def _flat(feature: Any) -> bool:
    import datasets

    return isinstance(feature, (datasets.Value, datasets.ClassLabel))


def _write(path: Path, rows: Any, columns: list[str], fmt: str) -> None:
    """Write ``rows`` (a datasets.Dataset) to ``path`` atomically (a temporary file, renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        if fmt == "csv":
            w = csv.writer(f)
            w.writerow(columns)
            for row in rows:
                w.writerow(["" if row[c] is None else row[c] for c in columns])
        else:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
