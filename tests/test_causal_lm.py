"""The causal-LM task (issue 12): packing, the top-k encoding, a build on a tiny random Llama
checked against PyTorch's full logits, store format 3, bad input, verify and repair."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, make_lm_teacher, run_cli, write_lm_splits
from logitstore import open_store
from logitstore.tasks import IGNORE, get_task
from logitstore.topk import decode_topk, encode_topk

LM = get_task("causal-lm")
K, TEMPS = 8, (1.0, 2.0)


def _build_args(run: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--task", "causal-lm", "--teacher", str(run), "--data", str(data), "--out", str(out),
            "--top-k", str(K), "--temperatures", ",".join(map(str, TEMPS)), "--max-length", "32",
            "--chunk-rows", "4", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def lm_store(lm_run, tmp_path_factory, _env, _one_thread):
    from logitstore.cli import main

    root = tmp_path_factory.mktemp("lm-store")
    data = write_lm_splits(root / "data", {"train": 40, "validation": 16})
    out = root / "s.zarr"
    assert main(_build_args(lm_run, data, out)) == 0
    return out


# ---------------------------------------------------------------------------- packing
def test_packing_joins_documents_with_eos_into_blocks(tmp_path):
    import datasets

    from conftest import make_lm_tokenizer
    from logitstore.data import DataConfig

    tok = make_lm_tokenizer(tmp_path)
    eos = tok.eos_token_id
    ds = datasets.Dataset.from_dict({"text": ["the film", "a bad plot story", "fun"], "__example_id": [0, 1, 2]})
    cfg = DataConfig("x", LM, ("text",), "", max_length=8)
    split, _ = LM.tokenize("train", ds, tok, cfg, {}, ("input_ids", "attention_mask"))
    words = [tok.convert_tokens_to_ids(w) for w in "the film a bad plot story fun".split()]
    stream = [*words[:2], eos, *words[2:6], eos, words[6], eos]  # 10 tokens
    assert split.input_ids.tolist() == stream
    assert split.offsets.tolist() == [0, 8, 10]  # blocks of max_length, the last one shorter
    assert split.example_ids.tolist() == [0, 2]  # the document of each block's first token
    want = stream[1:8] + [IGNORE] + stream[9:] + [IGNORE]  # next token inside the block
    assert split.labels.tolist() == want


def test_packing_drops_a_last_block_of_one_token(tmp_path):
    import datasets

    from conftest import make_lm_tokenizer
    from logitstore.data import DataConfig

    tok = make_lm_tokenizer(tmp_path)
    ds = datasets.Dataset.from_dict({"text": ["the film a bad plot story fun good"], "__example_id": [0]})
    split, _ = LM.tokenize("train", ds, tok, DataConfig("x", LM, ("text",), "", max_length=8), {}, ())
    assert split.offsets.tolist() == [0, 8]  # 9 tokens with the EOS: the ninth has nothing to predict


# ---------------------------------------------------------------------------- encoding
def test_topk_encoding_round_trip_against_dense_log_softmax():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(50, 300)).astype(np.float32)  # (N, V)
    ids = np.argsort(-z, axis=1)[:, :K]
    values = np.take_along_axis(z, ids, axis=1)
    lse = np.stack([np.log(np.exp(z.astype(np.float64) / t).sum(1)) for t in TEMPS], 1).astype(np.float32)
    step = 1 / 16
    enc = encode_topk(values, ids, lse, TEMPS, step, vocab_size=300)
    assert enc.ids.dtype == np.uint16 and enc.logp.dtype == np.uint8 and (enc.ids[:, 1:] > 0).all()
    top = decode_topk(enc.ids, enc.logp, enc.lse, step)
    assert (top.ids == np.sort(ids, axis=1)).all()
    for c, t in enumerate(TEMPS):
        dense = z / t - np.log(np.exp(z.astype(np.float64) / t).sum(1, keepdims=True))  # exact log p_t
        want = np.take_along_axis(dense, top.ids, axis=1)
        assert np.abs(top.logp(c, t) - want).max() <= step / 2 / t + 1e-5
    assert enc.max_abs_err <= step / 2 + 1e-6


# ---------------------------------------------------------------------------- build vs PyTorch
def test_build_matches_pytorch_full_logits(lm_store, lm_run):
    import torch
    from transformers import AutoModelForCausalLM

    store = open_store(lm_store)
    assert store.meta.format_version == 4 and store.meta.top_k == K and store.meta.temperatures == list(TEMPS)
    split = store.read_split("validation")
    top = LM.read_topk(store, "checkpoint-1", "validation")
    model = AutoModelForCausalLM.from_pretrained(lm_run / "checkpoint-1", attn_implementation="eager").eval()
    rows = [torch.from_numpy(split.row(i).astype(np.int64))[None] for i in range(len(split))]
    with torch.no_grad():
        z = torch.cat([model(r, use_cache=False).logits[0] for r in rows]).double()  # (T, V)
    step = store.meta.logp_step
    for c, t in enumerate(TEMPS):
        dense = torch.log_softmax(z / t, -1).numpy()
        assert np.abs(top.logp(c, t) - np.take_along_axis(dense, top.ids, 1)).max() <= step / 2 / t + 1e-4
    ref_ids = np.sort(torch.topk(z, K, -1).indices.numpy(), axis=1)
    kth = torch.topk(z, K + 1, -1).values.numpy()
    untied = np.abs(kth[:, K - 1] - kth[:, K]) > 1e-4
    assert (top.ids[untied] == ref_ids[untied]).all()
    m = split.labels != IGNORE
    ce = torch.nn.functional.cross_entropy(z[torch.from_numpy(m)], torch.from_numpy(split.labels[m])).item()
    ck = store.checkpoint("checkpoint-1")
    assert ck.val_loss == pytest.approx(ce, abs=1e-4)  # next-token CE from the full logits, in the graph
    assert ck.encoding == "topk-q8" and ck.parity_max_abs_err < 1e-4 and ck.complete
    assert store.select("tll").name in ("checkpoint-1", "checkpoint-2")


def test_rerun_writes_nothing_and_verify_is_clean(lm_store, lm_run, capsys):
    from logitstore.verify import scan

    before = {p: p.stat().st_mtime_ns for p in lm_store.rglob("*") if p.is_file()}
    data = lm_store.parent / "data"
    code, _ = run_cli(capsys, *_build_args(lm_run, data, lm_store))
    assert code == 0
    assert before == {p: p.stat().st_mtime_ns for p in lm_store.rglob("*") if p.is_file()}
    assert scan(lm_store).clean


def test_damaged_chunk_is_repaired_by_rerun(lm_store, lm_run, tmp_path, capsys):
    import shutil

    from logitstore.verify import scan

    out = tmp_path / "copy.zarr"
    shutil.copytree(lm_store, out)
    chunk = next((out / "checkpoints" / "checkpoint-2" / "train" / "logp" / "c").rglob("*"))
    chunk = chunk if chunk.is_file() else next(p for p in chunk.rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:-7])
    assert not scan(out).clean
    code, _ = run_cli(capsys, *_build_args(lm_run, lm_store.parent / "data", out))
    assert code == 0 and scan(out).clean
    a, b = open_store(lm_store), open_store(out)
    ra = a.read_entry("checkpoint-2", "train", ("ids", "logp", "lse"))
    rb = b.read_entry("checkpoint-2", "train", ("ids", "logp", "lse"))
    assert all(np.array_equal(ra[k], rb[k]) for k in ra)


# ---------------------------------------------------------------------------- format 3
def test_older_reader_refuses_format_3_in_one_line(lm_store, monkeypatch):
    from logitstore import format as fmt
    from logitstore.errors import FormatVersionError

    monkeypatch.setattr(fmt, "READABLE_VERSIONS", (1, 2))  # what a version-2 logitstore reads
    with pytest.raises(FormatVersionError, match="format version 4 is not readable") as info:  # block records
        open_store(lm_store)
    assert "\n" not in str(info.value)


def test_a_causal_lm_store_claiming_version_2_is_corrupt(lm_store, tmp_path):
    import shutil

    from logitstore.errors import StoreCorruptError

    out = tmp_path / "v2.zarr"
    shutil.copytree(lm_store, out)
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["logitstore"]["format_version"] = 2
    (out / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreCorruptError, match="needs version 3"):
        open_store(out)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("flags, needle", [
    (("--top-k", "0"), "--top-k must be >= 1"),
    (("--top-k", "100000"), "--top-k must be between 1 and the vocabulary size"),
    (("--temperatures", "0"), "--temperatures positive"),
    (("--logp-step", "0"), "--logp-step > 0"),
    (("--temperatures", "a"), "--temperatures must be numbers"),
])
def test_bad_settings_are_one_line_errors(flags, needle, lm_run, tmp_path, capsys, _env):
    data = write_lm_splits(tmp_path / "data", {"train": 10, "validation": 4})
    args = _build_args(lm_run, data, tmp_path / "s.zarr")
    if flags[0] in args:
        args[args.index(flags[0]) + 1] = flags[1]
    else:
        args += list(flags)
    code, line = run_cli(capsys, *args)
    assert_one_line_error(code, line, needle)
    assert not (tmp_path / "s.zarr" / "checkpoints").exists() or not open_store(tmp_path / "s.zarr").checkpoint_names()


@pytest.mark.parametrize("texts, needle", [
    (["the film", ""], "with no tokens"),
    ([], "is empty"),
])
def test_bad_corpus_is_a_one_line_error(texts, needle, lm_run, tmp_path, capsys, _env):
    import csv

    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation"):
        with open(data / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text"])
            w.writerows([t] for t in texts)
    code, line = run_cli(capsys, *_build_args(lm_run, data, tmp_path / "s.zarr"))
    assert_one_line_error(code, line, needle)


def test_padded_vocabulary_is_handled_and_said(tmp_path, capsys, _env):
    run = make_lm_teacher(tmp_path / "padded", seed=3, vocab_size=64)
    data = write_lm_splits(tmp_path / "data", {"train": 10, "validation": 4})
    code, _ = run_cli(capsys, *_build_args(run, data, tmp_path / "s.zarr"))
    assert code == 0
    assert open_store(tmp_path / "s.zarr").meta.vocab_size == 64


# ---------------------------------------------------------------------------- kill -9
@pytest.mark.parametrize("mode", [(), ("--sample", "8")], ids=["topk", "sampled"])
def test_kill9_mid_build_then_resume_equals_uninterrupted(mode, lm_run, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    data = write_lm_splits(tmp_path / "data", {"train": 1500, "validation": 40}, seed=5)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    cmd = [sys.executable, "-m", "logitstore.cli", *_build_args(lm_run, data, tmp_path / "X", *mode)]
    cmd[cmd.index("--chunk-rows") + 1] = "8"

    def args(out: Path) -> list[str]:
        return [str(out) if a == str(tmp_path / "X") else a for a in cmd]

    def rows_done(out: Path) -> int:
        try:
            meta = json.loads((out / "checkpoints/checkpoint-1/train/zarr.json").read_text())
            return int(meta["attributes"]["logitstore"]["rows_done"])
        except (OSError, ValueError, KeyError):
            return 0

    ref, out = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    subprocess.run(args(ref), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(args(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while rows_done(out) < 8 * 3 and time.monotonic() < deadline:
        assert proc.poll() is None, "the build finished before it could be killed; make the data larger"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    total = open_store(ref).split_meta("train").rows
    assert 0 < rows_done(out) < total
    assert open_store(out).checkpoint_names() == []  # nothing partial is marked complete
    rerun = subprocess.run(args(out), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    a, b = open_store(ref), open_store(out)
    assert a.checkpoint_names() == b.checkpoint_names() == ["checkpoint-1", "checkpoint-2"]
    for ck in a.checkpoint_names():
        for split in ("train", "validation"):
            names = ("ids", "logp", "lse") + (("counts",) if mode else ()) + (("nll",) if split == "validation" else ())
            ra, rb = a.read_entry(ck, split, names), b.read_entry(ck, split, names)
            assert all(np.array_equal(ra[k], rb[k], equal_nan=False) for k in names), (ck, split)
        assert a.checkpoint(ck).val_loss == b.checkpoint(ck).val_loss
