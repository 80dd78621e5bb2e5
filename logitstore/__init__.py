"""logitstore: export teacher checkpoints to ONNX, run them once, cache their logits in Zarr.

Python API (the CLI calls the same functions)::

    from logitstore import BuildConfig, build_store, open_store
    build_store(BuildConfig(teachers=["runs/teacher"], data="data/", out="logits.zarr"))
    store = open_store("logits.zarr")
    store.checkpoint_names(); store.select("tll"); store.read_logits("checkpoint-500", "train")
"""
from __future__ import annotations

#: The one version of the distribution: pyproject.toml reads it from here, students re-exports it.
__version__ = "0.1.0"

from logitstore.errors import LogitStoreError  # noqa: E402
from logitstore.format import FORMAT_VERSION, CheckpointMeta, StoreMeta  # noqa: E402
from logitstore.store import LogitStore, SplitData, open_store  # noqa: E402


def __getattr__(name: str):  # build pulls in torch/transformers: import it only when asked
    if name in ("BuildConfig", "build_store"):
        from logitstore import build

        return getattr(build, name)
    raise AttributeError(name)


__all__ = ["BuildConfig", "build_store", "open_store", "LogitStore", "SplitData", "StoreMeta",
           "CheckpointMeta", "LogitStoreError", "FORMAT_VERSION", "__version__"]
