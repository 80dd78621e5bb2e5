"""Load a labelled text dataset, map its labels, tokenize it once into ragged token ids.

Accepted ``--data``: a CSV / JSON / JSONL / parquet file (one split, "train"), a folder of
such files named by split (train.csv, validation.jsonl, test.parquet; "valid" and "dev"
mean validation), a ``datasets`` save_to_disk folder, or a hub dataset name where a hub
is reachable. A dataset without a validation split is split with a seed.

Per task (logitstore/tasks.py): sequence classification reads a text column (or two) and
a label column; token classification reads a column of word lists and one of BIO tag
lists (or CoNLL two-column ``.conll`` / ``.txt`` files); question answering reads
question, context and answers columns (SQuAD layout, or the official SQuAD ``.json``).
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
from logitstore.store import SplitData, ragged

_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".conll": "conll",
             ".txt": "conll"}
#: Default (text columns, label column) of each task.
DEFAULT_COLUMNS = {"sequence-classification": (("text",), "label"),
                   "token-classification": (("tokens",), "ner_tags"),
                   "question-answering": (("question", "context"), "answers")}
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
    task: str = "sequence-classification"
    stride: int = 32  # QA: tokens shared by consecutive windows of a long context

    def __post_init__(self) -> None:
        problems = []
        if self.task == "question-answering":
            if not 0 < self.stride < self.max_length // 2:
                problems.append(f"stride must be in (0, max length / 2); got {self.stride} instead")
            if len(self.text_columns) != 2:
                problems.append(f"question answering reads two text columns (question, context); "
                                f"got {list(self.text_columns)} instead")
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
                if f.suffix in _BUILDERS and (_BUILDERS[f.suffix] != "conll" or cfg.task == "token-classification"):
                    files.setdefault(_ALIASES.get(f.stem, f.stem), []).append(f)
            if not files:
                raise DataError(f"{src} holds no .csv/.json/.jsonl/.parquet files or save_to_disk dataset; point --data at one")
            dd = {name: _load_files(fs[0].suffix, fs, name, cfg.task) for name, fs in files.items()}
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


def _load_files(suffix: str, files: Sequence[Path], split: str, task: str = "sequence-classification") -> Any:
    import datasets

    builder = _BUILDERS.get(suffix)
    if builder is None or (builder == "conll" and task != "token-classification"):
        raise DataError(f"unsupported data file type {suffix!r} for {task}; use .csv, .json, .jsonl or .parquet "
                        "(.conll / .txt CoNLL files: token classification only, --task ner)")
    if builder == "conll":
        from logitstore.ner import read_conll

        sentences = [s for f in files for s in read_conll(f)]
        return datasets.Dataset.from_dict({"tokens": [w for w, _ in sentences], "ner_tags": [t for _, t in sentences]})
    if task == "question-answering" and suffix == ".json" and all(_is_squad_json(f) for f in files):
        from logitstore.qa import read_squad

        records = [r for f in files for r in read_squad(f)]
        return datasets.Dataset.from_list(records)
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


def _is_squad_json(path: Path) -> bool:
    """True for the official SQuAD layout ({"data": [{"paragraphs": ...}]})."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # JSON lines, or not JSON: the json builder's business
        return False
    return isinstance(obj, dict) and isinstance(obj.get("data"), list)


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
    if cfg.task == "token-classification":
        return _tokenize_ner(name, ds, tokenizer, cfg, label_map)
    if cfg.task == "question-answering":
        return _tokenize_qa(name, ds, tokenizer, cfg)
    cols = [ds[c] for c in cfg.text_columns]
    for c, texts in zip(cfg.text_columns, cols):
        if any(t is None for t in texts):
            raise DataError(f"split {name!r} has empty values in text column {c!r}; fill or drop those rows")
    raw_labels = ds[cfg.label_column]
    labels = np.fromiter((label_map[v] for v in raw_labels), dtype=np.int64, count=len(raw_labels))
    example_ids = np.asarray(ds["__example_id"], dtype=np.int64)
    enc = tokenizer(*[list(map(str, c)) for c in cols], truncation=True, max_length=cfg.max_length,
                    return_token_type_ids=True)
    flat, offsets = ragged(enc["input_ids"], np.int32)
    tt = None
    if "token_type_ids" in input_names and len(cfg.text_columns) == 2:
        tt, _ = ragged(enc["token_type_ids"], np.int8)
    h = hashlib.sha256()
    for row in zip(*cols, labels.tolist(), example_ids.tolist()):
        h.update(json.dumps(row, ensure_ascii=False, default=str).encode())
    return SplitData(name, flat, offsets, labels, example_ids, tt), h.hexdigest()


def _need_fast(tokenizer: Any, what: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{what} needs a fast (Rust) tokenizer to align words and characters with tokens; "
                        "save the teacher with a tokenizer.json (AutoTokenizer(..., use_fast=True))")


