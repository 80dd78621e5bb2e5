"""Export a transformers checkpoint to ONNX, check it against PyTorch, cache it by content.

The export uses torch.onnx's TorchScript exporter (``dynamo=False``) with eager attention:
it exports a 6-layer BERT in ~1.5 s (the dynamo exporter takes ~8 s) and gives ONNX
Runtime a graph it can fuse. Batch and sequence axes are dynamic; the output is named
``logits``. Exports live in ``$LOGITSTORE_CACHE/onnx/<key>/model.onnx`` (default
``~/.cache/logitstore``), where the key hashes the weights, the config and the exporter
settings, so exporting the same checkpoint twice does no work the second time.

Parity: the ONNX graph and PyTorch eager run the same real inputs; the largest absolute
logit difference must stay under ``PARITY_TOLERANCE`` (fp32 graphs match to ~1e-5; 1e-3
leaves room for other execution providers' kernels while catching a wrong export,
whose errors are of the order of the logits themselves).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from logitstore.checkpoints import weights_sha256
from logitstore.errors import CheckpointError, ExportError
from logitstore.runtime import make_session
from logitstore.tasks import Task, task_of_folders

PARITY_TOLERANCE = 1e-3
OPSET = 17
_EXPORTER_TAG = f"torchscript-opset{OPSET}-eager-v1"
PROBE_TEXTS = (
    "A quiet, beautifully acted film that never quite finds its ending.",
    "Terrible.",
    "The plot follows two brothers who return home after their father's death and discover the farm is failing.",
    "Fun, fast and forgettable.",
)


@dataclass(frozen=True)
class ExportResult:
    """An exported checkpoint: graph path, its input names, parity error, whether cached."""

    onnx_path: Path
    input_names: tuple[str, ...]
    parity_max_abs_err: float
    weights_sha256: str
    cached: bool


def cache_root() -> Path:
    return Path(os.environ.get("LOGITSTORE_CACHE", Path.home() / ".cache" / "logitstore"))


def load_model(folder: Path, task: Task) -> Any:
    """The checkpoint as an eval-mode model of ``task``'s Auto class (eager attention)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = task.model_class().from_pretrained(
            folder, attn_implementation="eager", use_safetensors=True, trust_remote_code=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]  # faults (issue 10): one line
        raise CheckpointError(
            f"cannot load {folder} as a {task.name} checkpoint ({type(exc).__name__}: {first}); "
            "pass a folder saved by save_pretrained"
        ) from exc
    return model.eval()


def graph_input_names(model: Any) -> tuple[str, ...]:
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) and "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    return tuple(names)


class LogitsOnly(torch.nn.Module):
    """Wraps a model so it takes the graph's inputs positionally and returns the task's graph
    outputs: (logits,), (B, C) for the row layout, (B, T, C) for the token layout; the causal
    LM's top-k, log-sum-exp and next-token NLL (Task.graph_outputs)."""

    def __init__(self, model: Any, names: tuple[str, ...], task: Task) -> None:
        super().__init__()
        self.model, self.names, self.task = model, names, task

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = dict(zip(self.names, inputs))
        return self.task.graph_outputs(self.model(**feed, **self.task.forward_kwargs), feed)


