"""Token-level tasks on the logitstore side: NER (token classification) and extractive QA
built end to end from tiny random BERT teachers, checked against PyTorch, resumed after
kill -9, refused on bad input, and stored as int8."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from transformers import AutoModelForQuestionAnswering, AutoModelForTokenClassification, AutoTokenizer

from conftest import (NER_LABELS, assert_one_line_error, make_ner_rows, make_qa_records, make_qa_teacher,
                      make_teacher, make_token_teacher, run_cli, write_jsonl, write_ner_splits)
from logitstore import open_store
from logitstore.build import BuildConfig, build_store
from logitstore.cli import main
from logitstore.tasks import get_task
from logitstore.tasks.ner import entity_scores

MAX_LEN_QA, STRIDE = 48, 12
#: Row 0 of the NER validation split: "films", "actors" and "watching" split into two tokens.
SPLIT_ROW = {"tokens": ["The", "films", "actors", "watching", "love"],
             "ner_tags": ["O", "B-film", "I-film", "B-actor", "O"]}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The PyTorch references run tiny models one row at a time: one thread is fastest,
    and spinning thread pools crawl on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ner_data(tmp_path_factory) -> Path:
    folder = write_ner_splits(tmp_path_factory.mktemp("ner-data"), {"train": 70, "validation": 40, "test": 20})
    val = read_jsonl(folder / "validation.jsonl")
    write_jsonl(folder / "validation.jsonl", [SPLIT_ROW, *val[1:]])
    return folder


@pytest.fixture(scope="module")
def ner_stores(ner_run, ner_data, tmp_path_factory) -> dict[str, Path]:
    """The NER data built with both checkpoints, as fp32 and as fp16 (several blocks per split)."""
    root = tmp_path_factory.mktemp("ner-stores")
    out = {}
    for enc in ("fp32", "fp16"):
        out[enc] = root / f"{enc}.zarr"
        build_store(BuildConfig(teachers=(ner_run,), data=str(ner_data), out=out[enc], encoding=enc, chunk_rows=16))
    return out


@pytest.fixture(scope="module")
def qa_teacher(tmp_path_factory) -> Path:
    return make_qa_teacher(tmp_path_factory.mktemp("qa") / "qa-teacher", seed=3)


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("qa-data")
    write_jsonl(folder / "train.jsonl", make_qa_records(24, seed=1))
    write_jsonl(folder / "validation.jsonl", make_qa_records(16, seed=2))
    return folder


@pytest.fixture(scope="module")
def qa_store(qa_teacher, qa_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qa-store") / "qa.zarr"
    build_store(BuildConfig(teachers=(qa_teacher,), data=str(qa_data), out=out, encoding="fp32", chunk_rows=8,
                            max_length=MAX_LEN_QA, stride=STRIDE))  # task from the config's architectures
    return out


# ---------------------------------------------------------------------------- references

def torch_ner_logits(ckpt: Path, ids_rows: list[list[int]]) -> np.ndarray:
    """(sum of row lengths, C): each row run alone through PyTorch, no padding at all."""
    model = AutoModelForTokenClassification.from_pretrained(ckpt, attn_implementation="eager").eval()
    with torch.no_grad():
        return np.concatenate([model(input_ids=torch.tensor([ids])).logits[0].numpy() for ids in ids_rows])


def torch_qa_logits(ckpt: Path, split) -> np.ndarray:
    """(T, 2) start/end logits of each window run alone through PyTorch."""
    model = AutoModelForQuestionAnswering.from_pretrained(ckpt, attn_implementation="eager").eval()
    out = []
    with torch.no_grad():
        for r in range(len(split)):
            a, b = split.offsets[r], split.offsets[r + 1]
            o = model(input_ids=torch.from_numpy(split.input_ids[a:b].astype(np.int64))[None],
                      token_type_ids=torch.from_numpy(split.token_type_ids[a:b].astype(np.int64))[None])
            out.append(np.stack([o.start_logits[0].numpy(), o.end_logits[0].numpy()], axis=-1))
    return np.concatenate(out)


# ---------------------------------------------------------------------------- 1. NER

def test_ner_build_labels_logits_and_scores(ner_stores, ner_run, ner_data):
    store = open_store(ner_stores["fp32"])
    meta = store.meta
    assert (meta.task, meta.layout, meta.label_names) == ("token-classification", "token", NER_LABELS)
    assert (meta.text_columns, meta.label_column, meta.stride) == (["tokens"], "ner_tags", None)
    assert store.split_names() == ["test", "train", "validation"]
    assert store.checkpoint_names() == ["checkpoint-1", "checkpoint-2"]
    tok = store.load_tokenizer()
    assert tok.is_fast

    # the hand-checked row: [CLS] the film ##s actor ##s watch ##ing love [SEP]
    val = store.read_split("validation")
    assert tok.convert_ids_to_tokens(val.row(0).tolist()) == \
        ["[CLS]", "the", "film", "##s", "actor", "##s", "watch", "##ing", "love", "[SEP]"]
    O, Bf, If, Ba = (NER_LABELS.index(t) for t in ("O", "B-film", "I-film", "B-actor"))
    assert val.labels[:10].tolist() == [-100, O, Bf, -100, If, -100, Ba, -100, O, -100]

    for split_name in ("train", "validation", "test"):
        rows = read_jsonl(ner_data / f"{split_name}.jsonl")
        split = store.read_split(split_name)
        T = int(split.offsets[-1])
        assert len(split) == len(rows) and split.input_ids.shape == (T,) and split.labels.shape == (T,)
        assert split.example_ids.tolist() == list(range(len(rows)))
        ids_rows = []
        for i, r in enumerate(rows):
            enc = tok(r["tokens"], is_split_into_words=True, truncation=True, max_length=128)
            assert split.row(i).tolist() == enc["input_ids"]
            ids_rows.append(enc["input_ids"])
            word_ids = enc.word_ids()
            first = [w is not None and (j == 0 or word_ids[j - 1] != w) for j, w in enumerate(word_ids)]
            want = [NER_LABELS.index(r["ner_tags"][w]) if f else -100 for w, f in zip(word_ids, first)]
            assert split.labels[split.offsets[i]:split.offsets[i + 1]].tolist() == want
        for name in store.checkpoint_names():
            ref = torch_ner_logits(ner_run / name, ids_rows)
            got = store.read_logits(name, split_name)
            assert got.shape == (T, len(NER_LABELS))
            np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=f"{name}/{split_name}")
            got16 = open_store(ner_stores["fp16"]).read_logits(name, split_name)
            # fp16 rounding: at most half a unit in the last place, 2^-11 relative
            np.testing.assert_allclose(got16, ref, rtol=2.0 ** -11, atol=1e-4, err_msg=f"fp16 {name}/{split_name}")
            assert not np.array_equal(got16, got)

    rows = read_jsonl(ner_data / "validation.jsonl")
    for name in store.checkpoint_names():
        c = store.checkpoint(name)
        assert c.complete and c.layout == "token" and c.num_labels == 5 and c.metric == "f1"
        assert c.parity_max_abs_err < 1e-4 and c.encode_max_abs_err == 0.0
        logits = store.read_logits(name, "validation")
        scores = get_task("token-classification").scores(logits, val, NER_LABELS)
        assert c.val_score == pytest.approx(scores["f1"]) and c.val_loss == pytest.approx(scores["loss"])
        assert c.val_scores == pytest.approx({k: v for k, v in scores.items() if k != "loss"})
        # independently: word-level entity F1 of the argmax at each word's first token
        pred = logits.argmax(-1)[val.labels != -100]
        n_words = np.cumsum([0] + [len(r["tokens"]) for r in rows])
        pred_tags = [[NER_LABELS[p] for p in pred[a:b]] for a, b in zip(n_words[:-1], n_words[1:])]
        f1 = entity_scores([r["ner_tags"] for r in rows], pred_tags)["f1"]
        assert 0 < f1 < 1 and c.val_score == pytest.approx(f1)
        mask = torch.from_numpy(val.labels != -100)
        ce = torch.nn.functional.cross_entropy(torch.from_numpy(logits).double()[mask], torch.from_numpy(val.labels)[mask])
        assert c.val_loss == pytest.approx(float(ce))
        c16 = open_store(ner_stores["fp16"]).checkpoint(name)
        peak = max(float(np.abs(store.read_logits(name, s)).max()) for s in store.split_names())
        assert 0 < c16.encode_max_abs_err <= peak * 2.0 ** -11 and c16.encoding == "fp16"


def test_ner_from_conll_files_equals_jsonl(ner_stores, ner_run, ner_data, tmp_path):
    """The same sentences as CoNLL files (extra columns, -DOCSTART-, dev = validation)
    give the same split arrays, fingerprint and logits."""
    data = tmp_path / "conll"
    data.mkdir()
    for split, fname in (("train", "train.conll"), ("validation", "dev.conll"), ("test", "test.conll")):
        lines = ["-DOCSTART- -X- O", ""]
        for r in read_jsonl(ner_data / f"{split}.jsonl"):
            lines += [f"{w} NN B-NP {t}" for w, t in zip(r["tokens"], r["ner_tags"])] + [""]
        (data / fname).write_text("\n".join(lines))
    out = tmp_path / "conll.zarr"
    build_store(BuildConfig(teachers=(ner_run / "checkpoint-1",), data=str(data), out=out, encoding="fp32",
                            chunk_rows=16))
    a, b = open_store(ner_stores["fp32"]), open_store(out)
    assert b.meta.task == "token-classification"
    assert a.meta.dataset_fingerprint == b.meta.dataset_fingerprint
    for split in ("train", "validation", "test"):
        sa, sb = a.read_split(split), b.read_split(split)
        for key in ("input_ids", "offsets", "labels", "example_ids"):
            np.testing.assert_array_equal(getattr(sa, key), getattr(sb, key), err_msg=f"{split} {key}")
        np.testing.assert_array_equal(a.read_logits("checkpoint-1", split), b.read_logits("checkpoint-1", split))


def test_info_of_a_token_store_counts_logits_per_token(ner_stores, capsys):
    assert main(["info", str(ner_stores["fp16"])]) == 0
    out = capsys.readouterr().out
    assert "token-classification" in out and "f1" in out
    lines = [line for line in out.splitlines() if "checkpoint-1" in line]
    per_logit = float(re.findall(r"(\d+\.\d\d)\s*\S?\s*complete", lines[0])[0])
    assert 0.5 < per_logit < 2.5  # fp16: ~2 bytes per logit before compression, not per row


# ---------------------------------------------------------------------------- 2. QA

def test_qa_build_windows_labels_logits_and_scores(qa_store, qa_teacher, qa_data):
    store = open_store(qa_store)
    meta = store.meta
    assert (meta.task, meta.layout, meta.label_names, meta.stride) == ("question-answering", "token",
                                                                         ["start", "end"], STRIDE)
    assert (meta.text_columns, meta.label_column) == (["question", "context"], "answers")
    tok = store.load_tokenizer()
    for split_name in ("train", "validation"):
        records = read_jsonl(qa_data / f"{split_name}.jsonl")
        split = store.read_split(split_name)
        R, T = len(split), int(split.offsets[-1])
        assert split.labels.shape == (R, 2) and split.offset_mapping.shape == (T, 2)
        assert split.token_type_ids.shape == (T,) and split.window_of.shape == (R,)
        assert split.contexts == [r["context"] for r in records]
        assert split.answers == [r["answers"]["text"] for r in records]
        np.testing.assert_array_equal(split.example_ids, split.window_of)  # example id = record row
        counts = np.bincount(split.window_of, minlength=len(records))
        assert (np.diff(split.window_of) >= 0).all() and (counts >= 1).all()
        assert counts[::2].min() >= 2 and R > len(records)  # long contexts got several windows
        assert split.lengths.max() <= MAX_LEN_QA
        for k, rec in enumerate(records):
            # windows of record k == the tokenizer's overflowing windows, in order
            enc = tok(rec["question"], rec["context"], truncation="only_second", max_length=MAX_LEN_QA,
                      stride=STRIDE, return_overflowing_tokens=True)
            wins = np.flatnonzero(split.window_of == k)
            assert [split.row(int(r)).tolist() for r in wins] == enc["input_ids"]
            text, a_start = rec["answers"]["text"][0], rec["answers"]["answer_start"][0]
            a_end = a_start + len(text)
            inside = 0
            for r in wins:
                lo, hi = split.offsets[r], split.offsets[r + 1]
                om, tt = split.offset_mapping[lo:hi], split.token_type_ids[lo:hi]
                tokens = tok.convert_ids_to_tokens(split.row(int(r)).tolist())
                is_ctx = om[:, 0] >= 0
                assert (is_ctx == ((tt == 1) & (np.array(tokens) != "[SEP]"))).all()
                for j in np.flatnonzero(is_ctx):  # each context token maps back to its characters
                    assert rec["context"][om[j, 0]:om[j, 1]].lower() == tokens[j].removeprefix("##")
                s, e = split.labels[r]
                holds = om[is_ctx, 0].min() <= a_start and om[is_ctx, 1].max() >= a_end
                if holds:
                    inside += 1
                    assert 0 < s <= e and rec["context"][om[s, 0]:om[e, 1]] == text
                else:
                    assert (s, e) == (0, 0)
            assert inside >= 1, f"record {k}: no window holds the answer"

        ref = torch_qa_logits(qa_teacher, split)
        got = store.read_logits("qa-teacher", split_name)
        assert got.shape == (T, 2)
        np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=split_name)

    c = store.checkpoint("qa-teacher")
    assert c.complete and c.layout == "token" and c.num_labels == 2 and c.metric == "f1"
    val = store.read_split("validation")
    logits = store.read_logits("qa-teacher", "validation")
    scores = get_task("question-answering").scores(logits, val, ["start", "end"])
    assert c.val_score == pytest.approx(scores["f1"]) and c.val_loss == pytest.approx(scores["loss"])
    assert set(c.val_scores) == {"f1", "exact_match", "ece", "brier"} and 0 <= c.val_scores["exact_match"] <= c.val_score <= 1
    ce = []  # per window: mean of the start and end cross-entropies over the window's tokens
    for r in range(len(val)):
        w = torch.from_numpy(logits[val.offsets[r]:val.offsets[r + 1]]).double().T  # (2, L)
        ce.append(float(torch.nn.functional.cross_entropy(w, torch.from_numpy(val.labels[r]))))
    assert c.val_loss == pytest.approx(float(np.mean(ce)))


def test_qa_from_official_squad_json_equals_jsonl(qa_store, qa_teacher, qa_data, tmp_path):
    """The same records as official SQuAD JSON, built without a teacher (token ids only)."""
    data = tmp_path / "squad"
    data.mkdir()
    for split in ("train", "validation"):
        paragraphs = [{"context": r["context"], "qas": [{"id": r["id"], "question": r["question"], "answers": [
            {"text": t, "answer_start": a} for t, a in zip(r["answers"]["text"], r["answers"]["answer_start"])]}]}
            for r in read_jsonl(qa_data / f"{split}.jsonl")]
        (data / f"{split}.json").write_text(json.dumps({"version": "1.1", "data": [{"title": "t",
                                                                                     "paragraphs": paragraphs}]}))
    out = tmp_path / "ids.zarr"
    r = build_store(BuildConfig(teachers=(), tokenizer=qa_teacher, task="qa", data=str(data), out=out,
                                max_length=MAX_LEN_QA, stride=STRIDE))
    assert r.built == []
    a, b = open_store(qa_store), open_store(out)
    assert (b.meta.task, b.meta.stride, b.meta.label_names) == ("question-answering", STRIDE, ["start", "end"])
    assert a.meta.dataset_fingerprint == b.meta.dataset_fingerprint
    for split in ("train", "validation"):
        sa, sb = a.read_split(split), b.read_split(split)
        for key in ("input_ids", "offsets", "labels", "example_ids", "token_type_ids", "offset_mapping",
                    "window_of"):
            np.testing.assert_array_equal(getattr(sa, key), getattr(sb, key), err_msg=f"{split} {key}")
        assert (sa.contexts, sa.answers) == (sb.contexts, sb.answers)
    # the teacher can then be added to the token-id store
    build_store(BuildConfig(teachers=(qa_teacher,), data=str(data), out=out, max_length=MAX_LEN_QA, stride=STRIDE,
                            encoding="fp32"))
    np.testing.assert_array_equal(open_store(out).read_logits("qa-teacher", "validation"),
                                  a.read_logits("qa-teacher", "validation"))


def test_export_command_for_token_teachers(ner_run, qa_teacher, tmp_path, capsys):
    import onnx

    for folder, width in ((ner_run / "checkpoint-1", 5), (qa_teacher, 2)):
        assert main(["export", str(folder), "--out", str(tmp_path / "m.onnx")]) == 0
        assert "parity max |err|" in capsys.readouterr().out
        (output,) = onnx.load(str(tmp_path / "m.onnx")).graph.output
        dims = output.type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["batch", "sequence", width]


# ---------------------------------------------------------------------------- 3. kill -9 and resume

def _cmd(teachers: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "logitstore.cli", "build", "--teacher", str(teachers), "--data", str(data),
            "--out", str(out), "--task", "ner", "--chunk-rows", "64", "--token-budget", "256", "--threads", "1"]


def _progress(out: Path, ckpt: str, split: str) -> dict:
    meta = out / "checkpoints" / ckpt / split / "zarr.json"
    try:
        return json.loads(meta.read_text())["attributes"]["logitstore"]
    except (OSError, ValueError, KeyError):
        return {}


def test_kill9_mid_token_layout_build_then_resume_equals_uninterrupted(ner_run, tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", make_ner_rows(6000, seed=21, min_words=5, max_words=14))
    write_jsonl(data / "validation.jsonl", make_ner_rows(100, seed=22))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    ref = tmp_path / "ref.zarr"
    subprocess.run(_cmd(ner_run, data, ref), check=True, env=env, capture_output=True)
    assert open_store(ref).split_meta("train").tokens > 65_536  # train logits span two token chunks

    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(_cmd(ner_run, data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _progress(out, "checkpoint-1", "train").get("rows_done", 0) < 64 * 3 and time.monotonic() < deadline:
        assert proc.poll() is None, "the build finished before it could be killed; make the data larger"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    prog = _progress(out, "checkpoint-1", "train")
    done = prog["rows_done"]
    assert 64 * 3 <= done < 6000 and done % 64 == 0, f"kill landed outside the train split ({done} rows done)"
    assert prog["block_rows"] == 64 and not prog["complete"]
    partial = open_store(out)
    assert partial.checkpoint_names() == [] and not partial.checkpoint("checkpoint-1").complete

    rerun = subprocess.run(_cmd(ner_run, data, out), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    a, b = open_store(ref), open_store(out)
    assert a.checkpoint_names() == b.checkpoint_names() == ["checkpoint-1", "checkpoint-2"]
    ga, gb = zarr.open_group(ref, mode="r"), zarr.open_group(out, mode="r")
    arrays = sorted(k for k, _ in ga.members(max_depth=None) if isinstance(ga[k], zarr.Array))
    assert arrays == sorted(k for k, _ in gb.members(max_depth=None) if isinstance(gb[k], zarr.Array))
    assert "checkpoints/checkpoint-1/train/logits" in arrays
    for key in arrays:
        np.testing.assert_array_equal(ga[key][:], gb[key][:], err_msg=key)
    for name in a.checkpoint_names():
        ma, mb = a.checkpoint(name), b.checkpoint(name)
        assert (ma.val_loss, ma.val_score, ma.encode_max_abs_err) == (mb.val_loss, mb.val_score, mb.encode_max_abs_err)
        assert a.logits_meta(name, "train") == b.logits_meta(name, "train")


# ---------------------------------------------------------------------------- 4. bad input

def assert_nothing_complete(out: Path, before: list[str] | None = None) -> None:
    if (out / "zarr.json").exists():
        assert open_store(out).checkpoint_names() == (before or [])


def build_args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--teacher", str(teacher), "--data", str(data), "--out", str(out), *extra]


def test_inconsistent_bio_names_split_row_and_tag(capsys, ner_run, ner_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ner_data, data)
    rows = read_jsonl(data / "validation.jsonl")
    rows[3] = {"tokens": ["the", "film", "music"], "ner_tags": ["O", "O", "I-film"]}
    write_jsonl(data / "validation.jsonl", rows)
    out = tmp_path / "s.zarr"
    code, line = run_cli(capsys, *build_args(ner_run, data, out))
    assert_one_line_error(code, line, "split 'validation' row 3", "'I-film'", "word 3", "inconsistent BIO")
    assert_nothing_complete(out)


def test_qa_answer_outside_its_context(capsys, qa_teacher, qa_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(qa_data, data)
    rows = read_jsonl(data / "train.jsonl")
    rows[5]["answers"]["answer_start"] = [len(rows[5]["context"]) + 3]
    write_jsonl(data / "train.jsonl", rows)
    out = tmp_path / "s.zarr"
    code, line = run_cli(capsys, *build_args(qa_teacher, data, out, "--max-length", str(MAX_LEN_QA),
                                               "--stride", str(STRIDE)))
    assert_one_line_error(code, line, "split 'train'", "question 5", "is not at character", "answer_start")
    assert_nothing_complete(out)


def test_token_teacher_with_another_label_set(capsys, ner_data, tmp_path):
    person = make_token_teacher(tmp_path / "person", seed=4,
                                label_names=["O", "B-actor", "I-actor", "B-person", "I-person"])
    out = tmp_path / "s.zarr"
    code, line = run_cli(capsys, *build_args(person, ner_data, out))
    assert_one_line_error(code, line, "'B-film'", "not in the teacher's label set")
    assert_nothing_complete(out)
    generic = make_token_teacher(tmp_path / "generic", seed=5, label_names=["LABEL_0", "LABEL_1", "LABEL_2"])
    code, line = run_cli(capsys, *build_args(generic, ner_data, out))
    assert_one_line_error(code, line, "5 BIO labels", "3 outputs")
    assert_nothing_complete(out)


def test_other_task_teacher_into_an_ner_store(capsys, ner_stores, ner_data, qa_teacher, tmp_path):
    store = tmp_path / "ner.zarr"
    shutil.copytree(ner_stores["fp32"], store)
    before = open_store(store).checkpoint_names(complete_only=False)
    seq = make_teacher(tmp_path / "seqcls", seed=6, num_labels=5,
                       label_names=["O", "B-actor", "I-actor", "B-film", "I-film"])
    for teacher, task, extra in ((seq, "sequence-classification", ()),
                                 (seq, "sequence-classification", ("--task", "ner")),
                                 (qa_teacher, "question-answering", ("--task", "ner"))):
        code, line = run_cli(capsys, *build_args(teacher, ner_data, store, *extra))
        assert_one_line_error(code, line, task, "token-classification")
        assert open_store(store).checkpoint_names(complete_only=False) == before  # no entry added
        assert_nothing_complete(store, before)
    # an NER teacher whose label names come in another order is refused too
    shuffled = make_token_teacher(tmp_path / "shuffled", seed=7,
                                  label_names=["O", "B-film", "I-film", "B-actor", "I-actor"])
    code, line = run_cli(capsys, *build_args(shuffled, ner_data, store))
    assert_one_line_error(code, line, "label set")
    assert open_store(store).checkpoint_names(complete_only=False) == before


def test_nan_token_logits_name_the_example(capsys, tmp_path):
    """NaN only in rows holding one word: the error names the row inside its block."""
    folder = make_token_teacher(tmp_path / "nan", seed=8)
    model = AutoModelForTokenClassification.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[tok.convert_tokens_to_ids("boring")] = float("nan")
    model.save_pretrained(folder)
    rows = [r for r in make_ner_rows(40, seed=9) if "boring" not in [w.lower() for w in r["tokens"]]]
    rows[6] = {"tokens": ["the", "boring", "film"], "ner_tags": ["O", "O", "B-film"]}
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    write_jsonl(tmp_path / "data" / "validation.jsonl", rows[:5])
    out = tmp_path / "s.zarr"
    code, line = run_cli(capsys, *build_args(folder, tmp_path / "data", out, "--chunk-rows", "4"))
    assert_one_line_error(code, line, "NaN or inf logits", "split 'train', example id 6")
    assert_nothing_complete(out)


# ---------------------------------------------------------------------------- 5. int8

@pytest.mark.parametrize("task", ["ner", "qa"])
def test_int8_token_layout_within_recorded_error(task, ner_stores, ner_run, ner_data, qa_store, qa_teacher,
                                                 qa_data, tmp_path):
    out = tmp_path / "int8.zarr"
    if task == "ner":
        exact_path, name, split = ner_stores["fp32"], "checkpoint-2", "train"
        build_store(BuildConfig(teachers=(ner_run / name,), data=str(ner_data), out=out, encoding="int8",
                                chunk_rows=16))
    else:
        exact_path, name, split = qa_store, "qa-teacher", "train"
        build_store(BuildConfig(teachers=(qa_teacher,), data=str(qa_data), out=out, encoding="int8", chunk_rows=8,
                                max_length=MAX_LEN_QA, stride=STRIDE))
    exact = open_store(exact_path).read_logits(name, split)
    store = open_store(out)
    got = store.read_logits(name, split)
    assert got.shape == exact.shape
    g = store._root[f"checkpoints/{name}/{split}"]
    assert g["logits"].dtype == np.int8 and g["scale"].shape == (len(exact),)  # one scale per token
    err = np.abs(got - exact)
    recorded = store.checkpoint(name).encode_max_abs_err
    assert 0 < err.max() <= recorded + 1e-6
    # per token: error <= its own scale / 2 = max|x| / 254
    assert (err.max(axis=1) <= np.abs(exact).max(axis=1) / 254 + 1e-6).all()
    # the recorded error covers every split, each token within its own bound
    exact_store = open_store(exact_path)
    peak = max(float(np.abs(exact_store.read_logits(name, s)).max()) for s in store.split_names())
    assert recorded <= peak / 254 + 1e-6
    c = store.checkpoint(name)
    assert c.complete and c.encoding == "int8" and c.layout == "token"


def test_txt_files_are_conll_only_for_token_classification(tmp_path):
    """A notes .txt beside CSV splits is not a split of a classification dataset."""
    from conftest import LABELS, make_tokenizer, write_csv_splits

    data = write_csv_splits(tmp_path / "data", {"train": 20, "validation": 10})
    (data / "README.txt").write_text("these are the review splits\n")
    make_tokenizer(tmp_path / "tok")
    out = tmp_path / "ids.zarr"
    build_store(BuildConfig(teachers=(), tokenizer=tmp_path / "tok", labels=tuple(LABELS), data=str(data), out=out))
    assert open_store(out).split_names() == ["train", "validation"]
