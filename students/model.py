"""Students: the teacher's architecture with fewer layers, initialised skip-layer style.

A student with K layers built from a source model with N layers (the teacher checkpoint,
or the model given with ``--init``) copies

* the embeddings, the pooler and the classification head unchanged;
* into student layer j (0-based) the source layer ``floor((j + 1) * N / K) - 1``: evenly
  spaced layers that end at the source's top layer. K = N copies every layer (identity);
  N = 4, K = 2 copies layers 1 and 3; K = 1 copies layer N - 1.

The layer list is found as the one ``nn.ModuleList`` of the model with N entries (for BERT
``bert.encoder.layer``), so any transformers encoder with such a list works. K > N, a
source without such a list, and a source whose vocabulary differs from the store's are
errors (StudentInitError).
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedModel

from logitstore.tasks import Task

from students.data import Batch
from students.errors import StudentInitError


@dataclass(frozen=True)
class StudentInit:
    """Where a student's weights came from: ``layer_map[j]`` is the source layer of layer j."""

    source: str
    source_layers: int
    layers: int
    layer_map: tuple[int, ...]
    layer_prefix: str


def layer_map(source_layers: int, layers: int) -> tuple[int, ...]:
    """Source layer of each student layer: floor((j + 1) * N / K) - 1 for j < K."""
    if not 1 <= layers <= source_layers:
        raise StudentInitError(
            f"a student with {layers} layers cannot be built from a model with {source_layers}; "
            f"pick --layers between 1 and {source_layers}"
        )
    return tuple((j + 1) * source_layers // layers - 1 for j in range(layers))


def _load_config(source: str):
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError for a bad folder
        raise StudentInitError(
            f"cannot read a transformers model config from {source} ({type(exc).__name__}); "
            "pass a folder holding config.json and the weights"
        ) from exc


def _layer_prefix(model: nn.Module, n: int, source: str) -> str:
    lists = [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(lists) != 1:
        raise StudentInitError(
            f"cannot find the one list of {n} transformer layers in the model at {source} "
            f"(found {len(lists)}); use a standard transformers encoder (BERT-like) or pass --init"
        )
    return lists[0]


def _refuse_pickle(source: str) -> None:
    """StudentInitError naming the fix when the folder ``source`` has pickled weights
    (pytorch_model.bin) but no safetensors: students load weights only from safetensors."""
    folder = Path(source)
    if folder.is_dir() and not any(folder.glob("*.safetensors")) and any(folder.glob("pytorch_model*.bin")):
        raise StudentInitError(
            f"{source} holds only pickled weights (pytorch_model.bin), which students never load (unpickling "
            "can run code); re-save the model with save_pretrained(safe_serialization=True) (transformers >= 5: "
            "save_pretrained writes model.safetensors) and pass that folder"
        )


def build_student(source: str, layers: int, label_names: list[str], vocab_size: int,
                  task: Task) -> tuple[PreTrainedModel, StudentInit]:
    """A K-layer model of ``task`` (sequence or token classifier, QA span head)
    initialised from the model at ``source``.

    ``label_names`` set the head (a source head of another size is replaced by a freshly
    initialised one, so seed torch before calling); ``vocab_size`` is the size the store's
    token ids were made for. Raises StudentInitError for K > N, K < 1, a different
    vocabulary size, a folder that is not a transformers model, or one whose weights are
    only pickled (pytorch_model.bin: weights are read from safetensors only).
    """
    cfg = _load_config(source)
    n = getattr(cfg, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise StudentInitError(f"the model config at {source} has no num_hidden_layers; pass a transformer encoder")
    mapping = layer_map(n, layers)
    src_vocab = getattr(cfg, "vocab_size", None)
    if src_vocab != vocab_size:
        raise StudentInitError(
            f"the model at {source} has a vocabulary of {src_vocab} tokens but the store's token ids are "
            f"for {vocab_size}; initialise from a model with the store's tokenizer"
        )
    auto = task.model_class()
    num_labels = len(label_names)
    labels = {"num_labels": num_labels, "id2label": dict(enumerate(label_names)),
              "label2id": {name: i for i, name in enumerate(label_names)}}
    _refuse_pickle(source)
    try:  # use_safetensors: never unpickle a .bin (pickle can run code on load)
        src_model = auto.from_pretrained(source, ignore_mismatched_sizes=True, dtype=torch.float32,
                                         use_safetensors=True, trust_remote_code=False, **labels)
    except Exception as exc:
        raise StudentInitError(
            f"cannot load a {task.name} model from {source} ({type(exc).__name__}: {exc}); "
            "pass a transformers checkpoint folder"
        ) from exc
    prefix = _layer_prefix(src_model, n, source)

    student_cfg = copy.deepcopy(src_model.config)
    student_cfg.num_hidden_layers = layers
    student = auto.from_config(student_cfg, dtype=torch.float32)
    src = src_model.state_dict()
    state = {}
    for key, value in student.state_dict().items():
        src_key = key
        if key.startswith(prefix + "."):
            j, rest = key[len(prefix) + 1:].split(".", 1)
            src_key = f"{prefix}.{mapping[int(j)]}.{rest}"
        if src_key not in src or src[src_key].shape != value.shape:
            raise StudentInitError(
                f"the model at {source} has no weight {src_key} of shape {tuple(value.shape)} for the student; "
                "initialise from a model of the teacher's architecture"
            )
        state[key] = src[src_key].detach().clone()
    student.load_state_dict(state, strict=True)
    return student, StudentInit(source, n, layers, mapping, prefix)


def forward_kwargs(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """The inputs of ``batch`` that ``model.forward`` takes (token_type_ids only if it has them)."""
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}  # (B, T) each
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        kwargs["token_type_ids"] = batch.token_type_ids  # (B, T)
    return kwargs
