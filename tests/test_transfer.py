"""Transfer (unlabelled) data (issue 14): `logitstore build --transfer` and `students train
--transfer`. The split holds no labels and the teacher's logits on its texts; it changes no
score; a transfer row's loss is the KD term alone, worked by hand."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from logitstore.build import BuildConfig, build_store
from logitstore.store import open_store
from logitstore.tasks import IGNORE, get_task
from logitstore.transfer import TRANSFER_SPLIT
from students.config import KDLossConfig
from students.transfer import transfer_loss
from conftest import assert_one_line_error, make_texts

CLS = get_task("classification")


@pytest.fixture(scope="module")
def transfer_file(tmp_path_factory) -> Path:
    """50 texts with a label column that must be ignored (labels that are not even in the store)."""
    path = tmp_path_factory.mktemp("transfer") / "unlabelled.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows({"text": r["text"], "label": "not-a-label"} for r in make_texts(50, seed=99))
    return path


@pytest.fixture(scope="module")
def stores(_env, tmp_path_factory, tiny_teachers, tiny_data, transfer_file) -> tuple[Path, Path]:
    """The same teachers and data, built with and without --transfer (CLI)."""
    from logitstore.cli import main

    base = tmp_path_factory.mktemp("stores")
    common = ["build", "--teacher", str(tiny_teachers), "--data", str(tiny_data), "--dtype", "fp32",
              "--chunk-rows", "16"]
    assert main([*common, "--out", str(base / "with.zarr"), "--transfer", str(transfer_file)]) == 0
    build_store(BuildConfig(teachers=(tiny_teachers,), data=str(tiny_data), out=base / "without.zarr",
                            encoding="fp32", chunk_rows=16))
    return base / "with.zarr", base / "without.zarr"


def test_the_transfer_split_holds_no_labels_and_the_teachers_logits(stores, tiny_teachers, transfer_file):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    store = open_store(stores[0])
    split = store.read_split(TRANSFER_SPLIT)
    assert len(split) == 50 and (split.labels == IGNORE).all()
    texts = [r["text"] for r in csv.DictReader(open(transfer_file))]
    tok = AutoTokenizer.from_pretrained(tiny_teachers / "checkpoint-20")
    want_ids = tok(texts, truncation=True, max_length=store.meta.max_length)["input_ids"]
    assert [split.row(i).tolist() for i in range(len(split))] == want_ids  # same tokenizer and max length
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teachers / "checkpoint-20").eval()
    with torch.no_grad():
        want = np.concatenate([model(torch.tensor([ids])).logits.numpy() for ids in want_ids])  # (50, C)
    np.testing.assert_allclose(store.read_logits("checkpoint-20", TRANSFER_SPLIT), want, atol=1e-4)


def test_transfer_rows_count_in_no_score(stores):
    with_t, without = open_store(stores[0]), open_store(stores[1])
    for name in ("checkpoint-10", "checkpoint-20"):
        a, b = with_t.checkpoint(name), without.checkpoint(name)
        assert TRANSFER_SPLIT not in a.split_scores
        assert (a.val_loss, a.val_score, a.val_scores, a.split_scores) == (b.val_loss, b.val_score, b.val_scores,
                                                                           b.split_scores)
    assert with_t.select("tll").name == without.select("tll").name


# KD on a hand-worked pair. tau = 1: z_s = (0, 0) -> p_s = (1/2, 1/2). A train row, label 0,
# z_t = (ln 3, 0) -> p_t = (3/4, 1/4): CE = ln 2, KL = 3/4 ln(3/2) + 1/4 ln(1/2). A transfer
# row, z_t = (0, ln 3) -> p_t = (1/4, 3/4): the same KL by symmetry.
KL = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.130812...


def _loss(labels: list[int], teacher: list[list[float]], alpha: float, tau: float = 1.0) -> float:
    cfg = KDLossConfig(temperature=tau, student_temperature="teacher", alpha=alpha)
    z_s = torch.zeros(len(labels), 2)
    out, n = transfer_loss(CLS, z_s, torch.tensor(labels), torch.tensor(teacher), cfg,
                           torch.ones(len(labels), 3, dtype=torch.long), use_labels=alpha < 1)
    assert n == len(labels)
    return float(out.loss)


def test_the_loss_of_a_transfer_row_is_the_kd_term_alone():
    ln3 = math.log(3)
    for alpha in (0.0, 0.25, 1.0):  # no alpha weights it: alpha is 1 on transfer rows
        assert _loss([IGNORE], [[0.0, ln3]], alpha) == pytest.approx(KL, abs=1e-6)
    # tau_t = tau_s = 2: p_t = softmax((0, ln 3) / 2) = (1, sqrt 3) / (1 + sqrt 3); loss = 4 * KL(p_t || 1/2)
    q = 1 / (1 + math.sqrt(3))
    kl2 = q * math.log(2 * q) + (1 - q) * math.log(2 * (1 - q))
    assert _loss([IGNORE], [[0.0, ln3]], 0.5, tau=2.0) == pytest.approx(4 * kl2, abs=1e-6)
    # a train row and a transfer row: the mean of (1/2 ln 2 + 1/2 KL) and KL
    mixed = _loss([0, IGNORE], [[ln3, 0.0], [0.0, ln3]], 0.5)
    assert mixed == pytest.approx(((0.5 * math.log(2) + 0.5 * KL) + KL) / 2, abs=1e-6)


def test_students_train_on_train_plus_transfer(stores, tmp_path, _one_thread):
    """Every train and transfer row once per epoch, each with its own stored teacher logits;
    the run trains on both and is evaluated on validation and test only."""
    from students.train import TrainConfig, _prepare, train
    from students.transfer import with_transfer
    from rich.console import Console

    config = TrainConfig(store=str(stores[0]), out=str(tmp_path / "run"), transfer=True, alpha=0.5, layers=1,
                         epochs=1, batch_size=16, device="cpu", threads=1, progress=False, teacher="tll")
    run = with_transfer(_prepare(config, Console(quiet=True)), config)
    store = open_store(stores[0])
    ckpt = store.select("tll").name
    logits = np.concatenate([store.read_logits(ckpt, "train"), store.read_logits(ckpt, TRANSFER_SPLIT)])
    seen = []
    for batch in run.train_batches.epoch(0):
        rows = batch.rows.numpy()
        np.testing.assert_array_equal(batch.teacher_logits.numpy(), logits[rows])
        assert ((batch.labels.numpy() == IGNORE) == (rows >= 120)).all()  # rows past train's 120: transfer
        seen += rows.tolist()
    assert sorted(seen) == list(range(170))
    result = train(config, Console(quiet=True))
    resolved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert resolved["transfer"] is True and resolved["train_rows"] == 170 and resolved["steps_per_epoch"] == 11
    assert result.steps == 11 and result.best.split == "validation" and result.test.split == "test"


def test_a_store_without_transfer_refuses_students_train_transfer(stores, tmp_path, capsys):
    from students.cli import main

    code = main(["train", "--store", str(stores[1]), "--out", str(tmp_path / "r"), "--transfer", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert_one_line_error(code, err[0], "has no transfer split", "--transfer")


def test_a_causal_lm_build_refuses_transfer_in_one_line(_env, tmp_path, capsys, transfer_file):
    """The causal LM has no transfer split (its train split is unlabelled text already; NER
    and QA have one: tests/test_transfer_ner.py, tests/test_transfer_qa.py); the build says so
    first and writes nothing."""
    from conftest import make_lm_teacher, run_cli, write_lm_splits

    teacher = make_lm_teacher(tmp_path / "lm-teacher", seed=0)
    data = write_lm_splits(tmp_path / "lm", {"train": 6, "validation": 4})
    code, line = run_cli(capsys, "build", "--task", "causal-lm", "--teacher", str(teacher), "--data", str(data),
                         "--out", str(tmp_path / "lm.zarr"), "--transfer", str(transfer_file))
    assert_one_line_error(code, line, "--transfer works for sequence-classification, token-classification, "
                          "question-answering stores only", "causal-lm")
    assert not (tmp_path / "lm.zarr").exists()


def test_transfer_texts_without_the_text_column_are_refused(stores, tiny_teachers, tiny_data, tmp_path, capsys):
    from conftest import run_cli

    bad = tmp_path / "bad.csv"
    bad.write_text("review\nsome words\n")
    code, line = run_cli(capsys, "build", "--teacher", str(tiny_teachers), "--data", str(tiny_data), "--out",
                         str(tmp_path / "s.zarr"), "--transfer", str(bad))
    assert_one_line_error(code, line, "has no column 'text'", "review")


def test_logitstore_splits_exports_the_labelled_splits_only(_env, tmp_path, tiny_teachers, tiny_data, transfer_file):
    """A store of token ids built from one --data file plus --transfer: `logitstore splits`
    writes the splits made from that file; transfer rows are not rows of it."""
    from logitstore.splits import export_splits

    store = tmp_path / "ids.zarr"
    build_store(BuildConfig(teachers=(), tokenizer=tiny_teachers / "checkpoint-10", data=str(tiny_data / "train.csv"),
                            out=store, transfer=str(transfer_file)))
    assert open_store(store).split_meta(TRANSFER_SPLIT).rows == 50
    written = export_splits(store, tmp_path / "out")
    assert sorted(written) == ["test", "train", "validation"]
    assert sum(rows for _, rows in written.values()) == 120  # every row of the one file, once