def probe_inputs(folder: Path, names: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    """Two padded batches of built-in sentences, tokenized by the checkpoint's tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)  # faults (issue 10): never prompt
    out = []
    for texts in (PROBE_TEXTS[:2], PROBE_TEXTS):
        enc = tok(list(texts), padding=True, truncation=True, max_length=128, return_tensors="np",
                  return_token_type_ids=True)
        out.append({k: enc[k].astype(np.int64) for k in names})
    return out


def export_checkpoint(folder: Path, sample: list[dict[str, np.ndarray]] | None = None,
                      tolerance: float = PARITY_TOLERANCE, cache_dir: Path | None = None,
                      weights_sha: str | None = None, task: Task | None = None) -> ExportResult:
    """Export ``folder`` to ONNX (or reuse the cached export) and parity-check it on CPU.

    ``task`` None means the task the checkpoint's config.architectures names (else
    sequence classification).

    ``sample``: padded int64 batches keyed by input name (real inputs); built-in probe
    sentences when None. ``weights_sha``: the folder's weights_sha256 when the caller has
    it already. Raises ExportError when the parity error exceeds ``tolerance``.
    """
    folder = Path(folder)
    wsha = weights_sha or weights_sha256(folder)
    task = task or task_of_folders((folder,))
    tag = _EXPORTER_TAG + task.fingerprint_tag
    key = hashlib.sha256(f"{wsha}|{tag}|torch{torch.__version__}".encode()).hexdigest()[:24]
    target = (cache_dir or cache_root() / "onnx") / key
    onnx_path, info_path = target / "model.onnx", target / "export.json"
    model = None
    info = _cached_info(onnx_path, info_path)  # faults (issue 10): None when missing or damaged
    if info is not None:
        names = tuple(info["input_names"])
        cached = True
    else:
        model = load_model(folder, task)
        names = graph_input_names(model)
        _export(model, names, target, task)
        cached = False
    if sample is None:
        if cached:
            return ExportResult(onnx_path, names, float(info["parity_max_abs_err"]), wsha, True)
        sample = probe_inputs(folder, names)
    model = model if model is not None else load_model(folder, task)
    err = parity_error(model, make_session(onnx_path, "cpu").session, sample, names, task)
    if not cached:  # faults (issue 10): atomically, with the graph's size and sha256 to check it on reuse
        _write_json(info_path, {"input_names": list(names), "parity_max_abs_err": err, "weights_sha256": wsha,
                                "source": str(folder), "onnx_bytes": onnx_path.stat().st_size,
                                "onnx_sha256": _sha256(onnx_path)})
    if not err <= tolerance:
        raise ExportError(
            f"ONNX export of {folder} differs from PyTorch by {err:.3g} (> tolerance {tolerance:g}); "
            "the export is wrong for this architecture: report it with the model config"
        )
    return ExportResult(onnx_path, names, err, wsha, cached)


def _export(model: Any, names: tuple[str, ...], target: Path, task: Task) -> None:
    dummy = tuple(torch.ones((2, 8), dtype=torch.long) for _ in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | task.graph_axes()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(LogitsOnly(model, names, task).eval(), dummy, str(tmp / "model.onnx"), dynamo=False,
                              input_names=list(names), output_names=list(task.output_names), dynamic_axes=axes,
                              opset_version=OPSET)
        model.eval()  # the exporter restores the wrapper's train/eval mode on the model
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a killed export leaves only a .export-* folder
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"ONNX export failed ({type(exc).__name__}: {exc}); check the checkpoint loads in transformers") from exc


def parity_error(model: Any, session: Any, sample: list[dict[str, np.ndarray]], names: tuple[str, ...],
                 task: Task) -> float:
    """Max |ONNX - PyTorch| over the graph outputs of every batch in ``sample`` (padding
    positions included: the graph must match PyTorch on them too); the comparison is the
    task's (``Task.parity``: NaN/inf rules, tied top-k ids)."""
    err = 0.0
    wrapper = LogitsOnly(model, names, task).eval()
    for batch in sample:
        feed = {n: batch[n].astype(np.int64) for n in names}
        got = session.run(list(task.output_names), feed)
        with torch.no_grad():
            ref = [t.float().numpy() if t.is_floating_point() else t.numpy() for t in wrapper(*(torch.from_numpy(feed[n]) for n in names))]
        err = max(err, task.parity(got, ref))
    return err


# ---------------------------------------------------------------------------- faults (issue 10)
# A cache entry is reused only when whole: export.json is written last and atomically, and
# records the graph's size and sha256. A damaged entry (empty or invalid export.json, a
# truncated model.onnx) counts as missing and is exported again, instead of failing every
# later build until someone deletes the cache by hand.

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _cached_info(onnx_path: Path, info_path: Path) -> dict[str, Any] | None:
    """The cache entry's export.json when the entry is whole, else None (export again)."""
    try:
        info = json.loads(info_path.read_text())
        size = onnx_path.stat().st_size
    except (OSError, ValueError):
        return None
    if not (isinstance(info, dict) and isinstance(info.get("input_names"), list)
            and isinstance(info.get("parity_max_abs_err"), (int, float))):
        return None
    if "onnx_bytes" in info:  # written by this version: size and content must match
        return info if size == info["onnx_bytes"] and _sha256(onnx_path) == info.get("onnx_sha256") else None
    try:  # an older entry: whole if ONNX Runtime can load it
        make_session(onnx_path, "cpu")
    except Exception:  # noqa: BLE001 - any load failure means a damaged graph
        return None
    return info
