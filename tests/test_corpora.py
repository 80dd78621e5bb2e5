"""The study's labelled corpora (demo/corpora.py): each reader on small files in the pinned
layout, one-line errors when the layout changes, and (integration) the real pinned files."""
from __future__ import annotations

import csv
from collections import Counter

import pytest

from demo.corpora import CORPORA, TREC_TRAIN_LINES, read_orange_tab, read_sms_spam, read_trec
from demo.splits import text_splits
from logitstore.errors import DataError


def test_trec_reads_only_the_last_lines_and_coarse_labels(tmp_path):
    head = [f"HUM:ind Who repeated question {i} ?" for i in range(10)]
    tail = [f"{c}:x What is question {i} ?" for i, c in zip(range(TREC_TRAIN_LINES), ["NUM", "LOC", "ABBR"] * 2000)]
    path = tmp_path / "question_labels.txt"
    path.write_text("\n".join(head + tail) + "\n", encoding="latin-1")
    pairs = read_trec([path])
    assert len(pairs) == TREC_TRAIN_LINES
    assert pairs[0] == ("What is question 0 ?", "NUM") and pairs[2] == ("What is question 2 ?", "ABBR")
    assert CORPORA["trec"].labels(pairs) == ["ABBR", "LOC", "NUM"]
    path.write_text("no label here\n" * TREC_TRAIN_LINES, encoding="latin-1")
    with pytest.raises(DataError, match="COARSE:fine question"):
        read_trec([path])


def test_sms_spam_maps_the_flag_to_names(tmp_path):
    path = tmp_path / "sms-spam.csv"
    path.write_text(',spam,text\n0,0,"Ok lar, see you"\n1,1,Free entry now\n', encoding="utf-8")
    assert read_sms_spam([path]) == [("Ok lar, see you", "ham"), ("Free entry now", "spam")]


def test_orange_tab_pools_files_skips_blank_rows_and_checks_columns(tmp_path):
    train, test = tmp_path / "r8-train.tab", tmp_path / "r8-test.tab"
    train.write_text("Category\tText\nd\tstring\nclass\t\nearn\tprofit up\n\nacq\tbuys a firm\n", encoding="utf-8")
    test.write_text("Category\tText\nd\tstring\nclass\t\ncrude\toil falls\n", encoding="utf-8")
    pairs = read_orange_tab([train, test])
    assert pairs == [("profit up", "earn"), ("buys a firm", "acq"), ("oil falls", "crude")]
    assert CORPORA["r8"].labels(pairs) == ["acq", "crude", "earn"]
    test.write_text("Topic\tBody\nd\tstring\nclass\t\n", encoding="utf-8")
    with pytest.raises(DataError, match="Category, Text"):
        read_orange_tab([test])
    test.write_text("Category\tText\nd\tstring\nclass\t\nearn\ta\tb\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 4 has 3 fields"):
        read_orange_tab([test])


def test_text_splits_dedupes_and_is_seeded(tmp_path):
    pairs = [(f"text  {i}", "a" if i % 2 else "b") for i in range(50)] + [("text 3", "b"), ("text 4", "b")]
    a = text_splits(pairs, tmp_path / "a", seed=3)
    b = text_splits(list(pairs), tmp_path / "b", seed=3)
    for split in ("train", "validation", "test"):
        assert (a / f"{split}.csv").read_text() == (b / f"{split}.csv").read_text()
    rows = [r for s in ("train", "validation", "test") for r in csv.DictReader(open(a / f"{s}.csv"))]
    texts = [r["text"] for r in rows]
    # whitespace collapsed; "text 3" seen with two labels is dropped; "text 4" kept once
    assert len(texts) == len(set(texts)) == 49 and "text 3" not in texts and "text 4" in texts


@pytest.mark.integration
@pytest.mark.parametrize("name, rows, labels", [
    ("trec", 5381, {"ABBR": 86, "DESC": 1153}),
    ("sms-spam", 4512, {"spam": 557}),
    ("r8", 7591, {"earn": 3915, "grain": 51}),
])
def test_real_corpora_counts(tmp_path, name, rows, labels):
    """The pinned files read as documented: distinct texts after deduplication, some label counts."""
    from conftest import real_asset

    corpus = CORPORA[name]
    pairs = corpus.read([real_asset(a) for a in corpus.assets])
    out = text_splits(pairs, tmp_path / name)
    got = [r for s in ("train", "validation", "test") for r in csv.DictReader(open(out / f"{s}.csv"))]
    counts = Counter(r["label"] for r in got)
    assert len(got) == rows
    assert {k: counts[k] for k in labels} == labels


@pytest.mark.parametrize("args, message", [
    (["--corpus", "imdb"], "--corpus must be rotten-tomatoes, trec, sms-spam or r8; got 'imdb'"),
    (["--task", "ner", "--corpus", "trec"], "--corpus is for --task classification"),
])
def test_demo_refuses_a_bad_corpus_before_doing_anything(tmp_path, args, message):
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(["bash", str(root / "scripts" / "demo.sh"), *args, str(tmp_path / "out")],
                         capture_output=True, text=True, env={**os.environ, "DEMO_SKIP_SETUP": "1"})
    assert run.returncode == 2 and message in run.stderr
    assert not (tmp_path / "out").exists()


def test_assets_split_must_be_three_fractions(capsys):
    from demo.assets import main

    with pytest.raises(SystemExit) as exc:
        main(["--split", "0.5,0.5"])
    assert exc.value.code == 2
    assert "three positive fractions summing to 1" in capsys.readouterr().err
