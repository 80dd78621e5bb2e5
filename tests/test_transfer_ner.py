"""Transfer (unlabelled) data for NER: `logitstore build --task ner --transfer` stores
sentences without tags, every token's label -100 and the teacher's logits on every token;
`students train --transfer` distils every real token of those rows with the KD term alone
(worked by hand); a tag column in the transfer file is ignored, as classification ignores
its label column."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_ner_rows, write_jsonl, write_ner_splits
from logitstore.store import open_store
from logitstore.tasks import IGNORE, get_task
from logitstore.transfer import TRANSFER_SPLIT
from students.config import KDLossConfig
from students.loss import task_loss
from students.transfer import transfer_loss

NER = get_task("ner")
TRAIN_ROWS, TRANSFER_ROWS = 24, 18


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory) -> Path:
    return write_ner_splits(tmp_path_factory.mktemp("ner-data"), {"train": TRAIN_ROWS, "validation": 12, "test": 8})


@pytest.fixture(scope="module")
def transfer_rows() -> list[dict]:
    return make_ner_rows(TRANSFER_ROWS, seed=77)


@pytest.fixture(scope="module")
def transfer_files(tmp_path_factory, transfer_rows) -> tuple[Path, Path]:
    """The sentences as word lists only, and the same with a tag column of tags that are not
    even BIO (it must be dropped unread)."""
    folder = tmp_path_factory.mktemp("transfer")
    plain = write_jsonl(folder / "unlabelled.jsonl", [{"tokens": r["tokens"]} for r in transfer_rows])
    tagged = write_jsonl(folder / "tagged.jsonl",
                         [{"tokens": r["tokens"], "ner_tags": ["X-bad"] * len(r["tokens"])} for r in transfer_rows])
    return plain, tagged


@pytest.fixture(scope="module")
def stores(_env, ner_run, ner_data, transfer_files, tmp_path_factory) -> tuple[Path, Path]:
    """The NER data built through the CLI with each transfer file."""
    from logitstore.cli import main

    base = tmp_path_factory.mktemp("stores")
    for name, transfer in zip(("plain", "tagged"), transfer_files):
        assert main(["build", "--teacher", str(ner_run), "--data", str(ner_data), "--dtype", "fp32", "--chunk-rows",
                     "8", "--out", str(base / f"{name}.zarr"), "--transfer", str(transfer)]) == 0
    return base / "plain.zarr", base / "tagged.zarr"


def test_the_ner_transfer_split_holds_no_labels_and_the_teachers_token_logits(stores, ner_run, transfer_rows):
    from transformers import AutoModelForTokenClassification

    store = open_store(stores[0])
    split = store.read_split(TRANSFER_SPLIT)
    tok = store.load_tokenizer()
    want_ids = [tok(r["tokens"], is_split_into_words=True, truncation=True, max_length=store.meta.max_length)
                ["input_ids"] for r in transfer_rows]
    assert len(split) == TRANSFER_ROWS and split.example_ids.tolist() == list(range(TRANSFER_ROWS))
    assert [split.row(i).tolist() for i in range(len(split))] == want_ids  # same tokenizer and max length
    assert split.labels.shape == (int(split.offsets[-1]),) and (split.labels == IGNORE).all()  # per token, all -100
    for name in ("checkpoint-1", "checkpoint-2"):
        model = AutoModelForTokenClassification.from_pretrained(ner_run / name, attn_implementation="eager").eval()
        with torch.no_grad():  # each row alone, no padding: (sum of row lengths, C)
            want = np.concatenate([model(input_ids=torch.tensor([ids])).logits[0].numpy() for ids in want_ids])
        got = store.read_logits(name, TRANSFER_SPLIT)
        assert got.shape == want.shape == (int(split.offsets[-1]), len(store.meta.label_names))
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=name)
        ckpt = store.checkpoint(name)  # no scores: the split has no labels
        assert set(ckpt.split_scores) == {"train", "validation", "test"}
        assert ckpt.val_loss == pytest.approx(ckpt.split_scores["validation"]["loss"])


def test_a_ner_transfer_store_verifies_clean(stores, capsys):
    from logitstore.cli import main

    assert main(["verify", str(stores[0])]) == 0


def test_a_tag_column_in_ner_transfer_data_is_ignored(stores):
    """Like classification's label column: dropped unread (its tags are not even BIO), so the
    split and the logits equal those of the file without it."""
    plain, tagged = open_store(stores[0]), open_store(stores[1])
    a, b = plain.read_split(TRANSFER_SPLIT), tagged.read_split(TRANSFER_SPLIT)
    for field in ("input_ids", "offsets", "labels", "example_ids"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for name in ("checkpoint-1", "checkpoint-2"):
        np.testing.assert_array_equal(plain.read_logits(name, TRANSFER_SPLIT), tagged.read_logits(name, TRANSFER_SPLIT))


# The KD loss on token rows, by hand. tau = 1, C = 2, student logits 0 -> p_s = (1/2, 1/2).
# Teacher (0, ln 3) -> p_t = (1/4, 3/4): KL = 3/4 ln(3/2) + 1/4 ln(1/2); teacher (0, 0): KL = 0.
KL = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.130812...
LN3 = math.log(3)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row 0: a train row of 3 real tokens, one labelled (tag 0, teacher (ln 3, 0): CE ln 2, KD
    KL). Row 1: a transfer row of 2 real tokens (teacher (0, ln 3) and (0, 0)) and one padding
    token whose student logits are huge: padding must take no part."""
    student = torch.zeros(2, 3, 2)  # (B, T, C)
    student[1, 2] = torch.tensor([50.0, -50.0])
    teacher = torch.tensor([[[0.0, 0.0], [LN3, 0.0], [0.0, 0.0]],
                            [[0.0, LN3], [0.0, 0.0], [0.0, 0.0]]])  # (B, T, C), 0 at padding
    labels = torch.tensor([[IGNORE, 0, IGNORE], [IGNORE, IGNORE, IGNORE]])  # (B, T)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # (B, T)
    return student, labels, teacher, mask