def resolve_tag_labels(dd: dict[str, Any], tag_column: str,
                       model_names: list[str] | None) -> tuple[list[str], dict[Any, int]]:
    """Token classification: the store's BIO label names and a map from the data's tags
    (strings, or ClassLabel ids) to label ids. Every tag sequence must be valid BIO; the
    tags must be among ``model_names`` (the teacher's id2label, or ``--labels``) when given.
    Raises DataError naming the split, row and tag."""
    import datasets

    from logitstore.ner import check_bio, label_names

    feature = next(iter(dd.values())).features[tag_column]
    inner = getattr(feature, "feature", None)
    names_of_ids = list(inner.names) if isinstance(inner, datasets.ClassLabel) else None
    seqs: list[list[str]] = []
    for split, ds in dd.items():
        for i, tags in enumerate(ds[tag_column]):
            if not isinstance(tags, (list, tuple)):
                raise DataError(f"split {split!r} row {i}: column {tag_column!r} holds {type(tags).__name__}, "
                                "not a list of tags; name the tag column with --label-column")
            tags = [names_of_ids[t] for t in tags] if names_of_ids else [str(t) for t in tags]
            check_bio(tags, f"split {split!r} row {i}")
            seqs.append(tags)
    generic = model_names is not None and all(n == f"LABEL_{i}" for i, n in enumerate(model_names))
    if model_names is None or generic:
        names = label_names(seqs)
        if generic and len(names) != len(model_names):
            raise DataError(f"the data has {len(names)} BIO labels but the teacher has {len(model_names)} outputs; "
                            "use a teacher trained on these labels")
    else:
        names = list(model_names)
        unknown = sorted({t for tags in seqs for t in tags} - set(names))
        if unknown:
            raise DataError(
                f"tags {', '.join(map(repr, unknown[:5]))} are not in the teacher's label set ({', '.join(names[:12])}); "
                "fix the data or use the matching teacher"
            )
    ids = {n: i for i, n in enumerate(names)}
    mapping: dict[Any, int] = dict(ids)
    if names_of_ids:
        mapping.update({i: ids[n] for i, n in enumerate(names_of_ids) if n in ids})
    return names, mapping


def _tokenize_ner(name: str, ds: Any, tokenizer: Any, cfg: DataConfig,
                  label_map: dict[Any, int]) -> tuple[SplitData, str]:
    """Words -> sub-word tokens; the first sub-token of each word carries its tag id."""
    from logitstore.ner import align_labels

    _need_fast(tokenizer, "token classification")
    words_col, tags_col = cfg.text_columns[0], cfg.label_column
    words, tags = ds[words_col], ds[tags_col]
    for i, (w, t) in enumerate(zip(words, tags)):
        if not isinstance(w, (list, tuple)) or len(w) != len(t) or not w:
            raise DataError(f"split {name!r} row {i}: {words_col!r} must be a non-empty list of words as long as "
                            f"its {tags_col!r} list ({len(t) if isinstance(t, (list, tuple)) else '?'}); fix the row")
    enc = tokenizer([list(map(str, w)) for w in words], is_split_into_words=True, truncation=True,
                    max_length=cfg.max_length)
    labels = [align_labels(enc.word_ids(i), [label_map[x] for x in t]) for i, t in enumerate(tags)]
    flat, offsets = ragged(enc["input_ids"], np.int32)
    flat_labels, _ = ragged(labels, np.int64)
    example_ids = np.asarray(ds["__example_id"], dtype=np.int64)
    h = hashlib.sha256()
    for row in zip(words, labels, example_ids.tolist()):
        h.update(json.dumps(row, ensure_ascii=False, default=str).encode())
    return SplitData(name, flat, offsets, flat_labels, example_ids), h.hexdigest()


def _tokenize_qa(name: str, ds: Any, tokenizer: Any, cfg: DataConfig) -> tuple[SplitData, str]:
    """(question, context) pairs -> overlapping windows with start/end labels."""
    from logitstore.qa import check_answers, make_windows

    _need_fast(tokenizer, "question answering")
    q_col, c_col = cfg.text_columns
    records = [{"id": str(i), "question": q, "context": c, "answers": a}
               for i, (q, c, a) in enumerate(zip(ds[q_col], ds[c_col], ds[cfg.label_column]))]
    check_answers(records, f"split {name!r}")
    win = make_windows(tokenizer, records, cfg.max_length, cfg.stride)
    example_ids = np.asarray(ds["__example_id"], dtype=np.int64)
    h = hashlib.sha256()
    for r, eid in zip(records, example_ids.tolist()):
        h.update(json.dumps([r["question"], r["context"], r["answers"], eid, cfg.stride], ensure_ascii=False).encode())
    data = SplitData(name, win.input_ids.astype(np.int32), win.offsets, win.labels.astype(np.int64),
                     example_ids[win.window_of], win.token_type_ids.astype(np.int8), win.offset_mapping,
                     win.window_of, [r["context"] for r in records],
                     [list(r["answers"]["text"]) for r in records])
    return data, h.hexdigest()


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
    if cfg.task != "sequence-classification":
        payload |= {"task": cfg.task} | ({"stride": cfg.stride} if cfg.task == "question-answering" else {})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
