"""The Task protocol: everything that differs between the tasks a store can hold.

A task decides, on the teacher side, which columns it reads and how (extra file types such
as CoNLL or SQuAD JSON), how labels resolve to ids, how examples tokenize into the store's
ragged layout, which transformers Auto class loads its models and which output tensor is
stored, and how stored logits are scored (validation loss and metrics); on the student
side, how a batch's logits and labels flatten into the terms of the one KD loss
(``kd_terms``). Each task is one file of this package implementing this class; the
registry (``logitstore/tasks/__init__.py``) names them. No code outside this package
compares task names.

Tensor shapes: ``B`` rows of a batch, ``T`` tokens of the longest row, ``C`` classes
(for QA, 2: start and end), ``N`` rows or labelled tokens of a split.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    import torch

    from logitstore.data import DataConfig
    from logitstore.store import SplitData

IGNORE = -100  # label of tokens without a label (later sub-tokens, special tokens)
#: Label of a position that is distilled but has no gold label: the first sub-token of a word
#: in a transfer (unlabelled) row of a token task (docs/store-format.md). Never a CE target.
#: Not -1: that is the fill value of the split arrays, which readers take for a lost chunk.
UNLABELLED = -2


@dataclass(frozen=True)
class KDTerm:
    """One group of the KD loss: student and teacher logits (M, K) over K classes (or
    positions), gold labels (M,) and an optional (M, K) bool mask of the classes that
    exist (QA: a window's real tokens). The task's loss is the mean of its terms' losses."""

    student: "torch.Tensor"
    labels: "torch.Tensor | None"
    teacher: "torch.Tensor | None"
    mask: "torch.Tensor | None" = None


class Task(ABC):
    """What one task decides. Subclasses set the class attributes and implement the
    abstract methods; instances are stateless singletons held by the registry."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    #: "row": one logit vector per example; "token": one per token of each row.
    layout: ClassVar[str]
    #: The transformers Auto class of its models, and the suffix of their architectures.
    auto_class: ClassVar[str]
    architecture_suffix: ClassVar[str]
    #: The task metrics, the default (validation score that ranks checkpoints) first.
    metrics: ClassVar[tuple[str, ...]]
    #: Default (text columns, label column) of its data.
    text_columns: ClassVar[tuple[str, ...]]
    label_column: ClassVar[str]
    #: Data file suffixes only this task reads (besides .csv/.json/.jsonl/.parquet).
    file_suffixes: ClassVar[tuple[str, ...]] = ()
    #: Whether labels are per token (padded with IGNORE in batches) rather than per row.
    token_labels: ClassVar[bool] = False
    #: Whether the build's --stride applies (and is recorded in the store).
    uses_stride: ClassVar[bool] = False
    #: Arrays a complete split of this task holds besides input_ids, offsets, labels and
    #: example_id, with the axis their first dimension follows ("rows", "tokens", or None
    #: when it is checked through other arrays); what `logitstore verify` expects.
    extra_split_arrays: ClassVar[dict[str, str | None]] = {}
    #: The lowest store format version that holds this task's layout (a store says at least this).
    format_version: ClassVar[int] = 1
    #: Keyword arguments of the model's forward in the exported graph (causal LM: use_cache=False).
    forward_kwargs: ClassVar[dict[str, Any]] = {}
    #: The CheckpointMeta ``encoding`` when the task fixes it (causal LM: "topk-q8"); None: --dtype.
    encoding: ClassVar[str | None] = None
    #: Names of the exported graph's outputs (what ``graph_outputs`` returns, in order).
    output_names: ClassVar[tuple[str, ...]] = ("logits",)
    #: Graph inputs besides the model's (sampled causal LM: ``draws``, uniform numbers); ``extra_feed`` makes them.
    extra_inputs: ClassVar[tuple[str, ...]] = ()
    #: Whether a store of this task can hold a ``transfer`` split of unlabelled data
    #: (logitstore/transfer.py); such a task implements ``placeholder_labels`` and ``unlabelled_terms``.
    transfer_split: ClassVar[bool] = False
    #: The stored label of a transfer row wherever ``tokenize`` put a (placeholder) label:
    #: IGNORE (one label per row: nothing to mark), or UNLABELLED (NER: the words' first sub-tokens).
    transfer_marker: ClassVar[int] = IGNORE

    @property
    def fingerprint_tag(self) -> str:
        """Appended to the ONNX export cache key: exports of one checkpoint for two tasks differ."""
        return f"|{self.name}"

    #: Whether every split of a checkpoint is scored at build time (``split_scores``); the
    #: causal LM scores only validation (its exact next-token loss is kept for that split).
    scores_every_split: ClassVar[bool] = True

    @property
    def default_metric(self) -> str:
        return self.metrics[0]

    @property
    def per_token(self) -> bool:
        return self.layout == "token"

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ------------------------------------------------------------------ data
    def config_problems(self, cfg: "DataConfig") -> list[str]:
        """Problems with a data config for this task, each ending "got X instead"."""
        return []

    def read_files(self, suffix: str, files: Sequence[Any]) -> Any | None:
        """A ``datasets.Dataset`` for files this task reads itself (CoNLL, SQuAD JSON), or
        None to let the generic csv/json/parquet builders read them."""
        return None

    @abstractmethod
    def resolve_labels(self, splits: dict[str, Any], label_column: str,
                       model_names: list[str] | None) -> tuple[list[str], dict[Any, int]]:
        """The store's label names and a map from the data's label values to label ids.

        ``model_names`` is the teacher's id2label (or ``--labels``), None for a store of
        token ids only. Raises DataError naming bad labels."""

    @abstractmethod
    def tokenize(self, name: str, ds: Any, tokenizer: Any, cfg: "DataConfig", label_map: dict[Any, int],
                 input_names: Sequence[str]) -> tuple["SplitData", str]:
        """One split tokenized into the store's ragged layout, and the sha256 of the content
        the store depends on (texts, mapped labels, example ids)."""

    def placeholder_labels(self, ds: Any, cfg: "DataConfig", label_map: dict[Any, int]) -> list[Any]:
        """A label column of valid labels for the unlabelled rows ``ds`` (transfer data), so that
        ``tokenize`` runs on them unchanged; logitstore/transfer.py then stores ``transfer_marker``
        where a label landed and IGNORE elsewhere."""
        raise NotImplementedError(f"{self.name} stores hold no transfer split")

    def fingerprint(self, cfg: "DataConfig") -> dict[str, Any]:
        """What the dataset fingerprint records about the task beyond columns and length."""
        return {"task": self.name}

    # ------------------------------------------------------------------ teacher
    def model_class(self) -> Any:
        """The transformers Auto class that loads models of this task."""
        import transformers

        return getattr(transformers, self.auto_class)

    def model_logits(self, output: Any) -> "torch.Tensor":
        """The tensor the store keeps from a model's output: ``logits``, (B, C) or (B, T, C)."""
        return output.logits

    def graph_outputs(self, output: Any, feed: dict[str, "torch.Tensor"]) -> tuple["torch.Tensor", ...]:
        """The exported graph's outputs (``output_names``) from the model's output and its
        inputs; default ``(model_logits(output),)``. A task may reduce inside the graph here
        (causal LM: top-k, log-sum-exp), so the full tensor never leaves ONNX Runtime."""
        return (self.model_logits(output),)

    def extra_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ``extra_inputs`` for a probe or parity batch ``feed`` (input_ids (B, T)): none by default."""
        return {}

    def graph_axes(self) -> dict[str, dict[int, str]]:
        """Dynamic axes of each graph output."""
        return {"logits": {0: "batch", 1: "sequence"} if self.per_token else {0: "batch"}}

    def parity(self, got: list[np.ndarray], ref: list[np.ndarray]) -> float:
        """Largest |ONNX - PyTorch| between the graph outputs ``got`` and ``ref`` (one batch).

        Positions where both give the same NaN/inf count as equal (a broken checkpoint is
        the inference step's error to report, not the exporter's); NaN on one side is inf."""
        err = 0.0
        for g, r in zip(got, ref):
            same_nonfinite = ~np.isfinite(g) & ~np.isfinite(r) & ((g == r) | (np.isnan(g) & np.isnan(r)))
            diff = np.where(same_nonfinite, 0.0, np.abs(g - r))  # NaN where only one side is NaN
            err = max(err, float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)))
        return err

    def for_build(self, cfg: Any) -> "Task":
        """The task a build with BuildConfig ``cfg`` writes (causal LM: its sampled variant
        with ``--sample``); most tasks return self."""
        return self

    def build_problems(self, cfg: Any) -> list[str]:
        """Problems with the task's own build settings (BuildConfig ``cfg``), each ending "got X instead"."""
        return []

    def for_store(self, meta: Any) -> "Task":
        """This task with the settings of the store ``meta`` (a StoreMeta) that shape its
        graph and entries (causal LM: top-k, temperatures); stateless tasks return self."""
        return self

    def store_fields(self, cfg: Any, model_cfg: Any, tokenizer: Any) -> dict[str, Any]:
        """Extra StoreMeta fields a new store of this task records (from the BuildConfig,
        the first teacher's config or None, and the tokenizer); raises DataError for
        settings that cannot work (causal LM: --top-k above the vocabulary)."""
        return {}

    def prepare_entry(self, store: Any, ckpt: str, data: "SplitData", spec: Any) -> Any:
        """Create (or keep, to resume) a checkpoint's entry for one split when the task has its
        own entry layout, returning its LogitsMeta; None lets the build use the dense ``logits``
        array. ``spec``: a logitstore.blocks.BlockSpec."""
        return None

    def write_block(self, store: Any, ckpt: str, data: "SplitData", session: Any, spec: Any, index: int,
                    rows: np.ndarray, on_rows: Any = None) -> float | None:
        """Compute, write and record build block ``index`` (row numbers ``rows``) of an entry of
        the task's own layout (store.write_entry_block), returning its largest encoding error;
        None for the dense layouts (logitstore/blocks.py writes those)."""
        return None

    def checkpoint_scores(self, store: Any, ckpt: str, split: "SplitData") -> dict[str, float]:
        """The validation loss and metrics of a checkpoint from what the store holds."""
        return self.scores(store.read_logits(ckpt, split.name), split, list(store.meta.label_names))

    def entry_arrays(self, store_meta: Any, split: str, tokens: int) -> dict[str, tuple[tuple[int, ...], str]] | None:
        """The arrays (shape, dtype) of a complete entry of ``split`` when the task has its own
        entry layout (what `logitstore verify` checks), or None for the dense ``logits``."""
        return None

    def teacher_problem(self, num_labels: int, label_names: list[str], store_labels: list[str]) -> str | None:
        """Why a teacher with these outputs cannot fill a store with ``store_labels``, or None.

        A teacher's generic names (LABEL_0, ...) match any store labels of the same count."""
        if num_labels != len(store_labels):
            return (f"has {num_labels} labels but the store has {len(store_labels)} ({', '.join(store_labels)}); "
                    "use a teacher with the store's label set or a new --out")
        if label_names != list(store_labels) and not generic_label_names(label_names):
            return (f"has labels {', '.join(label_names)} but the store has {', '.join(store_labels)} (names and "
                    "order must match); use a teacher trained on the store's labels or a new --out")
        return None

    # ------------------------------------------------------------------ scores
    @abstractmethod
    def scores(self, logits: np.ndarray, split: "SplitData", label_names: list[str]) -> dict[str, float]:
        """The validation loss ("loss") and every metric of the task for ``logits`` in the
        store's layout of ``split``: (R, C) per row, or (T, C) per token."""

    # ------------------------------------------------------------------ KD loss
    def unlabelled_rows(self, labels: "torch.Tensor") -> "torch.Tensor":
        """(B,) bool: the rows of a batch without any gold label (transfer rows): ``labels`` (B,)
        below 0 (IGNORE), or (B, T) / (B, 2) with every entry below 0 (IGNORE or UNLABELLED)."""
        none = labels < 0
        return none if none.dim() == 1 else none.all(dim=-1)

    def unlabelled_terms(self, student: "torch.Tensor", labels: "torch.Tensor", teacher: "torch.Tensor",
                         attention_mask: "torch.Tensor") -> tuple[list[KDTerm], int]:
        """Like ``kd_terms`` for rows without gold labels (transfer rows, ``labels`` as stored:
        IGNORE or ``transfer_marker``): the terms the KD term alone averages over (every KDTerm's
        ``labels`` None, so no cross-entropy sees a marker) and their number."""
        raise NotImplementedError(f"{self.name} stores hold no transfer split")

    @abstractmethod
    def kd_terms(self, student: "torch.Tensor", labels: "torch.Tensor", teacher: "torch.Tensor | None",
                 attention_mask: "torch.Tensor") -> tuple[list[KDTerm], int]:
        """A batch's logits and labels as the groups the KD loss averages, and the number of
        terms (examples or labelled tokens) the loss is a mean over.

        ``student``/``teacher``: (B, C), or (B, T, C) for the token layout; ``labels`` as
        the batch holds them; ``attention_mask`` (B, T)."""


def need_fast(tokenizer: Any, what: str) -> None:
    """Raise DataError unless ``tokenizer`` is a fast (Rust) one: token tasks need its
    word ids and character offsets."""
    from logitstore.errors import DataError

    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{what} needs a fast (Rust) tokenizer to align words and characters with tokens; "
                        "save the teacher with a tokenizer.json (AutoTokenizer(..., use_fast=True))")


