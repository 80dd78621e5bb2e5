"""The store's metadata: versioned dataclasses with to_dict/from_dict, checked on open.

The layout they describe is written down in docs/store-format.md (the public contract).
Everything here is plain JSON in Zarr attributes: no pickle anywhere.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from logitstore.errors import FormatVersionError, StoreCorruptError

FORMAT_NAME = "logitstore"
#: Version 2 added the token-classification and question-answering tasks (layout "token");
#: a version 1 store is a version 2 sequence-classification store, so both are read.
#: Version 3 adds the causal-LM top-k layout (``causal-lm-topk``).
#: Version 4 (issue 13) records each finished build block in its entry (the ``blocks`` array),
#: so blocks may finish out of order (``logitstore build --ray``); every new store is written
#: as version 4, and a build that writes into an older store upgrades its root to 4.
FORMAT_VERSION = 4
LATEST_VERSION = 4
#: Format versions this code reads.
READABLE_VERSIONS = (1, 2, 3, 4)

ENCODINGS = ("fp16", "fp32", "int8")


def _from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    """Build dataclass ``cls`` from ``data``, ignoring unknown keys (forward compatible)."""
    if not isinstance(data, dict):
        raise StoreCorruptError(f"{what} metadata is not a JSON object; the store is corrupt: rebuild it")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - data.keys())
    if missing:
        raise StoreCorruptError(
            f"{what} metadata lacks {', '.join(missing)}; the store is corrupt or truncated: rebuild it"
        )
    return cls(**{k: v for k, v in data.items() if k in names})


M = TypeVar("M", bound="_Meta")


class _Meta:
    """to_dict / from_dict of a metadata dataclass: plain JSON, unknown keys ignored on read."""

    #: What the metadata describes, for error messages ("split", "checkpoint", ...).
    _what: ClassVar[str] = "metadata"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # (every subclass is a dataclass)

    @classmethod
    def from_dict(cls: type[M], data: Any) -> M:
        """Read the metadata back; raises StoreCorruptError when it is not an object or
        lacks a required field."""
        return _from_dict(cls, data, cls._what)


@dataclass(frozen=True)
class StoreMeta(_Meta):
    """Root attributes (under the key ``logitstore``) of a store."""

    _what = "store"

    task: str
    label_names: list[str]
    text_columns: list[str]
    label_column: str
    max_length: int
    tokenizer_fingerprint: str
    dataset_fingerprint: str
    input_names: list[str]
    validation_split: str
    created_by: str
    pad_token_id: int = 0
    stride: int | None = None
    #: The one data file every split was read from (``--data FILE``): its ``path``,
    #: ``sha256`` and ``bytes``; None for a folder or a dataset (added within format 2).
    source_file: dict[str, Any] | None = None
    #: causal-lm-topk (format 3) only: kept ids per token, the temperatures whose log-sum-exp
    #: is stored, the teacher's vocabulary size and the log-probability quantisation step.
    top_k: int | None = None
    temperatures: list[float] | None = None
    vocab_size: int | None = None
    logp_step: float | None = None
    #: causal-lm-sampled only: draws per token, the temperature they are drawn at, and the seed.
    sample: int | None = None
    sample_temperature: float | None = None
    sample_seed: int | None = None
    format_version: int = FORMAT_VERSION
    format: str = FORMAT_NAME

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON; the causal-LM fields only when set, so dense stores stay exactly version 2."""
        d = super().to_dict()
        for key in ("top_k", "temperatures", "vocab_size", "logp_step", "sample", "sample_temperature", "sample_seed"):
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, data: Any) -> "StoreMeta":
        """Check the format name and version and the task, then read the metadata;
        raises StoreCorruptError / FormatVersionError."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise StoreCorruptError(
                "not a logit store (no 'logitstore' metadata at its root); "
                "pass the folder that `logitstore build` wrote"
            )
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise FormatVersionError(
                f"store format version {version!r} is not readable by this logitstore "
                f"(reads {', '.join(map(str, READABLE_VERSIONS))}); upgrade logitstore or rebuild the store"
            )
        meta = super().from_dict(data)
        from logitstore.tasks import TASKS

        if meta.task not in TASKS:
            raise FormatVersionError(
                f"store task {meta.task!r} is not known to this logitstore (knows {', '.join(TASKS)}); "
                "upgrade logitstore"
            )
        need = getattr(TASKS[meta.task], "format_version", 1)
        if meta.format_version < need:
            raise StoreCorruptError(f"store of task {meta.task} says format version {meta.format_version} but that "
                                    f"task needs version {need}; the store is corrupt: rebuild it")
        return meta

    @property
    def layout(self) -> str:
        """"row" (one logit vector per example) or "token" (one per token)."""
        from logitstore.tasks import get_task

        return get_task(self.task).layout


@dataclass(frozen=True)
class SplitMeta(_Meta):
    """Attributes of ``splits/<name>``: the tokenized examples of one split."""

    _what = "split"

    name: str
    rows: int
    tokens: int
    content_sha256: str
    complete: bool = False
    #: Rows whose tokens ``max_length`` cut (None: not recorded; added within format 2).
    truncated_rows: int | None = None


@dataclass(frozen=True)
class CheckpointMeta(_Meta):
    """Attributes of ``checkpoints/<name>``: one teacher checkpoint's entry.

    ``val_loss`` is the mean cross-entropy of the stored validation logits against the
    gold labels; ``val_score`` is the task metric named by ``metric`` on the same logits.
    ``encode_max_abs_err`` is the largest |stored - computed| logit over all splits (0 for
    fp32; the fp16 rounding or int8 quantization error otherwise).
    ``complete`` is set last, only once every split's logits are written.
    ``split_scores`` holds, per split, the loss and every metric of its stored logits
    (added within format 2; empty in older stores).
    """

    _what = "checkpoint"

    name: str
    source_path: str
    weights_sha256: str
    num_labels: int
    encoding: str
    parity_max_abs_err: float
    parity_tolerance: float
    provider: str
    layout: str = "row"
    #: "onnx" (exported graph on ONNX Runtime) or "torch" (``--runtime torch``: PyTorch eager; added within format 3)
    runtime: str = "onnx"
    onnx_path: str | None = None
    encode_max_abs_err: float | None = None
    metric: str = "accuracy"
    val_loss: float | None = None
    val_score: float | None = None
    val_scores: dict[str, float] = field(default_factory=dict)
    step: int | None = None
    build_seconds: float | None = None
    complete: bool = False
    split_scores: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON; ``runtime`` only when it is not the default "onnx", so entries built by
        ONNX Runtime are written exactly as before the field existed."""
        d = super().to_dict()
        if d["runtime"] == "onnx":
            del d["runtime"]
        return d


@dataclass(frozen=True)
class LogitsMeta(_Meta):
    """Attributes of ``checkpoints/<name>/<split>``: progress of one logits array.

    ``rows``/``rows_done`` count rows (examples or windows) for both layouts; for the
    token layout ``block_rows`` is the number of rows per build block (the logits array is
    chunked by tokens, so its chunk shape does not give it). Since format 4 a build resumes
    from the entry's block records (``blocks`` array), and ``rows_done`` is the rows of the
    recorded blocks (a count for progress displays, not a prefix)."""

    _what = "logits"

    rows: int
    rows_done: int = 0
    max_abs_err: float = 0.0
    complete: bool = False
    block_rows: int | None = None
