"""Sequence classification: one label per example, one logit vector per example.

Reads a text column (or two: a text pair) and a label column. Labels resolve against the
teacher's id2label (or ``--labels``): real names must contain every string label; generic
names (LABEL_0...) take the data's sorted string labels or integer ids in [0, C).
Scores: mean cross-entropy over rows (the validation loss), accuracy and macro-F1; ECE and
Brier per example (lower is better, not task metrics).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from logitstore.calibration import calibration
from logitstore.errors import DataError
from logitstore.metrics import accuracy, cross_entropy, macro_f1
from logitstore.store import SplitData, ragged
from logitstore.tasks.base import KDTerm, Task, content_sha256, count_truncated, generic_label_names

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from logitstore.data import DataConfig


class SequenceClassification(Task):
    name = "sequence-classification"
    aliases = ("classification", "cls")
    layout = "row"
    auto_class = "AutoModelForSequenceClassification"
    architecture_suffix = "ForSequenceClassification"
    metrics = ("accuracy", "macro_f1")
    text_columns = ("text",)
    label_column = "label"
    transfer_split = True

    def fingerprint(self, cfg: "DataConfig") -> dict[str, Any]:
        return {}  # the first task: its fingerprints predate the task key and stay valid

    @property
    def fingerprint_tag(self) -> str:
        return ""  # likewise its export cache keys

    def resolve_labels(self, splits: dict[str, Any], label_column: str,
                       model_names: list[str] | None) -> tuple[list[str], dict[Any, int]]:
        """``model_names`` wins when it has real names; then string labels must be among
        them. With generic names (LABEL_0...), string labels are sorted and must be as many
        as the teacher's outputs; integer labels must lie in [0, num_labels). With no names
        at all (a store of token ids only), the data's own label set is used: ClassLabel
        names, sorted strings, or 0..max for ints."""
        import datasets

        feature = next(iter(splits.values())).features[label_column]
        if model_names is None:
            model_names = _data_label_names(splits, label_column, feature)
        n = len(model_names)
        if isinstance(feature, datasets.ClassLabel):
            values: set[Any] = set(feature.names)
            mapper_src: dict[int, str] | None = dict(enumerate(feature.names))
        else:
            values = {v for ds in splits.values() for v in ds.unique(label_column)}
            mapper_src = None
        if any(v is None for v in values):
            raise DataError(f"column {label_column!r} has empty labels; fill or drop those rows")
        if all(_is_int(v) for v in values):
            bad = sorted(v for v in values if not 0 <= v < n)
            if bad:
                raise DataError(f"labels {bad[:5]} are outside the teacher's {n} classes [0, {n}); "
                                "fix the labels or the teacher")
            return list(model_names), {int(v): int(v) for v in values}
        names = _string_label_names({str(v) for v in values}, list(model_names))
        ids = {name: i for i, name in enumerate(names)}
        if mapper_src is not None:
            return names, {k: ids[v] for k, v in mapper_src.items()}
        return names, {v: ids[str(v)] for v in values}

    def tokenize(self, name: str, ds: Any, tokenizer: Any, cfg: "DataConfig", label_map: dict[Any, int],
                 input_names: Sequence[str]) -> tuple[SplitData, str]:
        cols = [ds[c] for c in cfg.text_columns]
        for c, texts in zip(cfg.text_columns, cols):
            if any(t is None for t in texts):
                raise DataError(f"split {name!r} has empty values in text column {c!r}; fill or drop those rows")
        raw_labels = ds[cfg.label_column]
        labels = np.fromiter((label_map[v] for v in raw_labels), dtype=np.int64, count=len(raw_labels))
        example_ids = np.asarray(ds["__example_id"], dtype=np.int64)
        texts = [list(map(str, c)) for c in cols]
        enc = tokenizer(*texts, truncation=True, max_length=cfg.max_length, return_token_type_ids=True)
        flat, offsets = ragged(enc["input_ids"], np.int32)
        tt = None
        if "token_type_ids" in input_names and len(cfg.text_columns) == 2:
            tt, _ = ragged(enc["token_type_ids"], np.int8)
        sha = content_sha256(zip(*cols, labels.tolist(), example_ids.tolist()))
        cut = count_truncated(tokenizer, np.diff(offsets), cfg.max_length, *texts)  # a cut text (or pair)
        return SplitData(name, flat, offsets, labels, example_ids, tt, truncated_rows=cut), sha

    def placeholder_labels(self, ds: Any, cfg: "DataConfig", label_map: dict[Any, int]) -> list[Any]:
        return [next(iter(label_map))] * len(ds)  # any valid label per row

    def scores(self, logits: np.ndarray, split: SplitData, label_names: list[str]) -> dict[str, float]:
        """Mean CE over rows; accuracy, macro-F1; ECE and Brier per example (logitstore/calibration.py).
        ``logits`` (R, C), labels (R,)."""
        pred = logits.argmax(axis=-1)  # (R,)
        return {"loss": cross_entropy(logits, split.labels), "accuracy": accuracy(pred, split.labels),
                "macro_f1": macro_f1(pred, split.labels, logits.shape[-1]), **calibration(logits, split.labels)}

    def kd_terms(self, student: "torch.Tensor", labels: "torch.Tensor", teacher: "torch.Tensor | None",
                 attention_mask: "torch.Tensor") -> tuple[list[KDTerm], int]:
        """One term over the B examples: logits (B, C), labels (B,)."""
        return [KDTerm(student, labels, teacher)], len(student)

    def unlabelled_terms(self, student: "torch.Tensor", labels: "torch.Tensor", teacher: "torch.Tensor",
                         attention_mask: "torch.Tensor") -> tuple[list[KDTerm], int]:
        """One term over the B examples (labels (B,) all IGNORE), no labels: logits (B, C)."""
        return [KDTerm(student, None, teacher)], len(student)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _string_label_names(strings: set[str], model_names: list[str]) -> list[str]:
    """The store's names for string labels: the teacher's, which must hold them all, or
    (generic teacher names) the sorted strings, as many as the teacher's outputs."""
    if generic_label_names(model_names):
        names = sorted(strings)
        if len(names) != len(model_names):
            raise DataError(
                f"the data has {len(names)} labels ({', '.join(names[:8])}) but the teacher has {len(model_names)} "
                "outputs; use a teacher trained on these labels"
            )
        return names
    unknown = sorted(strings - set(model_names))
    if unknown:
        raise DataError(
            f"labels {', '.join(map(repr, unknown[:5]))} are not in the teacher's label set "
            f"({', '.join(model_names)}); fix the data or use the matching teacher"
        )
    return model_names


def _data_label_names(splits: dict[str, Any], label_column: str, feature: Any) -> list[str]:
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted({v for ds in splits.values() for v in ds.unique(label_column) if v is not None}, key=str)
    if values and all(_is_int(v) for v in values):
        return [f"LABEL_{i}" for i in range(int(max(values)) + 1)]
    return sorted(str(v) for v in values)
