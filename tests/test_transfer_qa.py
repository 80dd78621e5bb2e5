"""Transfer (unlabelled) data for extractive QA: `logitstore build --task qa --transfer` stores
(question, context) pairs without answers, cut into the same windows as a labelled split
(the build's --max-length and --stride), every window's start and end -100, no answer kept,
and the teacher's start and end logits on every token; `students train --transfer` distils
both distributions of each transfer window with the KD term alone (worked by hand: no CE
term, no gradient at padding). The same records given once as the labelled test split and
once as transfer data give the same windows and logits: the transfer split is the test split
without its answers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_qa_records, make_qa_teacher, write_jsonl
from logitstore.store import open_store
from logitstore.tasks import IGNORE, get_task
from logitstore.transfer import TRANSFER_SPLIT
from students.config import KDLossConfig
from students.loss import task_loss
from students.transfer import transfer_loss

QA = get_task("qa")
MAX_LEN, STRIDE = 48, 12
TRANSFER_RECORDS = 10


@pytest.fixture(scope="module")
def transfer_records() -> list[dict]:
    return make_qa_records(TRANSFER_RECORDS, seed=77)  # every 2nd context long: several windows


@pytest.fixture(scope="module")
def stores(_env, tmp_path_factory, transfer_records) -> tuple[Path, Path]:
    """A QA store whose transfer split is ``transfer_records`` without answers (JSONL of
    question and context only), and its twin built from the same records as official SQuAD
    JSON with answers, which the build must drop unread. Both hold the same records, with
    their answers, as the labelled test split."""
    from logitstore.cli import main

    base = tmp_path_factory.mktemp("qa-transfer")
    run = base / "run"
    make_qa_teacher(run / "checkpoint-1", seed=1)
    make_qa_teacher(run / "checkpoint-2", seed=2)
    data = base / "data"
    write_jsonl(data / "train.jsonl", make_qa_records(12, seed=1))
    write_jsonl(data / "validation.jsonl", make_qa_records(6, seed=2))
    write_jsonl(data / "test.jsonl", transfer_records)
    plain = write_jsonl(base / "plain.jsonl", [{"question": r["question"], "context": r["context"]}
                                               for r in transfer_records])
    squad = base / "squad.json"
    squad.write_text(json.dumps({"data": [{"paragraphs": [
        {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"],
                                           "answers": [{"text": t, "answer_start": s} for t, s in
                                                       zip(r["answers"]["text"], r["answers"]["answer_start"])]}]}
        for r in transfer_records]}]}))
    outs = []
    for name, transfer in (("plain", plain), ("squad", squad)):
        out = base / f"{name}.zarr"
        assert main(["build", "--task", "qa", "--teacher", str(run), "--data", str(data), "--dtype", "fp32",
                     "--max-length", str(MAX_LEN), "--stride", str(STRIDE), "--chunk-rows", "8", "--out", str(out),
                     "--transfer", str(transfer)]) == 0
        outs.append(out)
    return outs[0], outs[1]


def test_the_qa_transfer_split_is_the_test_split_without_answers(stores):
    """Same windows (token ids, offsets, token types, offset mapping, record of each window),
    the same contexts and the same teacher logits as the labelled test split built from the
    same records; start and end -100 on every window and no answer at all."""
    store = open_store(stores[0])
    test, transfer = store.read_split("test"), store.read_split(TRANSFER_SPLIT)
    assert len(transfer) > TRANSFER_RECORDS  # long contexts were cut into several windows
    for field in ("input_ids", "offsets", "token_type_ids", "offset_mapping", "window_of"):
        np.testing.assert_array_equal(getattr(transfer, field), getattr(test, field), err_msg=field)
    assert transfer.contexts == test.contexts and len(transfer.contexts) == TRANSFER_RECORDS
    assert transfer.answers == [[]] * TRANSFER_RECORDS and all(test.answers)
    assert transfer.labels.shape == (len(transfer), 2) and (transfer.labels == IGNORE).all()
    assert (test.labels >= 0).all() and (test.labels > 0).any()  # the twin's gold positions
    for name in ("checkpoint-1", "checkpoint-2"):
        np.testing.assert_array_equal(store.read_logits(name, TRANSFER_SPLIT), store.read_logits(name, "test"))
        assert set(store.checkpoint(name).split_scores) == {"train", "validation", "test"}  # none for transfer


def test_answers_in_qa_transfer_data_are_dropped_unread(stores):
    """Official SQuAD JSON with answers gives the split and logits of question/context pairs alone."""
    plain, squad = open_store(stores[0]), open_store(stores[1])
    a, b = plain.read_split(TRANSFER_SPLIT), squad.read_split(TRANSFER_SPLIT)
    for field in ("input_ids", "offsets", "labels", "example_ids", "offset_mapping", "window_of"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert b.answers == [[]] * TRANSFER_RECORDS and a.contexts == b.contexts
    for name in ("checkpoint-1", "checkpoint-2"):
        np.testing.assert_array_equal(plain.read_logits(name, TRANSFER_SPLIT), squad.read_logits(name, TRANSFER_SPLIT))


def test_a_qa_transfer_store_verifies_clean(stores):
    from logitstore.cli import main

    assert main(["verify", str(stores[0])]) == 0


# The KD loss on QA windows, by hand. tau = 1; student logits 0 -> uniform over a window's real tokens.
# Transfer window (2 real tokens + padding): teacher start (0, ln 3) -> p_t = (1/4, 3/4) against
# p_s = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2); teacher end (0, 0): KL = 0.
# Train window (3 real tokens): gold start 0, end 2, teacher 0: CE ln 3 for each, KL 0.
KL = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row 0 a train window, row 1 a transfer window as the store holds it (-100, -100), whose
    padding position has huge student and teacher logits (any part it took would show)."""
    student = torch.zeros(2, 3, 2)  # (B, T, 2): start, end per token
    student[1, 2] = torch.tensor([50.0, -50.0])
    teacher = torch.zeros(2, 3, 2)
    teacher[1, 1, 0] = math.log(3)
    teacher[1, 2] = torch.tensor([-40.0, 40.0])
    labels = torch.tensor([[0, 2], [IGNORE, IGNORE]])  # (B, 2)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # (B, T)
    return student, labels, teacher, mask


