"""Transfer (unlabelled) data for NER: `logitstore build --task ner --transfer` stores
sentences without tags, -2 (UNLABELLED) at each word's first sub-token and -100 elsewhere,
and the teacher's logits on every token; `students train --transfer` distils exactly those
word starts (the positions a labelled row distils) with the KD term alone (worked by hand:
no CE term, no gradient at special tokens, later sub-tokens or padding); a tag column in
the transfer file is ignored, as classification ignores its label column."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_ner_rows, write_jsonl, write_ner_splits
from logitstore.store import open_store
from logitstore.tasks import IGNORE, UNLABELLED, get_task
from logitstore.transfer import TRANSFER_SPLIT
from students.config import KDLossConfig
from students.loss import task_loss
from students.errors import StoreContentError
from students.transfer import check_marked, transfer_loss

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


def _word_starts(word_ids: list[int | None]) -> list[bool]:
    """The first sub-token of each word, from a fast tokenizer's ``word_ids()``."""
    return [w is not None and (i == 0 or word_ids[i - 1] != w) for i, w in enumerate(word_ids)]


def test_the_ner_transfer_split_marks_word_starts_and_holds_the_teachers_token_logits(stores, ner_run, transfer_rows):
    from transformers import AutoModelForTokenClassification

    store = open_store(stores[0])
    split = store.read_split(TRANSFER_SPLIT)
    tok = store.load_tokenizer()
    encs = [tok(r["tokens"], is_split_into_words=True, truncation=True, max_length=store.meta.max_length)
            for r in transfer_rows]
    want_ids = [e["input_ids"] for e in encs]
    assert len(split) == TRANSFER_ROWS and split.example_ids.tolist() == list(range(TRANSFER_ROWS))
    assert [split.row(i).tolist() for i in range(len(split))] == want_ids  # same tokenizer and max length
    assert split.labels.shape == (int(split.offsets[-1]),)  # per token
    for i, enc in enumerate(encs):  # -2 exactly at each word's first sub-token, -100 elsewhere
        starts = _word_starts(enc.word_ids())
        want = [UNLABELLED if s else IGNORE for s in starts]
        assert split.labels[split.offsets[i]:split.offsets[i + 1]].tolist() == want, i
        assert sum(starts) == len(transfer_rows[i]["tokens"]) and len(starts) > sum(starts) + 1  # CLS/SEP unmarked
    assert set(np.unique(split.labels).tolist()) == {IGNORE, UNLABELLED}  # no gold label anywhere
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
# Positions of both rows: [CLS] word-1 word-1's 2nd sub-token word-2 [SEP] padding.
CLS, W1, SUB, W2, SEP, PAD = range(6)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row 0: a train row, word 1 tagged 0 (teacher (ln 3, 0): CE ln 2, KD KL), word 2 cut
    off; one padding token. Row 1: a transfer row as the store holds it: -2 at the two word
    starts (teacher (0, ln 3): KL, and (0, 0): 0), -100 at [CLS], the 2nd sub-token, [SEP]
    and padding, where the student and teacher logits are far apart (any part they took
    would change the value) and the padding's are huge."""
    student = torch.zeros(2, 6, 2)  # (B, T, C)
    student[1, [CLS, SUB, SEP]] = torch.tensor([4.0, -4.0])
    student[:, PAD] = torch.tensor([50.0, -50.0])
    teacher = torch.zeros(2, 6, 2)  # (B, T, C), 0 at padding
    teacher[0, W1] = torch.tensor([LN3, 0.0])
    teacher[1, W1] = torch.tensor([0.0, LN3])
    teacher[1, [CLS, SUB, SEP]] = torch.tensor([-3.0, 3.0])
    labels = torch.tensor([[IGNORE, 0, IGNORE, IGNORE, IGNORE, IGNORE],
                           [IGNORE, UNLABELLED, IGNORE, UNLABELLED, IGNORE, IGNORE]])  # (B, T)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])  # (B, T)
    return student, labels, teacher, mask


def _cfg(alpha: float) -> KDLossConfig:
    return KDLossConfig(temperature=1.0, student_temperature="teacher", alpha=alpha)


