"""Export a transformers checkpoint to ONNX, check it against PyTorch, cache it by content.

The export uses torch.onnx's TorchScript exporter (``dynamo=False``) with eager attention:
it exports a 6-layer BERT in ~1.5 s (the dynamo exporter takes ~8 s) and gives ONNX
Runtime a graph it can fuse. Batch and sequence axes are dynamic; the output is named
``logits``. Exports live in ``$LOGITSTORE_CACHE/onnx/<key>/model.onnx`` (default
``~/.cache/logitstore``), where the key hashes the weights, the config and the exporter
settings, so exporting the same checkpoint twice does no work the second time.

Concurrent builds share the cache (logitstore/cache.py): one process at a time exports a
given key (a lock beside its folder; the others wait, then reuse its entry). An export is
written, parity-checked and described (export.json) in a temporary folder, then published
by one rename: an entry is never replaced while valid, and a damaged one is renamed away
before the new one takes its place, so a reader never finds the folder half-written.

Parity: the ONNX graph and PyTorch eager run the same real inputs; the largest absolute
logit difference must stay under ``PARITY_TOLERANCE`` (fp32 graphs match to ~1e-5; 1e-3
leaves room for other execution providers' kernels while catching a wrong export,
whose errors are of the order of the logits themselves).
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from logitstore.cache import onnx_dir, read_info, using_cache
from logitstore.checkpoints import weights_sha256
from logitstore.errors import CheckpointError, ExportError
from logitstore.runtime import make_session
from logitstore.tasks import Task, task_of_folders
from logitstore.util import sha256_file

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
        model_feed = {k: v for k, v in feed.items() if k not in self.task.extra_inputs}  # (sampled LM: draws)
        return self.task.graph_outputs(self.model(**model_feed, **self.task.forward_kwargs), feed)


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
    sequence classification). ``cache_dir``: the folder of exports (default
    ``$LOGITSTORE_CACHE/onnx``).

    ``sample``: padded int64 batches keyed by input name (real inputs); built-in probe
    sentences when None. ``weights_sha``: the folder's weights_sha256 when the caller has
    it already. Raises ExportError when the parity error exceeds ``tolerance``.
    """
    folder = Path(folder)
    wsha = weights_sha or weights_sha256(folder)
    task = task or task_of_folders((folder,))
    tag = _EXPORTER_TAG + task.fingerprint_tag
    key = hashlib.sha256(f"{wsha}|{tag}|torch{torch.__version__}".encode()).hexdigest()[:24]
    target = (cache_dir or onnx_dir()) / key
    model = None
    with using_cache(target.parent):  # no prune meanwhile
        with _exporting(target):  # one exporter of this key at a time; the others then reuse its entry
            info = _cached_info(target)  # faults (issue 10): None when missing or damaged
            cached = info is not None
            if not cached:
                model = load_model(folder, task)
                info, cached = _export(model, folder, target, task, wsha, sample)
        names = tuple(info["input_names"])
        err = float(info["parity_max_abs_err"])
        if cached:
            _touch(target)  # its "last used" time (`logitstore cache`)
            if sample is not None:  # the parity that counts is the caller's inputs'
                model = model if model is not None else load_model(folder, task)
                err = parity_error(model, make_session(target / "model.onnx", "cpu").session, sample, names, task)
    if not err <= tolerance:
        raise ExportError(
            f"ONNX export of {folder} differs from PyTorch by {err:.3g} (> tolerance {tolerance:g}); "
            "the export is wrong for this architecture: report it with the model config"
        )
    return ExportResult(target / "model.onnx", names, err, wsha, cached)


