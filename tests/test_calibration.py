"""Calibration (issue 14): ECE (15 equal-width bins) and the Brier score against values worked
by hand, for every task's ``scores``; the stored teacher entries carry them; old stores read."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from logitstore.calibration import CALIBRATION_KEYS, ECEBins, brier, calibration, ece, pooled
from logitstore.store import SplitData
from logitstore.tasks import IGNORE, TASKS, get_task

# Four predictions over two classes (rows sum to 1) and their gold labels.
P = np.array([[0.9, 0.1], [0.75, 0.25], [0.3, 0.7], [0.72, 0.28]])
Y = np.array([0, 1, 1, 1])
# By hand, 15 bins of width 1/15: confidences 0.9 (bin 13, right), 0.75 (bin 11, wrong),
# 0.7 and 0.72 (both bin 10: one right, one wrong, accuracy 0.5, mean confidence 0.71).
# ECE = (1 * |1 - 0.9| + 1 * |0 - 0.75| + 2 * |0.5 - 0.71|) / 4 = (0.1 + 0.75 + 0.42) / 4
ECE_15 = 0.3175
# Brier per row: 0.01 + 0.01; 0.5625 + 0.5625; 0.09 + 0.09; 0.5184 + 0.5184 -> mean of 2.3618
BRIER = 0.59045


def test_ece_and_brier_by_hand():
    conf, correct = P.max(axis=1), P.argmax(axis=1) == Y
    assert ece(conf, correct) == pytest.approx(ECE_15, abs=1e-12)
    # two bins: every confidence is in (0.5, 1]; accuracy 0.5, mean confidence 0.7675
    assert ece(conf, correct, bins=2) == pytest.approx(0.2675, abs=1e-12)
    assert brier(P, Y) == pytest.approx(BRIER, abs=1e-12)
    assert calibration(np.log(P), Y) == pytest.approx({"ece": ECE_15, "brier": BRIER}, abs=1e-12)
    assert ece(np.array([1.0, 0.0]), np.array([True, False])) == 0.0  # the edges fall in the end bins


def test_ece_accumulated_over_parts_equals_ece_of_all():
    """ECEBins (a causal-LM student's chunks): the four predictions added one, then three at
    a time give the hand-computed ECE; random parts equal one ``ece`` of their concatenation."""
    conf, correct = P.max(axis=1), P.argmax(axis=1) == Y
    acc = ECEBins().add(conf[:1], correct[:1]).add(conf[1:], correct[1:])
    assert acc.n == 4 and acc.value() == pytest.approx(ECE_15, abs=1e-12)
    assert ECEBins(bins=2).add(conf[:3], correct[:3]).add(conf[3:], correct[3:]).value() == pytest.approx(0.2675)
    assert ECEBins().value() == 0.0 and ECEBins().add(conf[:0], correct[:0]).value() == 0.0
    rng = np.random.default_rng(0)
    c, ok = rng.random(1000), rng.random(1000) < 0.6
    parts = ECEBins()
    for a in range(0, 1000, 37):
        parts.add(c[a:a + 37], ok[a:a + 37])
    assert parts.value() == pytest.approx(ece(c, ok), abs=1e-12) and ece(c, ok) > 0.05


def test_classification_scores_carry_calibration_per_example():
    split = SplitData("validation", np.arange(4, dtype=np.int32), np.arange(5), Y, np.arange(4))
    got = get_task("classification").scores(np.log(P) + 3.0, split, ["a", "b"])  # a shift changes no softmax
    assert got["ece"] == pytest.approx(ECE_15, abs=1e-12)
    assert got["brier"] == pytest.approx(BRIER, abs=1e-12)
    assert got["accuracy"] == 0.5


def test_ner_scores_count_labelled_tokens_only():
    """The four predictions at labelled tokens of two rows; special tokens and later
    sub-tokens (label -100) carry confident garbage that must not count."""
    z = np.full((7, 3), -50.0)
    z[[1, 2, 4, 5], :2] = np.log(P)  # labelled tokens
    z[[0, 3, 6], 2] = 50.0  # ignored tokens: certain of class 2
    labels = np.full(7, IGNORE)
    labels[[1, 2, 4, 5]] = Y
    split = SplitData("validation", np.arange(7, dtype=np.int32), np.array([0, 3, 7]), labels, np.arange(2))
    got = get_task("ner").scores(z, split, ["O", "B-X", "I-X"])
    assert got["ece"] == pytest.approx(ECE_15, abs=1e-9)
    assert got["brier"] == pytest.approx(BRIER, abs=1e-9)


def test_qa_pools_start_and_end_distributions():
    """One window of 3 tokens. Start [0.1, 0.7, 0.2], gold 1: confidence 0.7, right; end
    [0.08, 0.3, 0.62], gold 1: confidence 0.62, wrong. ECE = (0.3 + 0.62) / 2 = 0.46; Brier =
    ((0.01 + 0.09 + 0.04) + (0.0064 + 0.49 + 0.3844)) / 2 = 0.5104."""
    start, end = np.array([0.1, 0.7, 0.2]), np.array([0.08, 0.3, 0.62])
    assert pooled([(np.log(start), 1), (np.log(end), 1)]) == pytest.approx({"ece": 0.46, "brier": 0.5104}, abs=1e-12)
    split = SplitData("validation", np.array([101, 7, 8], dtype=np.int32), np.array([0, 3]), np.array([[1, 1]]),
                      np.array([0]), np.zeros(3, np.int8), np.array([[-1, -1], [0, 3], [4, 7]], np.int32),
                      np.array([0]), ["abc def"], [["abc"]])
    got = get_task("qa").scores(np.log(np.stack([start, end], axis=1)), split, ["start", "end"])
    assert got["ece"] == pytest.approx(0.46, abs=1e-12)
    assert got["brier"] == pytest.approx(0.5104, abs=1e-12)


def test_causal_lm_dense_scores_per_next_token():
    labels = np.array([0, 1, 1, IGNORE, 1])  # the row's last token has no next token
    z = np.vstack([np.log(P[:3]), [[9.0, -9.0]], np.log(P[3:])])
    split = SplitData("validation", np.arange(5, dtype=np.int32), np.array([0, 5]), labels, np.arange(1))
    got = get_task("causal-lm").scores(z, split, [])
    assert got["ece"] == pytest.approx(ECE_15, abs=1e-12)
    assert got["brier"] == pytest.approx(BRIER, abs=1e-12)


def test_no_task_ranks_by_a_calibration_key():
    """ece and brier are lower-is-better: never a task metric (what ths, --metric and the
    students' best-by-validation rank by, higher is better)."""
    for task in TASKS.values():
        assert not set(task.metrics) & set(CALIBRATION_KEYS), task.name


def test_a_built_store_records_calibration_of_its_stored_logits(_env, tmp_path, tiny_teachers, tiny_data):
    from logitstore.build import BuildConfig, build_store
    from logitstore.store import open_store

    out = tmp_path / "s.zarr"
    build_store(BuildConfig(teachers=(tiny_teachers / "checkpoint-10",), data=str(tiny_data), out=out,
                            encoding="fp32", chunk_rows=16))
    store = open_store(out)
    c = store.checkpoints()[0]
    for split in store.split_names():
        data = store.read_split(split)
        want = calibration(store.read_logits(c.name, split), data.labels)
        assert c.split_scores[split]["ece"] == pytest.approx(want["ece"], abs=1e-12)
        assert c.split_scores[split]["brier"] == pytest.approx(want["brier"], abs=1e-12)
    assert c.val_scores["ece"] == c.split_scores["validation"]["ece"]
    assert c.val_score == c.val_scores["accuracy"]  # the ranking score stays the task metric


def test_info_shows_ths_vs_tll_and_reads_an_old_store_without_calibration(tmp_path, capsys):
    from logitstore.cli import main

    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "fixtures" / "store-v2" / "classification", old)
    assert main(["info", str(old)]) == 0
    out = capsys.readouterr().out
    assert "ths vs tll on validation" in out
    line = next(x for x in out.splitlines() if x.startswith("│") and x.lstrip("│ ").startswith("ths "))
    cells = [c.strip() for c in line.strip().split("│")[1:-1]]
    assert cells[:4] == ["ths", "checkpoint-1", "0.5000", "accuracy 0.9000"] and cells[4:] == ["", ""]

