"""NER helpers on hand-made cases and on the real WNUT-16 file and MiniLM tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from logitstore.errors import DataError
from logitstore.tasks.ner import (align_labels, check_bio, entities, entity_scores, label_names, read_conll,
                            wnut_splits)


CONLL = (
    "-DOCSTART- -X- -X- O\n"
    "\n"
    "EU NNP B-NP B-ORG\n"
    "rejects VBZ B-VP O\n"
    "German\tJJ\tB-NP\tB-MISC\n"
    "\t\n"
    "\n"
    "Peter NNP B-NP B-PER\n"
    "Blackburn NNP B-NP I-PER\n"
)


def test_read_conll_skips_docstart_takes_first_and_last_column(tmp_path):
    f = tmp_path / "a.conll"
    f.write_text(CONLL)  # no blank line at the end: the last sentence still counts
    assert read_conll(f) == [
        (["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"]),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    ]


def test_read_conll_bad_line_and_empty_file(tmp_path):
    f = tmp_path / "bad.conll"
    f.write_text("EU B-ORG\nrejects O\n\nlonely\nword O\n")
    with pytest.raises(DataError, match=r"bad\.conll:4: line 'lonely'"):
        read_conll(f)
    empty = tmp_path / "empty.conll"
    empty.write_text("")
    with pytest.raises(DataError, match="holds no sentences"):
        read_conll(empty)
    only_docstart = tmp_path / "doc.conll"
    only_docstart.write_text("-DOCSTART- -X- O\n\n\n")
    with pytest.raises(DataError, match="holds no sentences"):
        read_conll(only_docstart)
    with pytest.raises(DataError, match="cannot read CoNLL file"):
        read_conll(tmp_path / "missing.conll")


def test_check_bio_accepts_good_and_names_bad_tags():
    check_bio(["O", "B-person", "I-person", "I-person", "B-person", "B-geo-loc", "I-geo-loc", "O"], "ok")
    check_bio([], "empty")
    with pytest.raises(DataError) as e:
        check_bio(["B-person", "O", "I-person"], "s7")
    assert str(e.value) == ("s7: tag 'I-person' at word 3 follows 'O' (inconsistent BIO: an entity must start "
                            "with B-person); fix the tags or convert IOB1 to BIO")
    with pytest.raises(DataError, match=r"s8: tag 'I-person' at word 2 follows 'B-company'"):
        check_bio(["B-company", "I-person"], "s8")
    with pytest.raises(DataError, match=r"s9: tag 'I-loc' at word 1 starts the sentence"):
        check_bio(["I-loc", "I-loc"], "s9")
    with pytest.raises(DataError, match=r"s10: tag 'X-foo' at word 2 is not BIO"):
        check_bio(["O", "X-foo"], "s10")
    for bad in ("B-", "I", "o", "B_person"):
        with pytest.raises(DataError, match="is not BIO"):
            check_bio([bad], "s11")


def test_label_names_order_and_completeness():
    seqs = [["O", "B-person", "I-person"], ["B-geo-loc", "O"], ("B-company",)]
    assert label_names(seqs) == ["O", "B-company", "I-company", "B-geo-loc", "I-geo-loc", "B-person", "I-person"]
    assert label_names(iter([["I-x"]])) == ["O", "B-x", "I-x"]  # a generator works, I- alone adds B- too
    assert label_names([]) == ["O"]
    with pytest.raises(DataError, match="'X-foo' at word 1 is not BIO"):
        label_names([["O"], ["X-foo"]])


def test_align_labels_by_hand():
    assert align_labels([None, 0, 1, 1, 1, 2, None], [4, 0, 2]) == [-100, 4, 0, -100, -100, 2, -100]
    assert align_labels([None, 0, 0, None], [7], ignore=-1) == [-1, 7, -1, -1]
    assert align_labels([None, 0, 1, None], [1, 2, 3, 4]) == [-100, 1, 2, -100]  # words 2, 3 cut off
    with pytest.raises(DataError, match="token of word 2 but only 2 word labels"):
        align_labels([None, 0, 1, 2, None], [1, 2])


def test_align_labels_with_real_fast_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    assert tok.is_fast
    words = ["Obama", "visited", "Supercalifragilistic", "Kalamazoo", "today", "."]
    labels = [1, 0, 3, 5, 0, 0]
    full = tok(words, is_split_into_words=True, truncation=True, max_length=64)
    assert tok.convert_ids_to_tokens(full["input_ids"]) == [
        "[CLS]", "obama", "visited", "super", "##cal", "##if", "##rag", "##ilis", "##tic",
        "kala", "##ma", "##zoo", "today", ".", "[SEP]"]
    assert full.word_ids() == [None, 0, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 4, 5, None]
    assert align_labels(full.word_ids(), labels) == [
        -100, 1, 0, 3, -100, -100, -100, -100, -100, 5, -100, -100, 0, 0, -100]

    cut = tok(words, is_split_into_words=True, truncation=True, max_length=8)
    assert cut.word_ids() == [None, 0, 1, 2, 2, 2, 2, None]  # the long word cut mid-way, words 3-5 gone
    assert align_labels(cut.word_ids(), labels) == [-100, 1, 0, 3, -100, -100, -100, -100]


def test_entities_lenient_starts_and_type_changes():
    assert entities(["B-per", "I-per", "O", "B-loc", "O", "B-org", "I-org"]) == [
        ("per", 0, 2), ("loc", 3, 4), ("org", 5, 7)]
    assert entities(["O", "I-x", "I-x", "O"]) == [("x", 1, 3)]  # lenient: I- after O starts one
    assert entities(["B-x", "B-x", "I-x"]) == [("x", 0, 1), ("x", 1, 3)]
    assert entities(["B-x", "I-y", "I-y", "I-x"]) == [("x", 0, 1), ("y", 1, 3), ("x", 3, 4)]
    assert entities(["O", "O"]) == [] and entities([]) == []
    with pytest.raises(DataError, match="not BIO"):
        entities(["O", "E-x"])


def test_entity_scores_hand_computed():
    gold = [["B-per", "I-per", "O", "B-loc", "O", "B-org", "I-org"],
            ["O", "B-misc", "I-misc", "I-misc"]]
    pred = [["I-per", "I-per", "O", "B-org", "O", "B-org", "I-org"],  # lenient per: right; loc typed org: wrong
            ["B-per", "B-misc", "I-misc", "O"]]  # spurious per; misc span too short
    # gold 4 entities, predicted 5, correct 2 (per 0-2 and org 5-7)
    s = entity_scores(gold, pred)
    assert s["precision"] == pytest.approx(2 / 5)
    assert s["recall"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert entity_scores(gold, gold) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert entity_scores([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert entity_scores([["B-x"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert entity_scores([["O", "B-x"]], [["B-x", "B-x"]]) == pytest.approx({"precision": 0.5, "recall": 1.0,
                                                                             "f1": 2 / 3})
    with pytest.raises(ValueError, match="sequence 1 has 2 gold tags but 3 predicted"):
        entity_scores([["O"], ["O", "O"]], [["O"], ["O", "O", "O"]])
    with pytest.raises(ValueError, match="2 gold sequences but 1 predicted"):
        entity_scores([["O"], ["O"]], [["O"]])


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def wnut(wnut_file) -> Path:
    return wnut_file


def test_real_wnut_file_is_clean_bio(wnut):
    sentences = read_conll(wnut)
    assert len(sentences) == 2394
    assert sum(len(toks) for toks, _ in sentences) == 46469
    assert all(len(toks) == len(tags) > 0 for toks, tags in sentences)
    for i, (_, tags) in enumerate(sentences):
        check_bio(tags, f"{wnut.name} sentence {i}")
    names = label_names(tags for _, tags in sentences)
    assert names == ["O"] + [f"{p}-{t}" for t in ("company", "facility", "geo-loc", "movie", "musicartist",
                                                 "other", "person", "product", "sportsteam", "tvshow")
                             for p in "BI"]
    assert sum(len(entities(tags)) for _, tags in sentences) == 1496  # = number of B- tags (clean BIO)


def test_wnut_splits_sizes_content_and_determinism(wnut, tmp_path):
    out = wnut_splits(wnut, tmp_path / "s0", seed=0)
    assert out == tmp_path / "s0"
    parts = {s: _read_jsonl(out / f"{s}.jsonl") for s in ("train", "validation", "test")}
    assert {s: len(p) for s, p in parts.items()} == {"train": 1915, "validation": 239, "test": 240}
    written = sorted((tuple(r["tokens"]), tuple(r["ner_tags"])) for p in parts.values() for r in p)
    assert written == sorted((tuple(t), tuple(g)) for t, g in read_conll(wnut))  # a permutation, nothing lost
    for s, p in parts.items():
        assert all(set(r) == {"tokens", "ner_tags"} for r in p)
        for i, r in enumerate(p):
            check_bio(r["ner_tags"], f"{s} row {i}")

    again = wnut_splits(wnut, tmp_path / "s0-again", seed=0)
    other = wnut_splits(wnut, tmp_path / "s1", seed=1)
    for s in parts:
        assert (again / f"{s}.jsonl").read_bytes() == (out / f"{s}.jsonl").read_bytes()
    assert (other / "train.jsonl").read_bytes() != (out / "train.jsonl").read_bytes()

    import datasets

    datasets.disable_progress_bars()
    dd = datasets.load_dataset("json", data_files={s: str(out / f"{s}.jsonl") for s in parts})
    assert {s: len(dd[s]) for s in parts} == {"train": 1915, "validation": 239, "test": 240}
    assert dd["train"][0] == parts["train"][0]


def test_wnut_splits_limit_and_bad_arguments(wnut, tmp_path):
    out = wnut_splits(wnut, tmp_path / "l100", limit=100, seed=3)
    sizes = {s: len(_read_jsonl(out / f"{s}.jsonl")) for s in ("train", "validation", "test")}
    assert sizes == {"train": 80, "validation": 10, "test": 10}
    full = _read_jsonl(wnut_splits(wnut, tmp_path / "all", seed=3) / "train.jsonl")
    assert _read_jsonl(out / "train.jsonl") == full[:80]  # the limit cuts the same shuffle
    with pytest.raises(DataError, match="leave validation empty"):
        wnut_splits(wnut, tmp_path / "l5", limit=5)  # round(0.5) == 0
    with pytest.raises(DataError, match="summing to 1"):
        wnut_splits(wnut, tmp_path / "bad", fractions=(0.8, 0.3, 0.1))
