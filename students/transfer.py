"""Training on train + transfer (issue 14): `students train --transfer`.

The store's ``transfer`` split (logitstore/transfer.py) holds texts without labels and the
teacher's logits on them. With ``--transfer`` the training rows are the train split's and
the transfer split's together, in RAM: one permutation of all of them per epoch (seeded by
``seed + epoch``, as for train alone), so every batch mixes both in proportion; an epoch
is one pass over both, so it has (train + transfer rows) / batch size steps.

The loss is a mean over the batch's KD terms (rows; NER: tokens) of a per-term loss:

* a term of a train row: the usual mix, (1 - alpha) * CE(y, z_s) + alpha * tau_s**2 * D(z_t, z_s),
  over the task's terms (``Task.kd_terms``: NER the labelled tokens);
* a term of a transfer row: the KD term only, tau_s**2 * D(z_t, z_s) (alpha = 1 there: it has
  no y), over the task's ``unlabelled_terms`` (NER: the word starts the store marks -2,
  UNLABELLED, i.e. the positions a train row's KD covers; no cross-entropy ever sees -2).

So a batch with n_l terms of train rows and n_u of transfer rows costs
(n_l * L_mix(train terms) + n_u * L_kd(transfer terms)) / (n_l + n_u), each part the
project's one KD loss (students/loss.py) over its terms; for sequence classification the
terms are the rows. The logged ``ce`` is over the train rows' terms, ``kd`` over all terms.
Evaluation (validation, test) is unchanged: transfer rows have no labels and count in no score.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from logitstore.store import LogitStore, SplitData
from logitstore.tasks import IGNORE, Task
from logitstore.transfer import TRANSFER_SPLIT, supports_transfer, transfer_tasks
from students.config import KDLossConfig, LoaderConfig
from students.data import SplitBatches
from students.errors import StoreContentError
from students.loss import KDLossOutput, task_loss, terms_loss
from students.teacher import CachedTeacher


def joined(a: SplitData, b: SplitData, name: str = "train+transfer") -> SplitData:
    """Rows of ``a`` then rows of ``b`` as one split: labels (R,), per token (T,) (NER) or
    (R, 2) (QA, whose windows keep their offset mapping, record of origin (``window_of``,
    shifted past ``a``'s records), contexts and answers)."""
    types = None
    if a.token_type_ids is not None or b.token_type_ids is not None:
        zeros = lambda s: np.zeros(len(s.input_ids), np.int8)  # noqa: E731
        types = np.concatenate([a.token_type_ids if a.token_type_ids is not None else zeros(a),
                                b.token_type_ids if b.token_type_ids is not None else zeros(b)])
    qa = {}
    if a.window_of is not None and b.window_of is not None:  # QA windows: (T, 2), (R,), per record
        qa = {"offset_mapping": np.concatenate([a.offset_mapping, b.offset_mapping]),
              "window_of": np.concatenate([a.window_of, b.window_of + len(a.contexts)]),
              "contexts": a.contexts + b.contexts, "answers": a.answers + b.answers}
    return SplitData(name, np.concatenate([a.input_ids, b.input_ids]),
                     np.concatenate([a.offsets, b.offsets[1:] + a.offsets[-1]]),
                     np.concatenate([a.labels, b.labels]), np.concatenate([a.example_ids, b.example_ids]), types,
                     **qa)


class JoinedBatches(SplitBatches):
    """Shuffled batches over train + transfer rows with the teacher's logits, all in RAM."""

    def __init__(self, store: LogitStore, train: SplitData, transfer: SplitData, checkpoint: str,
                 cfg: LoaderConfig) -> None:
        super().__init__(store, joined(train, transfer), None, replace(cfg, mode="ram"), shuffle=True,
                         read_logits=False)
        self.checkpoint, self.read_logits = checkpoint, True
        self.train_rows = len(train)
        self._logits = np.concatenate([store.read_logits(checkpoint, train.name),
                                       store.read_logits(checkpoint, transfer.name)])  # (R_train + R_transfer, C)


def check_transfer(store: LogitStore, checkpoint: str | None) -> None:
    """Raise StoreContentError (one line) unless the store holds a complete transfer split with
    the teacher's logits on it."""
    from logitstore.tasks import get_task

    if not supports_transfer(get_task(store.meta.task)):
        raise StoreContentError(f"--transfer works for {transfer_tasks()} stores only; store {store.path} "
                                f"holds {store.meta.task}: drop --transfer")
    if TRANSFER_SPLIT not in store.split_names():
        raise StoreContentError(f"store {store.path} has no transfer split; build it with `logitstore build ... "
                                "--transfer FILE_OR_FOLDER` or drop --transfer")
    meta = store.logits_meta(checkpoint, TRANSFER_SPLIT) if checkpoint is not None else None
    if meta is None or not meta.complete:
        raise StoreContentError(f"store {store.path} has no complete teacher logits of checkpoint {checkpoint} on "
                                "its transfer split; rerun the build with that teacher or drop --transfer")


def check_marked(store: LogitStore, transfer: SplitData) -> None:
    """Raise StoreContentError (one line) when the task marks the positions to distil on a
    transfer row (``Task.transfer_marker``, NER: word starts) and the split marks none: a store
    built before the marker, whose rows would give the KD term nothing to cover."""
    from logitstore.tasks import get_task

    marker = get_task(store.meta.task).transfer_marker
    if marker != IGNORE and not (transfer.labels == marker).any():
        raise StoreContentError(f"the transfer split of store {store.path} marks no word start (label {marker}); "
                                "it predates the marker: rebuild it with `logitstore build ... --transfer` into "
                                "a new --out, or drop --transfer")


def with_transfer(run: Any, config: Any) -> Any:
    """The students.train ``_Run`` with its train batches over train + transfer and a teacher
    reading the stored logits (transfer rows need them even at alpha 0)."""
    ckpt = run.ckpt.name if run.ckpt is not None else None
    check_transfer(run.store, ckpt)
    assert ckpt is not None
    transfer = run.store.read_split(TRANSFER_SPLIT)
    check_marked(run.store, transfer)
    batches = JoinedBatches(run.store, run.train_batches.split, transfer, ckpt,
                            config.loader_config(run.store.meta.pad_token_id))
    return replace(run, train_batches=batches, train_teacher=run.train_teacher or CachedTeacher())


def transfer_loss(task: Task, student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                  cfg: KDLossConfig, attention_mask: torch.Tensor, use_labels: bool = True
                  ) -> tuple[KDLossOutput, int]:
    """``task_loss`` with transfer rows (no gold label: ``Task.unlabelled_rows``) at alpha = 1,
    over their ``unlabelled_terms``; the mean over terms of the per-term loss (see the module
    docstring). ``student_logits``/``teacher_logits`` (B, C) or (B, T, C), ``labels`` (B,) or
    (B, T), ``attention_mask`` (B, T). Returns the loss and its number of terms."""
    if teacher_logits is None:
        raise ValueError("transfer rows train on the teacher's logits only, so teacher logits are needed")
    unl = task.unlabelled_rows(labels)  # (B,) transfer rows
    parts: list[tuple[int, KDLossOutput]] = []
    if (~unl).any():  # train rows: the usual mix
        out, n = task_loss(task, student_logits[~unl], labels[~unl], teacher_logits[~unl], cfg,
                           attention_mask[~unl], use_labels=use_labels)
        parts += [(n, out)] if n else []
    ce = parts[0][1].ce if parts else None  # the train rows' gold CE (None: transfer rows only)
    if unl.any():  # transfer rows: the KD term alone, no gold term (alpha = 1)
        terms, n = task.unlabelled_terms(student_logits[unl], labels[unl], teacher_logits[unl], attention_mask[unl])
        parts += [(n, terms_loss(terms, replace(cfg, alpha=1.0), use_labels=False))] if n else []
    total = sum(n for n, _ in parts)
    if not total:
        raise ValueError("a batch without any KD term (no labelled token and no marked word start)")
    loss = sum(n * out.loss for n, out in parts) / total
    kd = sum(n * out.kd for n, out in parts if out.kd is not None) / total
    return KDLossOutput(loss, ce, kd), total
