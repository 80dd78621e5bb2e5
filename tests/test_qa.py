"""Extractive QA helpers: reading SQuAD files, answer checks, windowing with a real fast
tokenizer, best-span decoding and the SQuAD v1.1 scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from logitstore.errors import DataError
from logitstore.tasks.qa import (Windows, best_spans, check_answers, make_windows, read_squad, squad_scores,
                           synthetic_squad)


@pytest.fixture(scope="module")
def tok(minilm_dir):
    """The real MiniLM fast tokenizer (fetched by the conftest fixture, never by absolute path)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def record(context: str, question: str, text: str, start: int | None = None, rid: str = "q0") -> dict:
    start = context.index(text) if start is None else start
    return {"id": rid, "question": question, "context": context, "answers": {"text": [text], "answer_start": [start]}}


# ---------------------------------------------------------------------------- read_squad

OFFICIAL = {
    "version": "1.1",
    "data": [
        {"title": "A", "paragraphs": [
            {"context": "Paris is the capital of France.", "qas": [
                {"id": "a1", "question": "What is the capital of France?",
                 "answers": [{"text": "Paris", "answer_start": 0}, {"text": "Paris", "answer_start": 0}]},
                {"id": "a2", "question": "Paris is the capital of what?", "is_impossible": False,
                 "answers": [{"text": "France", "answer_start": 24}]},
            ]},
        ]},
        {"title": "B", "paragraphs": [
            {"context": "Water boils at 100 degrees.", "qas": [
                {"question": "At what temperature does water boil?",
                 "answers": [{"text": "100 degrees", "answer_start": 15}]},
            ]},
        ]},
    ],
}

FLAT = [
    {"id": "x1", "question": "Who wrote it?", "context": "It was written by Ann.",
     "answers": {"text": ["Ann"], "answer_start": [18]}},
    {"question": "When?", "context": "It happened in 1999.", "answers": {"text": ["1999"], "answer_start": [15]}},
]


def test_read_squad_official(tmp_path):
    p = tmp_path / "dev-v1.1.json"
    p.write_text(json.dumps(OFFICIAL))
    recs = read_squad(p)
    assert [r["id"] for r in recs] == ["a1", "a2", "2"]  # the third has no id: its row number
    assert recs[0] == {"id": "a1", "question": "What is the capital of France?",
                       "context": "Paris is the capital of France.",
                       "answers": {"text": ["Paris", "Paris"], "answer_start": [0, 0]}}
    assert recs[1]["answers"] == {"text": ["France"], "answer_start": [24]}
    assert recs[2]["context"] == "Water boils at 100 degrees."
    check_answers(recs, "official")


@pytest.mark.parametrize("layout", ["jsonl", "list"])
def test_read_squad_flat(tmp_path, layout):
    p = tmp_path / f"train.{'jsonl' if layout == 'jsonl' else 'json'}"
    if layout == "jsonl":
        p.write_text("\n".join(json.dumps(r) for r in FLAT) + "\n\n")
    else:
        p.write_text(json.dumps(FLAT))
    recs = read_squad(p)
    assert [r["id"] for r in recs] == ["x1", "1"]
    assert recs[0]["question"] == "Who wrote it?" and recs[0]["answers"] == {"text": ["Ann"], "answer_start": [18]}
    assert recs[1] == {"id": "1", "question": "When?", "context": "It happened in 1999.",
                       "answers": {"text": ["1999"], "answer_start": [15]}}
    check_answers(recs, "flat")


@pytest.mark.parametrize("content, needle", [
    (None, "does not exist"),
    ("", "empty"),
    ('{"question": "q", "context": "c"}\nnot json\n', "line 2 is not valid JSON"),
    (json.dumps({"version": "1.1"}), "not SQuAD data"),
    (json.dumps([{"question": "q"}]), "no string 'context'"),
    (json.dumps([{"question": "q", "context": "c", "answers": {"text": ["c"], "answer_start": [0, 1]}}]),
     "1 answer texts but 2 answer starts"),
    (json.dumps({"data": [{"paragraphs": [{"context": "c"}]}]}), "needs a string \"context\" and a list \"qas\""),
])
def test_read_squad_errors(tmp_path, content, needle):
    p = tmp_path / "bad.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(DataError) as info:
        read_squad(p)
    msg = str(info.value)
    assert str(p) in msg and needle in msg, msg
    assert ";" in msg and "\n" not in msg  # one line, problem then fix


# ---------------------------------------------------------------------------- check_answers

def test_check_answers_accepts_good_spans():
    check_answers([record("Paris is the capital of France.", "Capital?", "France")], "train")


@pytest.mark.parametrize("text, start", [
    ("France", 40),   # span past the end of the context
    ("France.", 25),  # right length region but text mismatch
    ("Paris", 1),     # off by one
    ("Paris", -1),    # negative start
])
def test_check_answers_rejects_bad_spans(text, start):
    rec = record("Paris is the capital of France.", "Capital?", text, start=start, rid="q7")
    with pytest.raises(DataError) as info:
        check_answers([record("Rome is in Italy.", "Where?", "Italy"), rec], "validation")
    assert str(info.value) == (
        f"validation: answer {text!r} of question q7 is not at character {start} of its context "
        "(span outside the context or text mismatch); fix answer_start"
    )


