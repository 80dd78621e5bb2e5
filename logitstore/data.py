"""Load a labelled text dataset and tokenize it once into ragged token ids (task-independent parts).

Accepted ``--data``: a CSV / JSON / JSONL / parquet file (one split, "train"), a folder of
such files named by split (train.csv, validation.jsonl, test.parquet; "valid" and "dev"
mean validation), a ``datasets`` save_to_disk folder, or a hub dataset name where a hub
is reachable. A dataset without a validation split is split with a seed.

What a task reads (its columns, extra file types such as CoNLL or SQuAD JSON), how its
labels resolve and how it tokenizes are the task's methods (logitstore/tasks/).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from logitstore.errors import DataError
from logitstore.store import SplitData
from logitstore.tasks import Task
from logitstore.util import seeded_split, sha256_file

#: File types every task reads, and the datasets builder that reads them.
_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}
#: A build warns when ``--max-length`` cuts more than this fraction of a split's rows.
TRUNCATION_WARN_FRACTION = 0.05


@dataclass(frozen=True)
class DataConfig:
    """Where the data is, which task reads it and how."""

    source: str
    task: Task
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    validation_split: str = "validation"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    max_length: int = 128
    stride: int = 32  # QA: tokens shared by consecutive windows of a long context

    def __post_init__(self) -> None:
        problems = self.task.config_problems(self)
        if not 1 <= len(self.text_columns) <= 2:
            problems.append(f"text columns must be one or two (a text pair); got {list(self.text_columns)} instead")
        if self.max_length < 8:
            problems.append(f"max length must be >= 8; got {self.max_length} instead")
        f = self.split_fractions
        if len(f) != 3 or any(x < 0 for x in f) or abs(sum(f) - 1) > 1e-6 or f[1] <= 0:
            problems.append(f"split fractions must be three non-negative numbers summing to 1 with validation > 0; got {f} instead")
        if problems:
            raise DataError("; ".join(problems))


def load_splits(cfg: DataConfig) -> dict[str, Any]:
    """Read every split as a ``datasets.Dataset`` (no tokenization yet).

    Adds a column ``__example_id`` = row number in the split it came from (or in the one
    split that was divided). Raises DataError for unreadable data or missing columns.
    """
    import datasets

    datasets.disable_progress_bars()
    src = Path(cfg.source)
    try:
        if src.is_dir() and ((src / "dataset_dict.json").exists() or (src / "state.json").exists()):
            loaded = datasets.load_from_disk(str(src))
            dd = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        elif src.is_file():
            dd = {"train": _load_files(src.suffix, [src], "train", cfg.task)}
        elif src.is_dir():
            files: dict[str, list[Path]] = {}
            for f in sorted(src.iterdir()):
                if f.suffix in _BUILDERS or f.suffix in cfg.task.file_suffixes:
                    files.setdefault(_ALIASES.get(f.stem, f.stem), []).append(f)
            if not files:
                raise DataError(f"{src} holds no .csv/.json/.jsonl/.parquet files or save_to_disk dataset; point --data at one")
            dd = {name: _load_files(fs[0].suffix, fs, name, cfg.task) for name, fs in files.items()}
        elif src.suffix in _BUILDERS or src.suffix in cfg.task.file_suffixes or cfg.source.startswith((".", "/", "~")):
            raise DataError(f"data path {src} does not exist; pass a file, a folder or a dataset name")
        else:
            try:
                dd = dict(datasets.load_dataset(cfg.source))
            except Exception as exc:
                raise DataError(
                    f"{cfg.source!r} is not a local path and could not be loaded as a hub dataset "
                    f"({type(exc).__name__}); pass a local file or folder"
                ) from exc
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read data {cfg.source} ({type(exc).__name__}: {exc}); check the path or format") from exc
    dd = {_ALIASES.get(k, k): v.add_column("__example_id", list(range(len(v)))) for k, v in dd.items()}
    for name, ds in dd.items():
        missing = [c for c in (*cfg.text_columns, cfg.label_column) if c and c not in ds.column_names]  # causal-lm: no label column
        if missing:
            raise DataError(
                f"split {name!r} has no column {', '.join(map(repr, missing))} (columns: {', '.join(ds.column_names[:-1])}); "
                "name the right ones with --text-column / --label-column"
            )
        if len(ds) == 0:
            raise DataError(f"split {name!r} is empty; remove its file or add examples")
    if cfg.validation_split not in dd:
        dd = _seeded_split(dd, cfg)
    return dd


def _load_files(suffix: str, files: Sequence[Path], split: str, task: Task) -> Any:
    import datasets

    own = task.read_files(suffix, files)  # CoNLL for NER, official SQuAD JSON for QA
    if own is not None:
        return own
    builder = _BUILDERS.get(suffix)
    if builder is None:
        from logitstore.tasks import TASKS

        readers = [t.name for t in TASKS.values() if suffix in t.file_suffixes]
        hint = f" ({suffix} files: {', '.join(readers)} only, --task {readers[0]})" if readers else ""
        raise DataError(f"unsupported data file type {suffix!r} for {task.name}; use .csv, .json, .jsonl or "
                        f".parquet{hint}")
    # Faults (issue 10): CSV headers are checked for duplicate columns, words such as "NA" or
    # "null" stay words, and unreadable files are named with their problem (logitstore/csvfiles.py).
    from logitstore.csvfiles import check_header, csv_options, quiet_datasets, read_error

    if builder == "csv":
        for f in files:
            check_header(f)
    try:
        with quiet_datasets():
            return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                         **(csv_options() if builder == "csv" else {}))
    except Exception as exc:
        if suffix != ".parquet" and all(len(f.read_text(errors="replace").strip().splitlines()) <= 1 for f in files):
            raise DataError(f"split {split!r} is empty ({', '.join(f.name for f in files)}); remove its file or add examples")
        raise read_error(exc, builder, files) from exc


def _seeded_split(dd: dict[str, Any], cfg: DataConfig) -> dict[str, Any]:
    if len(dd) != 1:
        raise DataError(
            f"no split named {cfg.validation_split!r} (splits: {', '.join(dd)}); name it with --validation-split"
        )
    (only,) = dd.values()
    train, val, test = seeded_split(len(only), cfg.split_fractions, cfg.split_seed, min_validation=1)
    parts = {"train": train, cfg.validation_split: val, "test": test}
    return {k: only.select(np.sort(v)) for k, v in parts.items() if len(v) > 0}


def source_file(source: str) -> dict[str, Any] | None:
    """What a store records about ``--data`` when it is one file, whose row numbers every
    split's ``example_id`` holds: its absolute ``path``, ``sha256`` and ``bytes``; None for
    a folder or a dataset name."""
    path = Path(source)
    if not path.is_file():
        return None
    return {"path": str(path.resolve()), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def read_source(path: Path, task: Task) -> Any:
    """One data file read as a build reads ``--data FILE`` (a ``datasets.Dataset``): row i
    is the example whose ``example_id`` is i. Raises DataError when it cannot be read."""
    return _load_files(path.suffix, [path], "train", task)


def truncation_warning(split: SplitData, max_length: int) -> str | None:
    """A warning when ``max_length`` cut more than TRUNCATION_WARN_FRACTION of the split's
    rows (its ``truncated_rows``), else None."""
    cut, rows = split.truncated_rows or 0, len(split)
    if cut <= TRUNCATION_WARN_FRACTION * rows:
        return None
    return (f"--max-length {max_length} cuts {cut:,} of the {rows:,} rows of split {split.name!r} ({cut / rows:.1%}, "
            f"over {TRUNCATION_WARN_FRACTION:.0%}): teacher and student never see their end; raise --max-length "
            "to keep them whole")


def tokenize_split(name: str, ds: Any, tokenizer: Any, cfg: DataConfig, label_map: dict[Any, int],
                   input_names: Sequence[str]) -> tuple[SplitData, str]:
    """Tokenize one split into the store's ragged layout (the task's rule); returns it and
    its content sha256 (texts, mapped labels and example ids: what the store depends on).
    The unlabelled ``transfer`` split gets labels -100 (logitstore/transfer.py)."""
    from logitstore.transfer import TRANSFER_SPLIT, tokenize_transfer

    if name == TRANSFER_SPLIT:
        return tokenize_transfer(ds, tokenizer, cfg, label_map, input_names)
    return cfg.task.tokenize(name, ds, tokenizer, cfg, label_map, input_names)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what decides token ids: vocabulary, special tokens, class and how a probe
    text tokenizes (catches normalisation changes such as lower-casing)."""
    probe = "Hello World! Ünïcode, numbers 12345 and CamelCase words."
    payload = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "probe": tokenizer(probe)["input_ids"],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def dataset_fingerprint(split_hashes: dict[str, str], cfg: DataConfig) -> str:
    payload = {"splits": dict(sorted(split_hashes.items())), "text_columns": list(cfg.text_columns),
               "label_column": cfg.label_column, "max_length": cfg.max_length, **cfg.task.fingerprint(cfg)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
