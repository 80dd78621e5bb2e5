"""Storage encodings of teacher logits: fp16 (default), fp32, or int8 with a per-row scale.

The lossless codec barely shrinks logits (~1.1x for fp16), so the dtype is what sets the
size on disk. int8 is lossy: each row is scaled by max|x| / 127 and rounded, so the error
of a row is at most scale / 2; the error actually reached is measured and recorded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from logitstore.errors import TeacherOutputError

FP16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class Encoded:
    """One block of encoded logits: ``values`` (rows, C) and, for int8, ``scale`` (rows,)."""

    values: np.ndarray
    scale: np.ndarray | None
    max_abs_err: float


def storage_dtype(encoding: str) -> np.dtype:
    return {"fp16": np.dtype("float16"), "fp32": np.dtype("float32"), "int8": np.dtype("int8")}[encoding]


def encode(logits: np.ndarray, encoding: str) -> Encoded:
    """Encode float32 ``logits`` (rows, C) for storage.

    Raises TeacherOutputError when a value is NaN/inf or does not fit fp16.
    """
    x = np.asarray(logits, dtype=np.float32)  # (R, C)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=tuple(range(1, x.ndim))))[0])
        raise TeacherOutputError(
            f"teacher produced NaN or inf logits (first at block row {bad}); "
            "check the checkpoint's weights (a diverged training step?) before caching it"
        )
    if encoding == "fp32":
        return Encoded(x, None, 0.0)
    if encoding == "fp16":
        peak = float(np.abs(x).max(initial=0.0))
        if peak > FP16_MAX:
            raise TeacherOutputError(
                f"teacher logit {peak:.3g} does not fit fp16 (max {FP16_MAX:.0f}); rebuild with --dtype fp32"
            )
        v = x.astype(np.float16)
        return Encoded(v, None, float(np.abs(v.astype(np.float32) - x).max(initial=0.0)))
    if encoding == "int8":
        scale = np.abs(x).max(axis=-1) / 127.0  # (R,)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)  # (R, C)
        err = float(np.abs(q.astype(np.float32) * scale[:, None] - x).max(initial=0.0))
        return Encoded(q, scale, err)
    raise ValueError(f"unknown encoding {encoding!r}; expected one of fp16, fp32, int8")


def decode(values: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """Stored values (and int8 scales) back to float32 logits (rows, C)."""
    if scale is None:
        return np.asarray(values, dtype=np.float32)
    return values.astype(np.float32) * np.asarray(scale, dtype=np.float32)[:, None]
