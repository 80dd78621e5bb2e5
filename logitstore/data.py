"""Load a labelled text dataset, map its labels, tokenize it once into ragged token ids.

Accepted ``--data``: a CSV / JSON / JSONL / parquet file (one split, "train"), a folder of
such files named by split (train.csv, validation.jsonl, test.parquet; "valid" and "dev"
mean validation), a ``datasets`` save_to_disk folder, or a hub dataset name where a hub
is reachable. A dataset without a validation split is split with a seed.
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

_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to read it."""

    source: str
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    validation_split: str = "validation"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    max_length: int = 128

    def __post_init__(self) -> None:
        problems = []
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
            dd = {"train": _load_files(src.suffix, [src], "train")}
        elif src.is_dir():
            files: dict[str, list[Path]] = {}
            for f in sorted(src.iterdir()):
                if f.suffix in _BUILDERS:
                    files.setdefault(_ALIASES.get(f.stem, f.stem), []).append(f)
            if not files:
                raise DataError(f"{src} holds no .csv/.json/.jsonl/.parquet files or save_to_disk dataset; point --data at one")
            dd = {name: _load_files(fs[0].suffix, fs, name) for name, fs in files.items()}
        elif src.suffix in _BUILDERS or cfg.source.startswith((".", "/", "~")):
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
        missing = [c for c in (*cfg.text_columns, cfg.label_column) if c not in ds.column_names]
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


def _load_files(suffix: str, files: Sequence[Path], split: str) -> Any:
    import datasets

    builder = _BUILDERS.get(suffix)
    if builder is None:
        raise DataError(f"unsupported data file type {suffix!r}; use .csv, .json, .jsonl or .parquet")
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception:
        if suffix != ".parquet" and all(len(f.read_text(errors="replace").strip().splitlines()) <= 1 for f in files):
            raise DataError(f"split {split!r} is empty ({', '.join(f.name for f in files)}); remove its file or add examples")
        raise


def _seeded_split(dd: dict[str, Any], cfg: DataConfig) -> dict[str, Any]:
    if len(dd) != 1:
        raise DataError(
            f"no split named {cfg.validation_split!r} (splits: {', '.join(dd)}); name it with --validation-split"
        )
    (only,) = dd.values()
    n = len(only)
    order = np.random.default_rng(cfg.split_seed).permutation(n)
    n_train = int(round(cfg.split_fractions[0] * n))
    n_val = max(1, int(round(cfg.split_fractions[1] * n)))
    parts = {"train": order[:n_train], cfg.validation_split: order[n_train:n_train + n_val],
             "test": order[n_train + n_val:]}
    return {k: only.select(np.sort(v)) for k, v in parts.items() if len(v) > 0}


def resolve_labels(dd: dict[str, Any], label_column: str,
                   model_names: list[str] | None) -> tuple[list[str], dict[Any, int]]:
    """Label names of the store and a map from the dataset's label values to ids.

    ``model_names`` (the teacher's ``id2label``, or ``--labels``) wins when it has real
    names; then string labels must be among them. With generic names (LABEL_0...),
    string labels are sorted and must be as many as the teacher's outputs; integer labels
    must lie in [0, num_labels). With no names at all (a store of token ids only), the
    data's own label set is used: ClassLabel names, sorted strings, or 0..max for ints.
    Raises DataError naming the unknown labels.
    """
    import datasets

    feature = next(iter(dd.values())).features[label_column]
    if model_names is None:
        model_names = _data_label_names(dd, label_column, feature)
    n = len(model_names)
    generic = all(name == f"LABEL_{i}" for i, name in enumerate(model_names))
    if isinstance(feature, datasets.ClassLabel):
        values: set[Any] = set(feature.names)
        mapper_src = {i: name for i, name in enumerate(feature.names)}
    else:
        values = set()
        for ds in dd.values():
            values.update(ds.unique(label_column))
        mapper_src = None
    if any(v is None for v in values):
        raise DataError(f"column {label_column!r} has empty labels; fill or drop those rows")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        bad = sorted(v for v in values if not 0 <= v < n)
        if bad:
            raise DataError(f"labels {bad[:5]} are outside the teacher's {n} classes [0, {n}); fix the labels or the teacher")
        return list(model_names), {int(v): int(v) for v in values}
    strings = {str(v) for v in values}
    if generic:
        names = sorted(strings)
        if len(names) != n:
            raise DataError(
                f"the data has {len(names)} labels ({', '.join(names[:8])}) but the teacher has {n} outputs; "
                "use a teacher trained on these labels"
            )
    else:
        names = list(model_names)
        unknown = sorted(strings - set(names))
        if unknown:
            raise DataError(
                f"labels {', '.join(map(repr, unknown[:5]))} are not in the teacher's label set ({', '.join(names)}); "
                "fix the data or use the matching teacher"
            )
    ids = {name: i for i, name in enumerate(names)}
    if mapper_src is not None:
        return names, {k: ids[v] for k, v in mapper_src.items()}
    return names, {v: ids[str(v)] for v in values}


def _data_label_names(dd: dict[str, Any], label_column: str, feature: Any) -> list[str]:
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted({v for ds in dd.values() for v in ds.unique(label_column) if v is not None}, key=str)
    if values and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return [f"LABEL_{i}" for i in range(int(max(values)) + 1)]
    return sorted(str(v) for v in values)


def tokenize_split(name: str, ds: Any, tokenizer: Any, cfg: DataConfig, label_map: dict[Any, int],
                   input_names: Sequence[str]) -> tuple[SplitData, str]:
    """Tokenize one split into ragged token ids; returns it and its content sha256.

    The sha256 covers the texts, mapped labels and example ids (what the store depends on).
    """
    cols = [ds[c] for c in cfg.text_columns]
    for c, texts in zip(cfg.text_columns, cols):
        if any(t is None for t in texts):
            raise DataError(f"split {name!r} has empty values in text column {c!r}; fill or drop those rows")
    raw_labels = ds[cfg.label_column]
    labels = np.fromiter((label_map[v] for v in raw_labels), dtype=np.int64, count=len(raw_labels))
    example_ids = np.asarray(ds["__example_id"], dtype=np.int64)
    enc = tokenizer(*[list(map(str, c)) for c in cols], truncation=True, max_length=cfg.max_length,
                    return_token_type_ids=True)
    ids = enc["input_ids"]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1]))
    tt = None
    if "token_type_ids" in input_names and len(cfg.text_columns) == 2:
        tt = np.fromiter((t for row in enc["token_type_ids"] for t in row), dtype=np.int8, count=int(offsets[-1]))
    h = hashlib.sha256()
    for row in zip(*cols, labels.tolist(), example_ids.tolist()):
        h.update(json.dumps(row, ensure_ascii=False, default=str).encode())
    return SplitData(name, flat, offsets, labels, example_ids, tt), h.hexdigest()


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
               "label_column": cfg.label_column, "max_length": cfg.max_length}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