def _cfg(alpha: float) -> KDLossConfig:
    return KDLossConfig(temperature=1.0, student_temperature="teacher", alpha=alpha)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_the_loss_of_a_qa_transfer_window_is_the_kd_term_of_start_and_end(alpha, monkeypatch):
    """The transfer window alone: (KL(start) + KL(end)) / 2 = KL / 2 for every alpha, one term
    (a window), cross_entropy never called, zero gradient at padding."""
    seen: list[torch.Tensor] = []
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda i, t, *a, **k: seen.append(t) or real(i, t, *a, **k))
    student, labels, teacher, mask = _batch()
    z = student[1:].clone().requires_grad_(True)
    out, n = transfer_loss(QA, z, labels[1:], teacher[1:], _cfg(alpha), mask[1:], use_labels=alpha < 1)
    assert n == 1 and out.ce is None and not seen
    assert out.loss.item() == pytest.approx(KL / 2, abs=1e-6) and out.kd.item() == pytest.approx(KL / 2, abs=1e-6)
    out.loss.backward()
    # d/dz_s of KL(p_t || softmax(z_s)) = p_s - p_t, halved by the mean over start and end
    np.testing.assert_allclose(z.grad[0, :2, 0].numpy(), [(0.5 - 0.25) / 2, (0.5 - 0.75) / 2], atol=1e-6)
    np.testing.assert_allclose(z.grad[0, :2, 1].numpy(), [0.0, 0.0], atol=1e-6)
    assert (z.grad[0, 2] == 0).all()  # padding


def test_a_mixed_qa_batch_is_the_mean_over_windows_and_leaves_the_train_window_unchanged():
    """A train window and a transfer window: (mix + KL / 2) / 2 with mix = (1 - alpha) ln 3;
    the train window's part equals task_loss on it alone; ce is the train window's ln 3."""
    student, labels, teacher, mask = _batch()
    for alpha in (0.0, 0.5, 1.0):
        out, n = transfer_loss(QA, student, labels, teacher, _cfg(alpha), mask, use_labels=alpha < 1)
        mix = (1 - alpha) * math.log(3)
        assert n == 2 and out.loss.item() == pytest.approx((mix + KL / 2) / 2, abs=1e-6)
        alone, n1 = task_loss(QA, student[:1], labels[:1], teacher[:1], _cfg(alpha), mask[:1], use_labels=alpha < 1)
        assert n1 == 1 and alone.loss.item() == pytest.approx(mix, abs=1e-6)
        if alpha < 1:
            assert out.ce.item() == pytest.approx(math.log(3), abs=1e-6)
        assert out.kd.item() == pytest.approx(KL / 4, abs=1e-6)  # (0 + KL / 2) / 2 windows


def test_students_train_on_qa_train_plus_transfer_via_the_cli(stores, tmp_path, _one_thread):
    """Batches hold every train and transfer window once with its stored logits (transfer
    windows -100, -100); `students train --transfer` runs end to end and scores validation
    and test as usual."""
    from rich.console import Console

    from students.cli import main
    from students.train import TrainConfig, _prepare
    from students.transfer import with_transfer

    store = open_store(stores[0])
    train, transfer = store.read_split("train"), store.read_split(TRANSFER_SPLIT)
    config = TrainConfig(store=str(stores[0]), out=str(tmp_path / "probe"), transfer=True, alpha=0.5, layers=1,
                         epochs=1, batch_size=8, device="cpu", threads=1, progress=False, teacher="tll")
    run = with_transfer(_prepare(config, Console(quiet=True)), config)
    joined = run.train_batches.split
    assert joined.contexts == train.contexts + transfer.contexts
    np.testing.assert_array_equal(joined.window_of, np.concatenate([train.window_of,
                                                                    transfer.window_of + len(train.contexts)]))
    seen = []
    for batch in run.train_batches.epoch(0):
        for j, r in enumerate(batch.rows.tolist()):
            assert (batch.labels[j] == IGNORE).all() == (r >= len(train)), r
        seen += batch.rows.tolist()
    assert sorted(seen) == list(range(len(train) + len(transfer)))

    out = tmp_path / "run"
    assert main(["train", "--store", str(stores[0]), "--out", str(out), "--transfer", "--alpha", "0.5", "--layers",
                 "1", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--threads", "1", "--no-progress"]) == 0
    resolved = json.loads((out / "run_config.json").read_text())
    assert resolved["transfer"] is True and resolved["train_rows"] == len(train) + len(transfer)
    test = json.loads((out / "summary.json").read_text())["test"]
    assert test["split"] == "test" and 0 <= test["f1"] <= 1 and math.isfinite(test["ce"])
    assert test["examples"] == len(store.read_split("test").contexts)  # its questions: no transfer row is scored
