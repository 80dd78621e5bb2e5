"""The KD loss of the token tasks against values computed by hand (numpy, float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from logitstore.tasks import get_task
from students.loss import KDLossConfig, task_loss

NER, QA = get_task("ner"), get_task("qa")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _kl(zt: np.ndarray, zs: np.ndarray) -> np.ndarray:
    lt, ls = _log_softmax(zt), _log_softmax(zs)
    return (np.exp(lt) * (lt - ls)).sum(axis=-1)


ZS = np.array([[[0.3, -1.2, 2.0], [1.5, 0.1, -0.4], [0.0, 0.7, 0.2], [9.0, 9.0, 9.0]],
               [[-0.5, 0.5, 1.0], [2.2, -0.3, 0.1], [0.4, 0.4, -1.0], [1.0, -2.0, 0.5]]])  # (B=2, T=4, C=3)
ZT = np.array([[[1.0, -0.5, 0.2], [0.3, 0.3, 1.9], [-1.0, 2.0, 0.0], [-9.0, 5.0, 1.0]],
               [[0.8, 0.1, -0.2], [1.1, 1.0, -2.0], [0.0, -0.6, 0.9], [2.0, 0.0, 0.0]]])
NER_LABELS = np.array([[-100, 2, 0, -100], [-100, 1, -100, 0]])  # (B, T): CLS, words, later sub-tokens


@pytest.mark.parametrize("distance", ["ce", "mse"])
@pytest.mark.parametrize("student_temperature", ["teacher", "1"])
def test_token_classification_loss_covers_labelled_tokens_only(distance, student_temperature):
    cfg = KDLossConfig(distance, 3.0, student_temperature, alpha=0.3)
    tau_t, tau_s = 3.0, 3.0 if student_temperature == "teacher" else 1.0
    out, n = task_loss(NER, torch.tensor(ZS), torch.tensor(NER_LABELS), torch.tensor(ZT), cfg,
                       torch.ones(2, 4, dtype=torch.long))
    keep = NER_LABELS != -100
    zs, zt, y = ZS[keep], ZT[keep], NER_LABELS[keep]  # (4, 3), (4, 3), (4,)
    ce = -_log_softmax(zs)[np.arange(len(y)), y].mean()
    if distance == "ce":
        kd = tau_s**2 * _kl(zt / tau_t, zs / tau_s).mean()
    else:
        kd = tau_s**2 * ((zt / tau_t - zs / tau_s) ** 2).mean()
    assert n == 4
    assert float(out.ce) == pytest.approx(ce, rel=1e-5)
    assert float(out.kd) == pytest.approx(kd, rel=1e-5)
    assert float(out.loss) == pytest.approx(0.7 * ce + 0.3 * kd, rel=1e-5)


QA_S = np.array([[[0.5, 0.1], [2.0, -1.0], [-0.3, 1.7], [40.0, 40.0]],
                 [[1.0, 0.0], [0.2, 0.4], [-1.0, 2.5], [0.6, -0.2]]])  # (B=2, T=4, 2): start, end
QA_T = np.array([[[1.2, -0.4], [0.1, 0.0], [0.9, 2.2], [-30.0, 7.0]],
                 [[0.0, 0.3], [1.5, 0.2], [0.4, 1.1], [-0.7, 0.9]]])
QA_MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])  # the first window is padded at its last token
QA_LABELS = np.array([[1, 2], [0, 0]])  # (B, 2) gold start, end (0 = CLS: answer not in the window)


@pytest.mark.parametrize("distance", ["ce", "mse"])
def test_question_answering_loss_is_the_mean_of_start_and_end_over_real_tokens(distance):
    cfg = KDLossConfig(distance, 2.0, "1", alpha=0.6)
    out, n = task_loss(QA, torch.tensor(QA_S), torch.tensor(QA_LABELS), torch.tensor(QA_T), cfg,
                       torch.tensor(QA_MASK))
    ce_parts, kd_parts = [], []
    for k in (0, 1):  # start, end
        ce_rows, kd_rows = [], []
        for b in range(2):
            real = QA_MASK[b] == 1
            zs, zt = QA_S[b, real, k], QA_T[b, real, k]  # padding is not a position the answer can take
            ce_rows.append(-_log_softmax(zs)[QA_LABELS[b, k]])
            kd_rows.append(_kl(zt / 2.0, zs) if distance == "ce" else ((zt / 2.0 - zs) ** 2).mean())
        ce_parts.append(np.mean(ce_rows))
        kd_parts.append(np.mean(kd_rows))
    ce, kd = np.mean(ce_parts), np.mean(kd_parts)
    assert n == 2
    assert float(out.ce) == pytest.approx(ce, rel=1e-5)
    assert float(out.kd) == pytest.approx(kd, rel=1e-5)
    assert float(out.loss) == pytest.approx(0.4 * ce + 0.6 * kd, rel=1e-5)


def test_alpha_one_needs_no_gold_labels_but_keeps_the_ner_mask():
    cfg = KDLossConfig("ce", 2.0, "teacher", alpha=1.0)
    out, n = task_loss(NER, torch.tensor(ZS), torch.tensor(NER_LABELS), torch.tensor(ZT), cfg,
                       torch.ones(2, 4, dtype=torch.long), use_labels=False)
    keep = NER_LABELS != -100
    assert out.ce is None and n == 4
    assert float(out.loss) == pytest.approx(4.0 * _kl(ZT[keep] / 2, ZS[keep] / 2).mean(), rel=1e-5)


# ---------------------------------------------------------------------------- one loss rule on both sides
def _split(task: str, rng: np.random.Generator):
    """A small SplitData of ``task`` (ragged rows of 3-6 tokens) and its store-layout logits."""
    from logitstore.store import SplitData, ragged

    lengths = [5, 3, 6, 4]
    ids, offsets = ragged([list(range(2, 2 + n)) for n in lengths], np.int32)
    rows, tokens = len(lengths), int(offsets[-1])
    if task == "sequence-classification":
        return SplitData("validation", ids, offsets, rng.integers(0, 3, rows), np.arange(rows)), \
            rng.normal(size=(rows, 3)).astype(np.float32)
    if task == "token-classification":
        labels = rng.integers(0, 5, tokens)
        labels[offsets[:-1]] = -100  # [CLS]
        labels[offsets[1:] - 1] = -100  # [SEP]
        return SplitData("validation", ids, offsets, labels, np.arange(rows)), \
            rng.normal(size=(tokens, 5)).astype(np.float32)
    omap = np.stack([np.arange(tokens), np.arange(tokens) + 1], axis=1).astype(np.int32)  # every token a character
    omap[offsets[:-1]] = -1  # [CLS] is not context
    labels = np.tile([1, 2], (rows, 1))  # (R, 2) gold start, end token of each window
    split = SplitData("validation", ids, offsets, labels, np.arange(rows), None, omap, np.arange(rows),
                      ["x" * (tokens + 1)] * rows, [["x"]] * rows)
    return split, rng.normal(size=(tokens, 2)).astype(np.float32)


@pytest.mark.parametrize("name", ["sequence-classification", "token-classification", "question-answering"])
def test_alpha_zero_ce_equals_the_stores_validation_loss_rule(name):
    """The numpy validation loss a store records for a checkpoint (Task.scores) and the
    student's gold CE (task_loss at alpha 0) are one rule: equal on the same logits."""
    from logitstore.tasks import get_task
    from students.data import collate

    task = get_task(name)
    split, logits = _split(name, np.random.default_rng(0))
    rows = np.arange(len(split))
    per_row = [logits[a:b] for a, b in zip(split.offsets[:-1], split.offsets[1:])] if task.per_token else logits
    batch = collate(split, rows, per_row, pad_id=0, token_labels=task.token_labels)
    out, _ = task_loss(task, batch.teacher_logits, batch.labels, None, KDLossConfig(alpha=0.0), batch.attention_mask)
    expected = task.scores(logits, split, ["O", "B-a", "I-a", "B-b", "I-b"][:logits.shape[-1]])["loss"]
    assert float(out.ce) == pytest.approx(expected, rel=1e-5)
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