def _export(model: Any, folder: Path, target: Path, task: Task, wsha: str,
            sample: list[dict[str, np.ndarray]] | None) -> tuple[dict[str, Any], bool]:
    """Export ``model`` into a temporary folder beside ``target``, check its parity there on
    ``sample`` (probe sentences when None), describe it (export.json) and publish it as
    ``target``. Returns the entry's export.json and whether it is another export's (a valid
    entry that appeared meanwhile, which is then used and ours dropped)."""
    names = graph_input_names(model) + task.extra_inputs
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
    try:
        _write_graph(model, names, tmp / "model.onnx", task)
        sample = sample if sample is not None else probe_inputs(folder, names)
        err = parity_error(model, make_session(tmp / "model.onnx", "cpu").session, sample, names, task)
        # faults (issue 10): with the graph's size and sha256, to check it on reuse
        info = {"input_names": list(names), "parity_max_abs_err": err, "weights_sha256": wsha, "source": str(folder),
                "onnx_bytes": (tmp / "model.onnx").stat().st_size, "onnx_sha256": sha256_file(tmp / "model.onnx")}
        _write_json(tmp / "export.json", info)
        return _publish(tmp, target, info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when published


def _write_graph(model: Any, names: tuple[str, ...], path: Path, task: Task) -> None:
    dummy = tuple(torch.ones((2, 8), dtype=torch.long) for n in names if n not in task.extra_inputs)
    dummy += tuple(torch.from_numpy(v) for v in task.extra_feed({"input_ids": np.ones((2, 8), np.int64)}).values())
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | task.graph_axes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(LogitsOnly(model, names, task).eval(), dummy, str(path), dynamo=False,
                              input_names=list(names), output_names=list(task.output_names), dynamic_axes=axes,
                              opset_version=OPSET)
        model.eval()  # the exporter restores the wrapper's train/eval mode on the model
    except Exception as exc:
        raise ExportError(f"ONNX export failed ({type(exc).__name__}: {exc}); check the checkpoint loads in transformers") from exc


def _publish(tmp: Path, target: Path, info: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Rename the finished export ``tmp`` to ``target`` (atomic). When ``target`` exists: a
    valid entry wins (returned, with True: ours is dropped); a damaged one is renamed
    away first, then replaced, then deleted. Never removes ``target`` in place."""
    aside = None
    try:
        while True:
            try:
                os.rename(tmp, target)  # fails while target is a folder with files in it
                return info, False
            except OSError:
                if not (target.exists() or target.is_symlink()):
                    raise
            theirs = _cached_info(target)
            if theirs is not None:
                return theirs, True
            if aside is not None:  # it was replaced by another damaged entry meanwhile
                raise ExportError(f"cannot replace the damaged export cache entry {target}; remove it and rerun")
            aside = target.with_name(f".damaged-{target.name}-{os.getpid()}")
            os.rename(target, aside)
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _exporting(target: Path) -> Iterator[None]:
    """Hold the lock of cache entry ``target`` (``.<key>.lock`` beside it), waiting while
    another process exports the same checkpoint."""
    import filelock

    target.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(target.with_name(f".{target.name}.lock")))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        from logitstore.progress import console

        with console.status(f"waiting for another process exporting the same checkpoint ({target.name})"):
            lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def parity_error(model: Any, session: Any, sample: list[dict[str, np.ndarray]], names: tuple[str, ...],
                 task: Task) -> float:
    """Max |ONNX - PyTorch| over the graph outputs of every batch in ``sample`` (padding
    positions included: the graph must match PyTorch on them too); the comparison is the
    task's (``Task.parity``: NaN/inf rules, tied top-k ids)."""
    err = 0.0
    wrapper = LogitsOnly(model, names, task).eval()
    for batch in sample:
        feed = {n: batch[n].astype(np.int64) for n in names if n not in task.extra_inputs}
        feed |= task.extra_feed(feed)  # (sampled LM: seeded uniform draws)
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

def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _cached_info(entry: Path) -> dict[str, Any] | None:
    """The cache entry's export.json when the entry is whole, else None (export again)."""
    info = read_info(entry)  # readable, and model.onnx has the recorded size
    if info is None:
        return None
    if "onnx_bytes" in info:  # written by this version: the content must match too
        return info if sha256_file(entry / "model.onnx") == info.get("onnx_sha256") else None
    try:  # an older entry: whole if ONNX Runtime can load it
        make_session(entry / "model.onnx", "cpu")
    except Exception:  # noqa: BLE001 - any load failure means a damaged graph
        return None
    return info
