"""Each bad input gets a one-line error naming the problem, exit code 2, no traceback,
and no checkpoint entry marked complete. Runs the real CLI entry point in-process."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, make_teacher, run_cli, write_csv_splits
from logitstore import open_store
from logitstore.cli import main


def build_args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--teacher", str(teacher), "--data", str(data), "--out", str(out), *extra]


def assert_nothing_complete(out: Path) -> None:
    if (out / "zarr.json").exists():
        assert open_store(out).checkpoint_names() == []


def test_path_that_is_not_a_checkpoint(capsys, tiny_data, tmp_path):
    (tmp_path / "empty").mkdir()
    code, line = run_cli(capsys, *build_args(tmp_path / "empty", tiny_data, tmp_path / "s.zarr"))
    assert_one_line_error(code, line, "is not a checkpoint", "save_pretrained")
    code, line = run_cli(capsys, *build_args(tmp_path / "missing", tiny_data, tmp_path / "s.zarr"))
    assert_one_line_error(code, line, "does not exist")


def test_missing_text_or_label_column(capsys, tiny_teachers, tiny_data, tmp_path):
    out = tmp_path / "s.zarr"
    code, line = run_cli(capsys, *build_args(tiny_teachers, tiny_data, out, "--text-column", "sentence"))
    assert_one_line_error(code, line, "no column 'sentence'", "--text-column")
    code, line = run_cli(capsys, *build_args(tiny_teachers, tiny_data, out, "--label-column", "gold"))
    assert_one_line_error(code, line, "no column 'gold'", "--label-column")
    assert_nothing_complete(out)


def test_labels_outside_the_teachers_label_set(capsys, tiny_teachers, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    rows = list(csv.DictReader(open(data / "validation.csv")))
    rows[3]["label"] = "sarcastic"
    with open(data / "validation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    code, line = run_cli(capsys, *build_args(tiny_teachers, data, tmp_path / "s.zarr"))
    assert_one_line_error(code, line, "'sarcastic'", "not in the teacher's label set")
    assert_nothing_complete(tmp_path / "s.zarr")


def test_empty_split(capsys, tiny_teachers, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "test.csv").write_text("text,label,idx\n")
    code, line = run_cli(capsys, *build_args(tiny_teachers, data, tmp_path / "s.zarr"))
    assert_one_line_error(code, line, "split 'test' is empty")


def test_checkpoint_with_other_number_of_labels(capsys, tiny_data, tmp_path):
    make_teacher(tmp_path / "run" / "checkpoint-1", seed=3)
    make_teacher(tmp_path / "run" / "checkpoint-2", seed=4, num_labels=2, label_names=["negative", "positive"])
    out = tmp_path / "s.zarr"
    code, line = run_cli(capsys, *build_args(tmp_path / "run", tiny_data, out))
    assert_one_line_error(code, line, "checkpoint-2 has 2 labels but the store has 3")
    assert open_store(out).checkpoint_names(complete_only=False) == ["checkpoint-1"]


def test_nan_teacher_logits(capsys, tiny_data, tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = make_teacher(tmp_path / "nan", seed=7)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.bias[1] = float("nan")
    model.save_pretrained(folder)
    out = tmp_path / "s.zarr"
    code, line = run_cli(capsys, *build_args(folder, tiny_data, out))
    assert_one_line_error(code, line, "NaN or inf logits", "example id")
    store = open_store(out)
    assert store.checkpoint_names() == [] and not store.checkpoint("nan").complete


def test_store_from_other_data_or_tokenizer_is_refused(capsys, tiny_teachers, tiny_data, tmp_path):
    out = tmp_path / "s.zarr"
    assert run_cli(capsys, *build_args(tiny_teachers / "checkpoint-10", tiny_data, out))[0] == 0
    other = write_csv_splits(tmp_path / "other", {"train": 120, "validation": 40, "test": 30}, seed=100)
    code, line = run_cli(capsys, *build_args(tiny_teachers / "checkpoint-20", other, out))
    assert_one_line_error(code, line, "built from other data", "content of split 'train'")
    # same data, a teacher whose tokenizer has another vocabulary
    t = make_teacher(tmp_path / "other-tok", seed=8)
    from transformers import AutoTokenizer, BertTokenizer

    vocab = list(AutoTokenizer.from_pretrained(t).get_vocab())  # same tokens, other ids
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab[:5] + sorted(vocab[5:]))}).save_pretrained(t)
    code, line = run_cli(capsys, *build_args(t, tiny_data, out))
    assert_one_line_error(code, line, "tokenizer")
    assert open_store(out).checkpoint_names(complete_only=False) == ["checkpoint-10"]


def test_corrupt_or_truncated_store(capsys, tiny_teachers, tiny_data, tmp_path):
    out = tmp_path / "s.zarr"
    assert run_cli(capsys, *build_args(tiny_teachers / "checkpoint-10", tiny_data, out))[0] == 0
    # a chunk file cut short: the checksum catches it on read
    chunk = out / "checkpoints/checkpoint-10/train/logits/c/0/0"
    chunk.write_bytes(chunk.read_bytes()[:-7])
    from logitstore.errors import StoreCorruptError

    with pytest.raises(StoreCorruptError, match="corrupt or truncated"):
        open_store(out).read_logits("checkpoint-10", "train")
    # a chunk file gone: reads as NaN fill, caught as missing
    chunk.unlink()
    with pytest.raises(StoreCorruptError, match="missing chunks"):
        open_store(out).read_logits("checkpoint-10", "train")
    # root metadata garbled: info and build both refuse it in one line
    (out / "zarr.json").write_text("{not json")
    code, line = run_cli(capsys, "info", str(out))
    assert_one_line_error(code, line, "corrupt")
    code, line = run_cli(capsys, *build_args(tiny_teachers / "checkpoint-10", tiny_data, out))
    assert_one_line_error(code, line, "corrupt")
    # a folder that is not a store at all
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "x.txt").write_text("hi")
    code, line = run_cli(capsys, *build_args(tiny_teachers / "checkpoint-10", tiny_data, tmp_path / "notastore"))
    assert_one_line_error(code, line, "is not a logit store")


def test_unknown_format_version(capsys, tiny_teachers, tiny_data, tmp_path):
    out = tmp_path / "s.zarr"
    assert run_cli(capsys, *build_args(tiny_teachers / "checkpoint-10", tiny_data, out))[0] == 0
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["logitstore"]["format_version"] = 99
    (out / "zarr.json").write_text(json.dumps(meta))
    code, line = run_cli(capsys, "info", str(out))
    assert_one_line_error(code, line, "format version 99", "upgrade logitstore")


def test_debug_shows_the_traceback(tiny_data, tmp_path):
    from logitstore.errors import CheckpointError

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError):
        main(["--debug", *build_args(tmp_path / "empty", tiny_data, tmp_path / "s.zarr")])
