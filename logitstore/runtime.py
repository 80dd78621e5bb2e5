"""ONNX Runtime sessions, made in one place: which execution provider, how many threads,
and which provider really runs the graph.

Used by the build (``logitstore build`` runs the teacher through it), the export's parity
check and the students' online ONNX teacher, so all three pick providers and read back
the one that ran the same way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from logitstore.errors import ProviderError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ProviderError(
            "ONNX Runtime is not installed; install the project with the cpu or gpu extra: pip install '.[cpu]'"
        ) from exc
    return onnxruntime


@dataclass
class Session:
    """An ONNX Runtime session and the execution provider that really runs it ("CPU",
    "CUDA", "Tensorrt")."""

    session: Any
    provider: str
    input_names: tuple[str, ...]

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's ``logits`` output for ``feed`` (input name -> int64 array (B, T))."""
        return self.session.run(["logits"], feed)[0]


def _providers(provider: str, available: list[str]) -> list[str]:
    """The providers to ask for, best first; raises ProviderError for an unknown or
    unavailable named provider."""
    if provider == "auto":
        # CUDA when this ONNX Runtime has it, then CPU. TensorRT is tried only when asked
        # for: its engine build takes minutes per shape.
        return [p for p in (PROVIDERS["cuda"],) if p in available] + [PROVIDERS["cpu"]]
    if provider not in PROVIDERS:
        raise ProviderError(f"unknown provider {provider!r}; use auto, cpu, cuda or tensorrt")
    if PROVIDERS[provider] not in available:
        raise ProviderError(
            f"execution provider {provider} is not available (available: {', '.join(available)}); "
            "install onnxruntime-gpu with matching CUDA/cuDNN, or use --provider cpu"
        )
    return list(dict.fromkeys([PROVIDERS[provider], PROVIDERS["cpu"]]))


def make_session(onnx_path: str | os.PathLike[str], provider: str = "auto", threads: int | None = None,
                 spinning: bool = True) -> Session:
    """Open ``onnx_path`` on the best working provider ("auto": CUDA where this ONNX
    Runtime has it, else CPU) or the one named ("cpu", "cuda", "tensorrt").

    onnxruntime-gpu silently falls back to CPU when the CUDA libraries are missing, so the
    provider that actually runs is read back from the session; "auto" accepts the
    fallback, a named provider does not. ``threads``: intra-op threads (None: every core).
    ``spinning=False`` puts idle worker threads to sleep instead of spinning, for a process
    that also runs PyTorch (a student training beside an online teacher).

    Raises ProviderError when ONNX Runtime is missing, or a named provider is unknown,
    unavailable or did not take the graph; ONNX Runtime's own error for an unreadable graph.
    """
    ort = _ort()
    available = ort.get_available_providers()
    wanted = _providers(provider, available)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(Path(onnx_path)), opts, providers=wanted)
    used = sess.get_providers()[0]
    if provider != "auto" and used != PROVIDERS[provider]:
        raise ProviderError(f"execution provider {provider} did not start (ONNX Runtime fell back to {used}); "
                            "check the CUDA/cuDNN libraries, or use --provider cpu")
    names = tuple(i.name for i in sess.get_inputs())
    return Session(sess, used.replace("ExecutionProvider", ""), names)