def test_check_answers_rejects_unanswerable():
    rec = {"id": "u1", "question": "Why?", "context": "No reason.", "answers": {"text": [], "answer_start": []}}
    with pytest.raises(DataError, match="train: question u1 has no answer; unanswerable questions .* not supported"):
        check_answers([rec], "train")


# ---------------------------------------------------------------------------- synthetic_squad

def test_synthetic_squad_is_deterministic_valid_and_has_long_contexts(tok):
    a, b, c = synthetic_squad(12, seed=3), synthetic_squad(12, seed=3), synthetic_squad(12, seed=4)
    assert a == b and a != c
    assert len(a) == 12 and len({r["id"] for r in a}) == 12
    check_answers(a, "synthetic")
    words = [len(r["context"].split()) for r in a]
    assert sum(150 <= w <= 300 for w in words) >= 4, words
    for r in a:
        assert r["answers"]["text"][0] in r["context"] and r["question"].endswith("?")
    w = make_windows(tok, a, max_length=64, stride=16)
    per_record = np.bincount(w.window_of, minlength=len(a))
    assert (per_record >= 1).all() and (per_record >= 3).sum() >= 4, per_record


# ---------------------------------------------------------------------------- make_windows

def test_make_windows_long_record(tok):
    rec = next(r for r in synthetic_squad(20) if len(r["context"].split()) >= 200)
    ctx, answer, a0 = rec["context"], rec["answers"]["text"][0], rec["answers"]["answer_start"][0]
    a1 = a0 + len(answer)
    w = make_windows(tok, [rec], max_length=48, stride=16)
    assert isinstance(w, Windows)
    R, T = len(w), int(w.offsets[-1])
    assert R >= 4
    assert w.input_ids.dtype == np.int32 and w.input_ids.shape == (T,)
    assert w.offsets.dtype == np.int64 and w.offsets.shape == (R + 1,) and w.offsets[0] == 0
    assert w.token_type_ids.dtype == np.int8 and w.token_type_ids.shape == (T,)
    assert w.offset_mapping.dtype == np.int32 and w.offset_mapping.shape == (T, 2)
    assert w.window_of.dtype == np.int64 and (w.window_of == 0).all()
    assert w.labels.dtype == np.int64 and w.labels.shape == (R, 2)

    q_ids = tok(rec["question"], add_special_tokens=False)["input_ids"]
    prefix = [tok.cls_token_id, *q_ids, tok.sep_token_id]
    containing, prev_ctx = [], None
    for r in range(R):
        lo, hi = w.offsets[r], w.offsets[r + 1]
        ids, spans, tt = w.input_ids[lo:hi], w.offset_mapping[lo:hi], w.token_type_ids[lo:hi]
        assert 0 < hi - lo <= 48
        assert ids[:len(prefix)].tolist() == prefix and ids[-1] == tok.sep_token_id  # no padding
        is_ctx = spans[:, 0] >= 0
        assert not is_ctx[:len(prefix)].any() and not is_ctx[-1] and is_ctx[len(prefix):-1].all()
        assert (tt[is_ctx] == 1).all() and (tt[:len(prefix)] == 0).all()
        ctx_spans = spans[is_ctx]
        if prev_ctx is not None:  # consecutive windows share `stride` context tokens
            assert (prev_ctx[-16:] == ctx_spans[:16]).all()
        prev_ctx = ctx_spans
        # independent test of "contains the answer": a context token starts at a0 and one ends at a1
        holds = (ctx_spans[:, 0] == a0).any() and (ctx_spans[:, 1] == a1).any()
        s, e = w.labels[r]
        if holds:
            containing.append(r)
            assert 0 < s <= e and is_ctx[s] and is_ctx[e]
            assert ctx[spans[s, 0]:spans[e, 1]] == answer
        else:
            assert (s, e) == (0, 0)
    assert containing and len(containing) < R
    assert w.offset_mapping[w.offset_mapping[:, 0] >= 0][0, 0] == 0  # context covered from its start
    assert prev_ctx[-1, 1] == len(ctx)  # ... to its end


def test_make_windows_many_records_are_grouped_in_order(tok):
    recs = synthetic_squad(7, seed=1)
    w = make_windows(tok, recs, max_length=64, stride=16)
    assert (np.diff(w.window_of) >= 0).all() and set(w.window_of.tolist()) == set(range(7))
    for r in np.flatnonzero(w.labels[:, 0] > 0):
        rec, lo = recs[w.window_of[r]], w.offsets[r]
        s, e = w.labels[r]
        assert rec["context"][w.offset_mapping[lo + s, 0]:w.offset_mapping[lo + e, 1]] == rec["answers"]["text"][0]
    labelled = set(w.window_of[w.labels[:, 0] > 0].tolist())
    assert labelled == set(range(7))  # every answer lies wholly inside at least one window


def test_make_windows_rejects_bad_stride(tok):
    with pytest.raises(DataError, match="stride"):
        make_windows(tok, synthetic_squad(1), max_length=32, stride=32)


