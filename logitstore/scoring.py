"""What a checkpoint entry records about its stored logits: the loss and every task metric
on each split (``split_scores``), and the validation ones that rank checkpoints (ths/tll).

Scores come from the *stored* logits (after encoding), against each split's gold labels,
by the task's ``scores`` (logitstore/tasks/). The build and a repair call this once an
entry's logits are all written.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from logitstore.format import CheckpointMeta
from logitstore.store import SplitData
from logitstore.tasks import get_task
from logitstore.transfer import labelled


def scored(store: Any, meta: CheckpointMeta, splits: dict[str, SplitData]) -> CheckpointMeta:
    """``meta`` with ``split_scores`` ({split: {"loss": x, metric: y, ...}}) for every split in
    ``splits`` but the unlabelled ``transfer`` split (logitstore/transfer.py), and ``val_loss``, ``val_score`` (``meta.metric``) and
    ``val_scores`` from the store's validation split. ``store``: an open LogitStore whose
    logits of ``meta.name`` are complete for those splits; raises StoreCorruptError otherwise."""
    task = get_task(store.meta.task)
    names = labelled(splits) if task.scores_every_split else [store.meta.validation_split]  # transfer: no labels
    scores = {name: task.checkpoint_scores(store, meta.name, splits[name]) for name in names}
    val = scores[store.meta.validation_split]
    return replace(meta, val_loss=val["loss"], val_score=val[meta.metric],
                   val_scores={k: v for k, v in val.items() if k != "loss"}, split_scores=scores)
