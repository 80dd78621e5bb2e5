"""The teacher of one checkpoint, ready to run: checked against the store, then exported to
ONNX and parity-checked (``--runtime onnx``, the default) or loaded in PyTorch
(``--runtime torch``, logitstore/torch_runtime.py) where a model cannot be exported."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from logitstore.checkpoints import Checkpoint, read_config
from logitstore.data import tokenizer_fingerprint
from logitstore.errors import CheckpointError, StoreMismatchError
from logitstore.export import export_checkpoint, load_model, parity_error
from logitstore.format import StoreMeta
from logitstore.infer import make_session, pad_batch, plan_batches
from logitstore.progress import console
from logitstore.store import SplitData
from logitstore.tasks import Task


@dataclass(frozen=True)
class Teacher:
    """A runnable teacher: ``session`` (``session.run``, ``provider``, ``input_names``), the
    runtime ("onnx" or "torch"), its parity error against PyTorch (0 for torch) and graph."""

    session: Any
    runtime: str
    parity: float
    onnx_path: str | None


def open_teacher(ck: Checkpoint, task: Task, cfg: Any, val: SplitData, meta: StoreMeta, wsha: str) -> Teacher:
    """Export (or reuse) and open ``ck``'s graph on ``cfg.provider``, checked on real rows of
    the validation split ``val``; or, with ``cfg.runtime == "torch"``, load it in PyTorch.
    Raises CheckpointError / ExportError."""
    if cfg.runtime == "torch":
        from logitstore.torch_runtime import torch_session

        session = torch_session(ck.path, task, cfg.threads)
        console.print(f"checkpoint [bold]{ck.name}[/]: runtime [bold]torch[/] (eager, float32; not exported)")
        return Teacher(session, "torch", 0.0, None)
    sample = sample_batches(val, meta.pad_token_id, tuple(meta.input_names))
    with console.status(f"exporting {ck.name} to ONNX"):
        exp = export_checkpoint(ck.path, sample, cfg.parity_tolerance, weights_sha=wsha, task=task)
    session = make_session(exp.onnx_path, cfg.provider, cfg.threads)
    parity = exp.parity_max_abs_err
    if session.provider != "CPU":  # the parity that counts is the one of the provider that runs
        parity = max(parity, parity_error(load_model(ck.path, task), session.session, sample, exp.input_names, task))
        if parity > cfg.parity_tolerance:
            raise CheckpointError(f"{session.provider} execution of {ck.name} differs from PyTorch by {parity:.3g}; "
                                  "use --provider cpu")
    console.print(f"checkpoint [bold]{ck.name}[/]: ONNX {'cached' if exp.cached else 'exported'}, "
                  f"parity max |err| {parity:.2e}, provider [bold]{session.provider}[/]")
    return Teacher(session, "onnx", parity, str(exp.onnx_path))


def check_teacher(ck: Checkpoint, meta: StoreMeta, task: Task, tokenizer: Any) -> None:
    """Refuse (StoreMismatchError) a teacher whose labels or tokenizer are not the store's."""
    from transformers import AutoTokenizer

    cfg = read_config(ck.path)  # its task was checked against the store's by build._check_tasks
    problem = task.teacher_problem(cfg.num_labels, [cfg.id2label[i] for i in range(cfg.num_labels)],
                                   list(meta.label_names))
    if problem:
        raise StoreMismatchError(f"checkpoint {ck.name} {problem}")
    if (ck.path / "tokenizer_config.json").exists() or (ck.path / "tokenizer.json").exists():
        fp = tokenizer_fingerprint(AutoTokenizer.from_pretrained(ck.path, trust_remote_code=False))
        if fp != meta.tokenizer_fingerprint:
            raise StoreMismatchError(
                f"checkpoint {ck.name} has another tokenizer than the store; use one teacher family per store"
            )


def sample_batches(split: SplitData, pad_id: int, names: tuple[str, ...], rows: int = 32) -> list[dict[str, np.ndarray]]:
    """Up to ``rows`` real validation rows as two padded batches (short and long rows)."""
    picked = np.arange(min(rows, len(split)))
    out = []
    for batch in plan_batches(split.lengths[picked], token_budget=10**9, max_batch=max(1, len(picked) // 2)):
        out.append(pad_batch(split.input_ids, split.offsets, split.token_type_ids, picked[batch], pad_id, names))
    return out