def count_truncated(tokenizer: Any, lengths: np.ndarray, max_length: int, *columns: Sequence[Any],
                    **options: Any) -> int:
    """How many rows ``max_length`` cut: of the rows that reached it (``lengths`` (R,), the
    truncated token counts), those whose untruncated encoding is longer. ``columns`` are the
    tokenizer's positional inputs as tokenized (one list per text column) and ``options``
    its other arguments (e.g. is_split_into_words); only rows at the cap are tokenized again."""
    at_cap = np.flatnonzero(lengths >= max_length)
    if not len(at_cap):
        return 0
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "sequence longer than the model's maximum": what is being counted
    try:
        full = tokenizer(*[[c[i] for i in at_cap] for c in columns], truncation=False, **options)["input_ids"]
    finally:
        hf_logging.set_verbosity(level)
    return int(sum(len(r) > max_length for r in full))


def content_sha256(rows: Any) -> str:
    """sha256 over rows of JSON-able values, one JSON document each (what a split's content
    hash covers)."""
    import hashlib
    import json

    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, ensure_ascii=False, default=str).encode())
    return h.hexdigest()


def generic_label_names(names: Sequence[str]) -> bool:
    """True for a teacher's placeholder names LABEL_0, LABEL_1, ..."""
    return all(n == f"LABEL_{i}" for i, n in enumerate(names))