# ---------------------------------------------------------------------------- best_spans

def test_best_spans_finds_gold_spans_across_windows(tok):
    recs = synthetic_squad(8, seed=2)
    w = make_windows(tok, recs, max_length=64, stride=16)
    rng = np.random.default_rng(0)
    starts, ends = [], []
    seen = set()
    for r in range(len(w)):
        n = int(w.offsets[r + 1] - w.offsets[r])
        s, e = rng.normal(0, 1, n), rng.normal(0, 1, n)
        rec = int(w.window_of[r])
        if w.labels[r, 0] > 0 and rec not in seen:  # peak at the gold span in one containing window
            seen.add(rec)
            s[w.labels[r, 0]] += 10
            e[w.labels[r, 1]] += 10
        starts.append(s.astype(np.float32))
        ends.append(e.astype(np.float32))
    got = best_spans(starts, ends, w, [r["context"] for r in recs])
    assert got == [r["answers"]["text"][0] for r in recs]
    scores = squad_scores(got, [r["answers"]["text"] for r in recs])
    assert scores == {"exact_match": 1.0, "f1": 1.0}


@pytest.fixture(scope="module")
def brown(tok):
    ctx = "Marie Brown won the Nobel Prize in 1903 ."
    w = make_windows(tok, [record(ctx, "Who won?", "Marie Brown")], max_length=64, stride=16)
    assert len(w) == 1
    spans = w.offset_mapping[: w.offsets[1]]
    pos = {ctx[a:b]: i for i, (a, b) in enumerate(spans.tolist()) if a >= 0}
    assert {"Marie", "Brown", "Nobel", "Prize", "1903"} <= set(pos)
    return ctx, w, pos, int(w.offsets[1])


def test_best_spans_respects_max_answer_tokens(brown):
    ctx, w, pos, n = brown
    s, e = np.full(n, -5.0), np.full(n, -5.0)  # so a one-token "Marie" (10 - 5) loses to "Nobel Prize" (5 + 4)
    s[pos["Marie"]], s[pos["Nobel"]] = 10, 5
    e[pos["1903"]], e[pos["Prize"]] = 10, 4
    assert best_spans([s], [e], w, [ctx]) == ["Marie Brown won the Nobel Prize in 1903"]
    assert best_spans([s], [e], w, [ctx], max_answer_tokens=3) == ["Nobel Prize"]


def test_best_spans_requires_end_after_start(brown):
    ctx, w, pos, n = brown
    s, e = np.zeros(n), np.zeros(n)
    s[pos["1903"]], e[pos["Marie"]], e[pos["1903"]] = 10, 10, 3
    assert best_spans([s], [e], w, [ctx]) == ["1903"]
    assert best_spans([s], [e], w, [ctx], n_best=1) == [""]  # the only pair left is reversed


def test_best_spans_ignores_question_and_special_tokens(brown):
    ctx, w, pos, n = brown
    s, e = np.zeros(n), np.zeros(n)
    s[:5] = e[:5] = 100  # [CLS], the question tokens and [SEP]
    s[-1] = e[-1] = 100  # final [SEP]
    s[pos["Brown"]] = e[pos["Brown"]] = 1
    assert best_spans([s], [e], w, [ctx]) == ["Brown"]


def test_best_spans_rejects_wrong_logit_length(brown):
    ctx, w, pos, n = brown
    with pytest.raises(DataError, match="window 0 has"):
        best_spans([np.zeros(n + 1)], [np.zeros(n + 1)], w, [ctx])


# ---------------------------------------------------------------------------- squad_scores

def test_squad_scores_exact_match_after_normalisation():
    assert squad_scores(["the Eiffel Tower"], [["Eiffel Tower!"]]) == {"exact_match": 1.0, "f1": 1.0}
    assert squad_scores(["An  apple, (red)"], [["apple red"]]) == {"exact_match": 1.0, "f1": 1.0}
    assert squad_scores(["Eiffel"], [["Eiffel Tower"]])["exact_match"] == 0.0


def test_squad_scores_partial_overlap_and_means():
    # "the big red car" -> [big, red, car]; "a red car in town" -> [red, car, in, town]
    # overlap 2: precision 2/3, recall 2/4, F1 = 2 * (1/3) / (7/6) = 4/7
    one = squad_scores(["the big red car"], [["blue bus", "a red car in town"]])
    assert one["exact_match"] == 0.0 and one["f1"] == pytest.approx(4 / 7)
    # repeated tokens count as a bag: [red, red] vs [red]: precision 1/2, recall 1, F1 = 2/3
    assert squad_scores(["red red"], [["red"]])["f1"] == pytest.approx(2 / 3)
    both = squad_scores(["the big red car", "Eiffel Tower", "nothing"],
                        [["a red car in town"], ["blue car", "the eiffel tower."], ["something"]])
    assert both["exact_match"] == pytest.approx(1 / 3)
    assert both["f1"] == pytest.approx((4 / 7 + 1 + 0) / 3)


def test_squad_scores_rejects_mismatched_lengths():
    with pytest.raises(DataError, match="2 predictions for 1 questions"):
        squad_scores(["a", "b"], [["a"]])
