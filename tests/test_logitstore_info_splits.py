"""Issue 15, teacher side, through the `logitstore` command line: `logitstore splits` writes the
splits a build made from one file with the file's own columns; `logitstore info` orders
checkpoints by training step, shows the metric on every split and the rows --max-length
cut; the build warns when it cuts many."""
from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import (_fast_tokenizer, assert_one_line_error, make_ner_rows, make_qa_records, make_teacher,
                      make_texts, run_cli, write_jsonl)
from logitstore import open_store
from logitstore.cli import main
from logitstore.tasks import get_task

FIXTURE = Path(__file__).parent / "fixtures" / "store-v2" / "classification"
MAX_LENGTH = 12


def _write_csv(path: Path, n: int) -> Path:
    """One data file: text (2-24 words), label, idx, and a note with commas, quotes and NA."""
    rows = make_texts(n, seed=5)
    for i, r in enumerate(rows):
        r["note"] = ["NA", 'said "fine", then left', "", "plain"][i % 4]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label", "idx", "note"])
        w.writeheader()
        w.writerows(rows)
    return path


def _cli(*args: str) -> tuple[int, str, str]:
    """Run `logitstore ARGS`: exit code, stdout, stderr (rich writes to the sys streams of the moment)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def built(tmp_path_factory, _env, _one_thread):
    """A store built by the CLI from one CSV file divided 0.6/0.2/0.2, from two checkpoints whose
    names sort the wrong way (checkpoint-116 before checkpoint-29), at --max-length 12."""
    root = tmp_path_factory.mktemp("issue15")
    make_teacher(root / "run" / "checkpoint-116", seed=1)
    make_teacher(root / "run" / "checkpoint-29", seed=2)
    data = _write_csv(root / "all.csv", 90)
    code, out, err = _cli("build", "--teacher", str(root / "run"), "--data", str(data), "--out", str(root / "s.zarr"),
                          "--max-length", str(MAX_LENGTH), "--split-fractions", "0.6,0.2,0.2", "--split-seed", "4")
    assert code == 0, err
    return root / "s.zarr", data, out, err


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- logitstore splits

def test_splits_writes_each_split_with_the_files_own_columns(built, tmp_path):
    store_path, data, _, _ = built
    code, out, _ = _cli("splits", str(store_path), "--out", str(tmp_path / "out"))
    assert code == 0 and "train.csv (54 rows)" in out
    original = _rows(data)
    store = open_store(store_path)
    seen = []
    for split in ("train", "validation", "test"):
        got = _rows(tmp_path / "out" / f"{split}.csv")
        ids = store.read_split(split).example_ids.tolist()
        assert got == [original[i] for i in ids]  # the same rows, in the store's order, every column as written
        seen += ids
    assert sorted(seen) == list(range(len(original)))  # the three files are the whole file, once
    assert list(_rows(tmp_path / "out" / "train.csv")[0]) == ["text", "label", "idx", "note"]


def test_splits_as_jsonl(built, tmp_path):
    store_path, data, _, _ = built
    code, _, _ = _cli("splits", str(store_path), "--out", str(tmp_path), "--format", "jsonl")
    assert code == 0
    lines = [json.loads(x) for x in (tmp_path / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    ids = open_store(store_path).read_split("test").example_ids.tolist()
    original = _rows(data)
    assert [r["text"] for r in lines] == [original[i]["text"] for i in ids]
    assert [r["idx"] for r in lines] == [int(original[i]["idx"]) for i in ids]
    assert {r["note"] for r in lines} <= {"NA", 'said "fine", then left', None, "plain"}


def test_splits_refuses_a_changed_or_missing_source_file(tmp_path, capsys):
    tok = tmp_path / "tok"
    make_teacher(tok, seed=3)  # for its tokenizer: a store of token ids only builds in seconds
    data = _write_csv(tmp_path / "copy.csv", 40)
    out = tmp_path / "ids.zarr"
    assert main(["build", "--tokenizer", str(tok), "--data", str(data), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["splits", str(out), "--out", str(tmp_path / "a")]) == 0
    original = data.read_bytes()
    data.write_bytes(original + b"one more row,positive,99,x\n")
    assert_one_line_error(*run_cli(capsys, "splits", str(out), "--out", str(tmp_path / "b")), "changed since", "sha256")
    moved = tmp_path / "moved.csv"
    moved.write_bytes(original)
    data.unlink()
    assert_one_line_error(*run_cli(capsys, "splits", str(out), "--out", str(tmp_path / "b")), "is gone", "--data")
    assert main(["splits", str(out), "--out", str(tmp_path / "b"), "--data", str(moved)]) == 0
    assert (tmp_path / "b" / "train.csv").read_bytes() == (tmp_path / "a" / "train.csv").read_bytes()


def test_splits_of_a_store_built_from_split_files_says_so(tiny_data, tmp_path, capsys):
    tok = tmp_path / "tok"
    make_teacher(tok, seed=3)
    out = tmp_path / "ids.zarr"
    assert main(["build", "--tokenizer", str(tok), "--data", str(tiny_data), "--out", str(out)]) == 0
    assert_one_line_error(*run_cli(capsys, "splits", str(out), "--out", str(tmp_path / "x")), "records no source file")
    assert_one_line_error(*run_cli(capsys, "splits", str(FIXTURE), "--out", str(tmp_path / "x")),
                          "records no source file")


def test_splits_of_qa_windows_are_one_row_per_question(tmp_path, capsys):
    tok = tmp_path / "tok"
    _fast_tokenizer(tok)
    records = make_qa_records(30, seed=2)  # every other context is long: several windows at --max-length 48
    data = write_jsonl(tmp_path / "squad.jsonl", records)
    out = tmp_path / "qa.zarr"
    assert main(["build", "--task", "qa", "--tokenizer", str(tok), "--data", str(data), "--out", str(out),
                 "--max-length", "48", "--stride", "8"]) == 0
    assert open_store(out).split_meta("train").rows > 18  # windows, more than the train questions
    assert main(["splits", str(out), "--out", str(tmp_path / "x")]) == 0
    got = [json.loads(x) for s in ("train", "validation", "test")
           for x in (tmp_path / "x" / f"{s}.jsonl").read_text().splitlines()]
    assert sorted(got, key=lambda r: r["id"]) == sorted(records, key=lambda r: r["id"])
    assert_one_line_error(*run_cli(capsys, "splits", str(out), "--out", str(tmp_path / "y"), "--format", "csv"),
                          "--format jsonl")


# ---------------------------------------------------------------------------- logitstore info

def test_info_lists_checkpoints_by_training_step(built):
    code, out, _ = _cli("info", str(built[0]))
    assert code == 0
    assert out.index("checkpoint-29 ") < out.index("checkpoint-116 ")


def test_build_records_the_metric_on_every_split_and_info_shows_it(built):
    store_path = built[0]
    store = open_store(store_path)
    task = get_task(store.meta.task)
    for name in ("checkpoint-29", "checkpoint-116"):
        c = store.checkpoint(name)
        assert sorted(c.split_scores) == ["test", "train", "validation"]
        for split, got in c.split_scores.items():
            want = task.scores(store.read_logits(name, split), store.read_split(split), store.meta.label_names)
            assert got == pytest.approx(want)
        assert c.val_score == c.split_scores["validation"]["accuracy"]
        assert c.val_loss == c.split_scores["validation"]["loss"]
    _, out, _ = _cli("info", str(store_path))
    assert "test accuracy" in out and "train loss" in out
    assert f"{store.checkpoint('checkpoint-116').split_scores['test']['accuracy']:.4f}" in out


def test_build_counts_and_warns_about_rows_cut_by_max_length(built):
    store_path, data, _, err = built
    store = open_store(store_path)
    tok = store.load_tokenizer()
    texts = [r["text"] for r in _rows(data)]
    for split in ("train", "validation", "test"):
        ids = store.read_split(split).example_ids
        cut = sum(len(tok(texts[i])["input_ids"]) > MAX_LENGTH for i in ids)
        assert 0 < cut < len(ids)
        assert store.split_meta(split).truncated_rows == cut
        assert f"cuts {cut:,} of the {len(ids):,} rows of split '{split}'" in " ".join(err.split())
    assert "over 5%" in " ".join(err.split())
    _, out, _ = _cli("info", str(store_path))
    assert f"cut at {MAX_LENGTH}" in out
    n = store.split_meta("train").truncated_rows
    assert f"{n} ({n / store.split_meta('train').rows:.1%})" in out


def test_no_warning_when_nothing_is_cut(tmp_path):
    tok = tmp_path / "tok"
    make_teacher(tok, seed=3)
    code, _, err = _cli("build", "--tokenizer", str(tok), "--data", str(_write_csv(tmp_path / "d.csv", 30)),
                        "--out", str(tmp_path / "s.zarr"))
    assert code == 0 and "warning:" not in err
    store = open_store(tmp_path / "s.zarr")
    assert [store.split_meta(s).truncated_rows for s in store.split_names()] == [0, 0, 0]


def test_info_on_a_store_written_before_these_fields(capsys):
    assert main(["info", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint-1" in out and "on every split" not in out  # no split scores recorded: none shown
    assert "export cache:" in out


def test_token_tasks_count_their_cut_rows(tmp_path):
    import datasets

    from logitstore.data import DataConfig

    tok = _fast_tokenizer(tmp_path / "tok")
    ner = get_task("ner")
    rows = make_ner_rows(40, seed=1, max_words=14)
    ds = datasets.Dataset.from_list(rows).add_column("__example_id", list(range(len(rows))))
    names = ner.resolve_labels({"train": ds}, "ner_tags", None)
    cfg = DataConfig("x", ner, ("tokens",), "ner_tags", max_length=10)
    split, _ = ner.tokenize("train", ds, tok, cfg, names[1], ["input_ids", "attention_mask"])
    full = [len(tok(r["tokens"], is_split_into_words=True)["input_ids"]) for r in rows]
    assert split.truncated_rows == sum(n > 10 for n in full) > 0
    qa = get_task("qa")
    records = make_qa_records(10, seed=3)
    ds = datasets.Dataset.from_list(records).add_column("__example_id", list(range(len(records))))
    cfg = DataConfig("x", qa, ("question", "context"), "answers", max_length=48, stride=8)
    split, _ = qa.tokenize("train", ds, tok, cfg, {}, ["input_ids", "attention_mask", "token_type_ids"])
    assert len(split) > len(records) and split.truncated_rows == 0  # windows, not cuts
    assert np.all(split.lengths <= 48)