@pytest.fixture
def ce_targets(monkeypatch) -> list[torch.Tensor]:
    """Every target F.cross_entropy is called with (students/loss.py uses torch's)."""
    seen: list[torch.Tensor] = []
    real = torch.nn.functional.cross_entropy

    def spy(input: torch.Tensor, target: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # noqa: A002
        seen.append(target.detach().clone())
        return real(input, target, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    return seen


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_the_loss_of_a_ner_transfer_row_is_the_kd_term_over_its_word_starts(alpha, ce_targets):
    """A batch of the transfer row alone: the mean KL over its 2 word starts, (KL + 0) / 2, for
    every alpha; no CE term (ce None, cross_entropy never called); [CLS], [SEP], the later
    sub-token and padding get exactly zero gradient."""
    student, labels, teacher, mask = _batch()
    z = student[1:].clone().requires_grad_(True)
    out, n = transfer_loss(NER, z, labels[1:], teacher[1:], _cfg(alpha), mask[1:], use_labels=alpha < 1)
    assert n == 2 and out.ce is None and not ce_targets
    assert out.loss.item() == pytest.approx(KL / 2, abs=1e-6) and out.kd.item() == pytest.approx(KL / 2, abs=1e-6)
    out.loss.backward()
    # by hand: d/dz_s of KL(p_t || softmax(z_s)) = p_s - p_t, over the 2 terms of the mean
    np.testing.assert_allclose(z.grad[0, W1].numpy(), [(0.5 - 0.25) / 2, (0.5 - 0.75) / 2], atol=1e-6)
    np.testing.assert_allclose(z.grad[0, W2].numpy(), [0.0, 0.0], atol=1e-6)  # p_t = p_s
    for pos in (CLS, SUB, SEP, PAD):
        assert (z.grad[0, pos] == 0).all(), pos


def test_a_mixed_ner_batch_is_the_mean_over_terms_and_leaves_the_train_row_unchanged(ce_targets):
    """A train row (1 labelled token) and a transfer row (2 word starts): (mix + KL + 0) / 3;
    the train row's part (value and gradient) is exactly task_loss on it alone; ce is the
    train token's ln 2; cross_entropy only ever sees the gold tag, never -2."""
    student, labels, teacher, mask = _batch()
    for alpha in (0.0, 0.5, 1.0):
        ce_targets.clear()
        z = student.clone().requires_grad_(True)
        out, n = transfer_loss(NER, z, labels, teacher, _cfg(alpha), mask, use_labels=alpha < 1)
        mix = (1 - alpha) * math.log(2) + alpha * KL
        assert n == 3 and out.loss.item() == pytest.approx((mix + KL) / 3, abs=1e-6)
        assert all(t.tolist() == [0] for t in ce_targets) and len(ce_targets) == (alpha < 1)
        z1 = student[:1].clone().requires_grad_(True)
        alone, n1 = task_loss(NER, z1, labels[:1], teacher[:1], _cfg(alpha), mask[:1], use_labels=alpha < 1)
        assert n1 == 1 and alone.loss.item() == pytest.approx(mix, abs=1e-6)
        (3 * out.loss).backward()  # the train row weighs 1 of the 3 terms
        alone.loss.backward()
        np.testing.assert_allclose(z.grad[0].numpy(), z1.grad[0].numpy(), atol=1e-6)
        if alpha < 1:
            assert out.ce.item() == pytest.approx(math.log(2), abs=1e-6)
        assert out.kd.item() == pytest.approx(2 * KL / 3, abs=1e-6)  # (KL + KL + 0) / 3 terms


def test_ner_kd_terms_never_give_a_marker_to_the_cross_entropy(ce_targets):
    """Even straight through task_loss (no transfer routing), a -2 word start takes no part in
    either term of the labelled loss: kd_terms keeps labels >= 0 only."""
    student, labels, teacher, mask = _batch()
    out, n = task_loss(NER, student, labels, teacher, _cfg(0.5), mask)
    assert n == 1 and [t.tolist() for t in ce_targets] == [[0]]
    assert float(out.loss) == pytest.approx(0.5 * math.log(2) + 0.5 * KL, abs=1e-6)


def test_a_ner_transfer_split_without_word_start_marks_is_refused(stores):
    """A transfer split stored before the marker (every label -100) would give the KD term
    nothing to cover: students train --transfer refuses it in one line."""
    store = open_store(stores[0])
    split = store.read_split(TRANSFER_SPLIT)
    check_marked(store, split)  # the built one is fine
    with pytest.raises(StoreContentError, match="marks no word start") as err:
        check_marked(store, replace(split, labels=np.full_like(split.labels, IGNORE)))
    assert "\n" not in str(err.value) and "rebuild" in str(err.value)


def test_the_marker_is_legal_in_the_transfer_split_only(stores, tmp_path):
    """read_split takes -2 in the transfer split's labels; in a labelled split it is damage."""
    import shutil

    import zarr

    from logitstore.errors import StoreCorruptError

    copy = tmp_path / "copy.zarr"
    shutil.copytree(stores[0], copy)
    zarr.open_group(copy, mode="r+")["splits/train/labels"][1] = UNLABELLED
    store = open_store(copy)
    assert (store.read_split(TRANSFER_SPLIT).labels == UNLABELLED).any()
    with pytest.raises(StoreCorruptError, match="split 'train'"):
        store.read_split("train")


def test_students_train_on_ner_train_plus_transfer_via_the_cli(stores, tmp_path, _one_thread):
    """The batches hold every train and transfer row once with its stored per-token logits,
    transfer rows with -2 word starts and no gold label; `students train --transfer` runs end to end."""
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
            row = batch.labels[j, :length]  # rows past train's: transfer, word starts -2 and no gold label
            if r >= TRAIN_ROWS:
                assert ((row == IGNORE) | (row == UNLABELLED)).all() and (row == UNLABELLED).any(), r
            else:
                assert (row >= 0).any() and not (row == UNLABELLED).any(), r
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
