"""Where the teacher logits of a batch come from: the store (cached KD) or a teacher run on
the batch (online KD, the baseline): PyTorch from the checkpoint's source folder, or ONNX
Runtime on the exported graph the store recorded.

All three return float32 logits on the training device, (B, C) for the row layout and (B, T, C)
for the token layout (QA: start/end, (B, T, 2)), and consume no torch RNG
(the PyTorch teacher runs in eval mode under no_grad), so cached and online runs with the
same seed draw the same dropout masks and differ only by the teacher logits themselves.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from logitstore.checkpoints import weights_sha256
from logitstore.errors import ProviderError
from logitstore.format import CheckpointMeta
from logitstore.runtime import make_session
from logitstore.tasks import Task
from students.config import ONLINE_KINDS
from students.data import Batch
from students.errors import OnlineTeacherError
from students.model import forward_kwargs



class Teacher(Protocol):
    def logits(self, batch: Batch) -> torch.Tensor:
        """Teacher logits float32 for ``batch`` (already on the device)."""
        ...


class CachedTeacher:
    """The logits the store holds for the batch's rows (read by the loader)."""

    def logits(self, batch: Batch) -> torch.Tensor:
        if batch.teacher_logits is None:
            raise RuntimeError("the loader was built without logits; build it with read_logits=True")
        return batch.teacher_logits  # (B, C), or (B, T, C) for the token layout


class TorchTeacher:
    """The checkpoint's PyTorch model from its source folder, in eval mode."""

    def __init__(self, meta: CheckpointMeta, device: torch.device, task: Task) -> None:
        source = Path(meta.source_path)
        if source.is_dir() and weights_sha256(source) != meta.weights_sha256:
            raise OnlineTeacherError(
                f"the weights at {source} changed since checkpoint {meta.name!r} was cached, so online KD "
                "would not distil the cached teacher; restore them, rebuild the store, or drop --online"
            )
        try:
            self.model = task.model_class().from_pretrained(meta.source_path, dtype=torch.float32,
                                                            trust_remote_code=False)
        except Exception as exc:
            raise OnlineTeacherError(
                f"cannot load teacher checkpoint {meta.name!r} from {meta.source_path} "
                f"({type(exc).__name__}); online KD needs the checkpoint folder the store was built from, "
                "or drop --online to use the cached logits"
            ) from exc
        self.model.to(device).eval()
        self.task = task

    @torch.no_grad()
    def logits(self, batch: Batch) -> torch.Tensor:
        return self.task.model_logits(self.model(**forward_kwargs(self.model, batch))).float()  # (B, C) / (B, T, C)


class OnnxTeacher:
    """An ONNX Runtime session on the checkpoint's exported graph, fed exactly the inputs
    the graph declares (with the dtype it declares)."""

    _DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}

    def __init__(self, meta: CheckpointMeta, device: torch.device) -> None:
        path = getattr(meta, "onnx_path", None)
        if not path:
            raise OnlineTeacherError(
                f"checkpoint {meta.name!r} has no exported ONNX model recorded in the store; "
                "rebuild the store with a logitstore that exports ONNX, or use --online pytorch"
            )
        try:
            # CUDA (where ONNX Runtime has it) only beside a CUDA student. No spinning: idle ORT
            # worker threads would steal the cores the student's backward pass runs on.
            self.session = make_session(path, "auto" if device.type == "cuda" else "cpu",
                                        threads=torch.get_num_threads(), spinning=False).session
        except ProviderError as exc:  # ONNX Runtime is not installed
            raise OnlineTeacherError(f"{exc}; or use --online pytorch") from exc
        except Exception as exc:  # e.g. the export cache entry was pruned (`logitstore cache --prune`)
            raise OnlineTeacherError(
                f"cannot open the ONNX model {path} of checkpoint {meta.name!r} ({type(exc).__name__}); "
                f"export it again with `logitstore export {meta.source_path}` (same torch version: same path), "
                "or use --online pytorch"
            ) from exc
        self.device = device
        self.inputs = [(i.name, self._DTYPES.get(i.type)) for i in self.session.get_inputs()]
        known = {"input_ids", "attention_mask", "token_type_ids"}
        bad = [f"{n} ({t})" for n, t in self.inputs if n not in known or t is None]
        if bad:
            raise OnlineTeacherError(
                f"the ONNX model {path} declares inputs this trainer cannot feed: {', '.join(bad)}; "
                "re-export it with int input_ids/attention_mask/token_type_ids, or use --online pytorch"
            )
        names = [o.name for o in self.session.get_outputs()]
        self.output = "logits" if "logits" in names else names[0]

    def logits(self, batch: Batch) -> torch.Tensor:
        feed = {name: getattr(batch, name).cpu().numpy().astype(dtype) for name, dtype in self.inputs}
        (out,) = self.session.run([self.output], feed)  # (B, C), or (B, T, C) for the token layout
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(self.device)


def online_teacher(kind: str, meta: CheckpointMeta, device: torch.device, task: Task) -> Teacher:
    """The online teacher of ``kind`` ("pytorch" or "onnx") for checkpoint ``meta``."""
    if kind == "pytorch":
        return TorchTeacher(meta, device, task)
    if kind == "onnx":
        return OnnxTeacher(meta, device)
    raise ValueError(f"online teacher must be one of {', '.join(ONLINE_KINDS)}; got {kind!r}")
