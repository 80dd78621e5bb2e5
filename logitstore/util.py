"""Small helpers shared by the library and the demo: a seeded train/validation/test split
and file hashing in fixed-size blocks."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Bytes read at a time when hashing a file (4 MiB).
HASH_BLOCK = 1 << 22


def seeded_split(n: int, fractions: Sequence[float], seed: int, limit: int | None = None,
                 min_validation: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle ``range(n)`` with ``numpy.random.default_rng(seed)``, keep the first ``limit``
    (all when None) and cut them into (train, validation, test) index arrays (int64, in
    shuffled order): train takes ``round(fractions[0] * kept)``, validation
    ``max(min_validation, round(fractions[1] * kept))``, test the rest (maybe empty)."""
    order = np.random.default_rng(seed).permutation(n)[:limit]
    n_train = int(round(fractions[0] * len(order)))
    n_val = max(min_validation, int(round(fractions[1] * len(order))))
    return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]


def update_from_file(h: Any, path: str | os.PathLike[str]) -> Any:
    """Feed the bytes of ``path`` into hash object ``h`` in HASH_BLOCK blocks; returns ``h``."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            h.update(block)
    return h


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the bytes of ``path``, read in blocks (any file size)."""
    return update_from_file(hashlib.sha256(), path).hexdigest()
