"""`--runtime torch`: run a teacher in PyTorch (eager, float32) where it cannot be exported.

The model runs through the same wrapper the ONNX export traces (export.LogitsOnly: the
task's ``graph_outputs``, so for a causal LM the top-k / sampling and the log-sum-exp are
torch.topk and torch.logsumexp on the full logits), behind the interface of an ONNX
Runtime session (``session.run(output_names, feed)``), so the build's blocks, resume and
repair are the same code for both runtimes. The store records the runtime in each
checkpoint's metadata (``runtime = "torch"``, ``provider = "torch"``, ``onnx_path`` null).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from logitstore.tasks import Task

#: What ``--runtime`` accepts.
RUNTIMES = ("onnx", "torch")


class _EagerSession:
    """``run(output_names, feed)`` like onnxruntime.InferenceSession, on a PyTorch model."""

    def __init__(self, wrapper: Any, names: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        self.wrapper, self.names, self.outputs = wrapper, names, outputs

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            res = self.wrapper(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in self.names))
        by_name = dict(zip(self.outputs, res))
        return [by_name[n].numpy() for n in output_names]


@dataclass
class TorchSession:
    """What the build uses of logitstore.runtime.Session: ``session.run``, ``provider``
    ("torch") and ``input_names`` (the model's inputs, then the task's extra inputs)."""

    session: _EagerSession
    provider: str
    input_names: tuple[str, ...]


def torch_session(folder: Path, task: Task, threads: int | None = None) -> TorchSession:
    """Load the checkpoint at ``folder`` (float32, eager attention) as a TorchSession for
    ``task``; raises CheckpointError when it cannot be loaded."""
    import torch

    from logitstore.export import LogitsOnly, graph_input_names, load_model

    if threads:
        torch.set_num_threads(threads)
    model = load_model(folder, task).float()
    names = graph_input_names(model) + task.extra_inputs
    return TorchSession(_EagerSession(LogitsOnly(model, names, task).eval(), names, task.output_names), "torch",
                        names)