def _cfg(alpha: float) -> KDLossConfig:
    return KDLossConfig(temperature=1.0, student_temperature="teacher", alpha=alpha)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_the_loss_of_a_ner_transfer_row_is_the_kd_term_alone(alpha):
    """A batch of the transfer row alone: the mean KL over its real tokens, (KL + 0) / 2, for
    every alpha; no CE term (ce None, no NaN from its all -100 labels); padding gets no gradient."""
    student, labels, teacher, mask = _batch()
    z = student[1:].clone().requires_grad_(True)
    out, n = transfer_loss(NER, z, labels[1:], teacher[1:], _cfg(alpha), mask[1:], use_labels=alpha < 1)
    assert n == 2 and out.ce is None
    assert out.loss.item() == pytest.approx(KL / 2, abs=1e-6) and out.kd.item() == pytest.approx(KL / 2, abs=1e-6)
    out.loss.backward()
    assert torch.isfinite(z.grad).all() and (z.grad[0, 2] == 0).all()  # the padding token
    # by hand: d/dz_s of KL(p_t || softmax(z_s)) = p_s - p_t, over the 2 terms of the mean
    np.testing.assert_allclose(z.grad[0, 0].numpy(), [(0.5 - 0.25) / 2, (0.5 - 0.75) / 2], atol=1e-6)
    np.testing.assert_allclose(z.grad[0, 1].numpy(), [0.0, 0.0], atol=1e-6)


def test_a_mixed_ner_batch_is_the_mean_over_terms():
    """A train row (1 labelled token) and a transfer row (2 real tokens): (mix + KL + 0) / 3,
    the train row's part being exactly task_loss on it alone; ce is the train token's ln 2."""
    student, labels, teacher, mask = _batch()
    for alpha in (0.0, 0.5, 1.0):
        out, n = transfer_loss(NER, student, labels, teacher, _cfg(alpha), mask, use_labels=alpha < 1)
        mix = (1 - alpha) * math.log(2) + alpha * KL
        assert n == 3 and float(out.loss) == pytest.approx((mix + KL) / 3, abs=1e-6)
        alone, _ = task_loss(NER, student[:1], labels[:1], teacher[:1], _cfg(alpha), mask[:1], use_labels=alpha < 1)
        assert float(alone.loss) == pytest.approx(mix, abs=1e-6)
        if alpha < 1:
            assert float(out.ce) == pytest.approx(math.log(2), abs=1e-6)
        assert float(out.kd) == pytest.approx(2 * KL / 3, abs=1e-6)  # (KL + KL + 0) / 3 terms


def test_students_train_on_ner_train_plus_transfer_via_the_cli(stores, tmp_path, _one_thread):
    """The batches hold every train and transfer row once with its stored per-token logits,
    transfer rows labelled -100 throughout; `students train --transfer` runs end to end."""
    from rich.console import Console

    from students.cli import main
    from students.train import TrainConfig, _prepare
    from students.transfer import with_transfer

    config = TrainConfig(store=str(stores[0]), out=str(tmp_path / "probe"), transfer=True, alpha=0.5, layers=1,
                         epochs=1, batch_size=8, device="cpu", threads=1, progress=False, teacher="tll")
    run = with_transfer(_prepare(config, Console(quiet=True)), config)
    store = open_store(stores[0])
    ckpt = store.select("tll").name
    per_row = []
    for split in ("train", TRANSFER_SPLIT):
        data, logits = store.read_split(split), store.read_logits(ckpt, split)
        per_row += [logits[data.offsets[i]:data.offsets[i + 1]] for i in range(len(data))]
    seen = []
    for batch in run.train_batches.epoch(0):
        for j, r in enumerate(batch.rows.tolist()):
            length = len(per_row[r])
            np.testing.assert_array_equal(batch.teacher_logits[j, :length].numpy(), per_row[r])
            assert (batch.labels[j] == IGNORE).all().item() == (r >= TRAIN_ROWS)  # rows past train's: transfer
        seen += batch.rows.tolist()
    assert sorted(seen) == list(range(TRAIN_ROWS + TRANSFER_ROWS))

    out = tmp_path / "run"
    assert main(["train", "--store", str(stores[0]), "--out", str(out), "--transfer", "--alpha", "0.5", "--layers",
                 "1", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--threads", "1", "--no-progress"]) == 0
    resolved = json.loads((out / "run_config.json").read_text())
    assert resolved["transfer"] is True and resolved["train_rows"] == TRAIN_ROWS + TRANSFER_ROWS
    assert resolved["steps_per_epoch"] == math.ceil((TRAIN_ROWS + TRANSFER_ROWS) / 8)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines and all(math.isfinite(line["train_loss"]) and math.isfinite(line["train_kd"]) for line in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == resolved["steps_per_epoch"]
