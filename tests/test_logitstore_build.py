"""Build -> store round trips on tiny random teachers: ONNX vs PyTorch, encodings,
multiple checkpoints, reruns, adding checkpoints, ths/tll selection."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import LABELS, make_teacher
from logitstore import open_store
from logitstore.build import BuildConfig, build_store
from logitstore.export import export_checkpoint, probe_inputs
from logitstore.errors import ExportError
from logitstore.infer import plan_batches


def torch_logits(ckpt: Path, texts: list[str]) -> np.ndarray:
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    out = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding at all in the reference
            enc = tok(t, return_tensors="pt", truncation=True, max_length=128)
            out.append(model(**enc).logits[0].numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def fp32_store(tiny_teachers, tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s") / "fp32.zarr"
    build_store(BuildConfig(teachers=(tiny_teachers,), data=str(tiny_data), out=out, encoding="fp32", chunk_rows=32))
    return out


def test_export_parity_and_cache(tiny_teachers):
    ck = tiny_teachers / "checkpoint-10"
    first = export_checkpoint(ck)
    assert first.parity_max_abs_err < 1e-4
    assert first.input_names == ("input_ids", "attention_mask", "token_type_ids")
    mtime = first.onnx_path.stat().st_mtime_ns
    second = export_checkpoint(ck)
    assert second.cached and second.onnx_path == first.onnx_path
    assert second.onnx_path.stat().st_mtime_ns == mtime  # no work done the second time
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_checkpoint(ck, probe_inputs(ck, first.input_names), tolerance=0.0)


def test_store_round_trip_matches_pytorch(fp32_store, tiny_teachers, tiny_data):
    import csv

    store = open_store(fp32_store)
    assert store.meta.label_names == LABELS
    assert store.split_names() == ["test", "train", "validation"]
    assert store.checkpoint_names() == ["checkpoint-10", "checkpoint-20"]
    rows = list(csv.DictReader(open(tiny_data / "train.csv")))
    split = store.read_split("train")
    tok = store.load_tokenizer()
    for i in (0, 7, len(rows) - 1):  # token ids are the tokenizer's, unpadded, in dataset order
        assert split.row(i).tolist() == tok(rows[i]["text"], truncation=True, max_length=128)["input_ids"]
    assert split.labels.tolist() == [LABELS.index(r["label"]) for r in rows]
    assert split.example_ids.tolist() == list(range(len(rows)))
    for name in ("checkpoint-10", "checkpoint-20"):
        ref = torch_logits(tiny_teachers / name, [r["text"] for r in rows])
        got = store.read_logits(name, "train")
        assert got.shape == (len(rows), 3)
        np.testing.assert_allclose(got, ref, atol=1e-4)  # bucketed ORT batches == unpadded PyTorch, in order
        c = store.checkpoint(name)
        assert c.complete and c.provider == "CPU" and c.encoding == "fp32" and c.encode_max_abs_err == 0.0
        assert c.parity_max_abs_err < 1e-4 and c.step == int(name.split("-")[1])
        val = store.read_split("validation")
        logp = torch.log_softmax(torch.from_numpy(store.read_logits(name, "validation")).double(), -1)
        assert c.val_loss == pytest.approx(float(-logp[torch.arange(len(val)), torch.from_numpy(val.labels)].mean()))
        assert c.val_score == pytest.approx(float((logp.argmax(-1).numpy() == val.labels).mean()))


@pytest.mark.parametrize("encoding,tol", [("fp16", 2e-3), ("int8", None)])
def test_lossy_encodings_record_their_error(fp32_store, tiny_teachers, tiny_data, tmp_path, encoding, tol):
    out = tmp_path / f"{encoding}.zarr"
    build_store(BuildConfig(teachers=(tiny_teachers / "checkpoint-10",), data=str(tiny_data), out=out,
                            encoding=encoding, chunk_rows=50))
    exact = open_store(fp32_store).read_logits("checkpoint-10", "train")
    got_store = open_store(out)
    got = got_store.read_logits("checkpoint-10", "train")
    err = float(np.abs(got - exact).max())
    recorded = got_store.checkpoint("checkpoint-10").encode_max_abs_err
    assert 0 < err <= recorded + 1e-6  # the recorded error bounds the real one
    bound = tol if tol is not None else float(np.abs(exact).max()) / 127 / 2 + 1e-6
    assert recorded <= bound
    dtype = {"fp16": np.float16, "int8": np.int8}[encoding]
    assert got_store._root["checkpoints/checkpoint-10/train/logits"].dtype == dtype


def test_rerun_is_noop_and_checkpoints_can_be_added(tiny_teachers, tiny_data, tmp_path):
    out = tmp_path / "s.zarr"
    r1 = build_store(BuildConfig(teachers=(tiny_teachers / "checkpoint-10",), data=str(tiny_data), out=out))
    assert r1.built == ["checkpoint-10"]
    before = open_store(out).read_logits("checkpoint-10", "train")
    chunk = out / "checkpoints/checkpoint-10/train/logits/c/0/0"
    mtime = chunk.stat().st_mtime_ns
    r2 = build_store(BuildConfig(teachers=(tiny_teachers,), data=str(tiny_data), out=out))
    assert r2.built == ["checkpoint-20"] and r2.skipped == ["checkpoint-10"]
    assert chunk.stat().st_mtime_ns == mtime
    store = open_store(out)
    assert store.checkpoint_names() == ["checkpoint-10", "checkpoint-20"]
    np.testing.assert_array_equal(store.read_logits("checkpoint-10", "train"), before)


def test_single_split_is_split_with_a_seed(tiny_teachers, tmp_path):
    _write_jsonl(tmp_path / "all.jsonl", 50)
    out = tmp_path / "s.zarr"
    build_store(BuildConfig(teachers=(tiny_teachers / "checkpoint-10",), data=str(tmp_path / "all.jsonl"), out=out,
                            split_fractions=(0.6, 0.2, 0.2), split_seed=3))
    store = open_store(out)
    sizes = {s: store.split_meta(s).rows for s in store.split_names()}
    assert sizes == {"train": 30, "validation": 10, "test": 10}
    ids = np.concatenate([store.read_split(s).example_ids for s in sizes])
    assert sorted(ids.tolist()) == list(range(50))  # a partition of the one split


def _write_jsonl(path: Path, n: int) -> None:
    import json

    from conftest import make_texts

    path.write_text("".join(json.dumps(r) + "\n" for r in make_texts(n, seed=9)))


def test_text_pairs_store_token_types(tiny_teachers, tmp_path):
    import json

    from conftest import make_texts

    rows = make_texts(40, seed=4)
    for r in rows:
        r["hypothesis"] = r["text"][::-1].split(" ")[0] + " plot"
    for split, part in (("train", rows[:30]), ("validation", rows[30:])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    out = tmp_path / "pairs.zarr"
    build_store(BuildConfig(teachers=(tiny_teachers / "checkpoint-10",), data=str(tmp_path), out=out,
                            text_columns=("text", "hypothesis"), encoding="fp32"))
    store = open_store(out)
    split = store.read_split("validation")
    assert split.token_type_ids is not None and set(np.unique(split.token_type_ids)) == {0, 1}
    tok = store.load_tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teachers / "checkpoint-10").eval()
    enc = tok(rows[30]["text"], rows[30]["hypothesis"], return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).logits[0].numpy()
    np.testing.assert_allclose(store.read_logits("checkpoint-10", "validation")[0], ref, atol=1e-4)


def test_ths_and_tll_on_hand_made_entries(fp32_store, tmp_path):
    path = tmp_path / "copy.zarr"
    shutil.copytree(fp32_store, path)
    from logitstore.writer import StoreWriter

    store = StoreWriter.open(path)
    base = store.checkpoint("checkpoint-10")
    # a: best score, worst loss; b: lowest loss; c: ties a on score with a lower loss; d: incomplete, best of all
    for name, loss, score, done in (("a", 0.9, 0.80, True), ("b", 0.3, 0.70, True), ("c", 0.5, 0.80, True),
                                    ("d", 0.1, 0.99, False)):
        store.put_checkpoint(replace(base, name=name, val_loss=loss, val_score=score, complete=done))
    for name in ("checkpoint-10", "checkpoint-20"):
        store.put_checkpoint(replace(store.checkpoint(name), val_loss=2.0, val_score=0.1))
    store = open_store(path)
    assert store.select("ths").name == "c"  # highest score; tie broken by the lower loss
    assert store.select("tll").name == "b"
    assert store.select("a").name == "a"


def test_plan_batches_respects_budget_and_covers_rows():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 100, size=500)
    batches = plan_batches(lengths, token_budget=1000)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(500))
    for b in batches:
        assert len(b) * lengths[b].max() <= 1000
    padded_max = 500 * lengths.max()
    padded_bucketed = sum(len(b) * lengths[b].max() for b in batches)
    assert padded_bucketed < 0.7 * padded_max


def test_num_labels_must_match_store(tiny_data, tmp_path):
    make_teacher(tmp_path / "three", seed=5, num_labels=3)
    make_teacher(tmp_path / "two", seed=6, num_labels=2, label_names=LABELS[:2])
    out = tmp_path / "s.zarr"
    from logitstore.errors import StoreMismatchError

    with pytest.raises(StoreMismatchError, match="2 labels but the store has 3"):
        build_store(BuildConfig(teachers=(tmp_path / "three", tmp_path / "two"), data=str(tiny_data), out=out))
    store = open_store(out)
    assert store.checkpoint_names(complete_only=False) == ["three"] and store.checkpoint("three").complete


def test_provider_choice_is_checked(tiny_teachers):
    import onnxruntime as ort

    from logitstore.errors import ProviderError
    from logitstore.infer import make_session

    onnx_path = export_checkpoint(tiny_teachers / "checkpoint-10").onnx_path
    assert make_session(onnx_path, "auto").provider in ("CPU", "CUDA")
    assert make_session(onnx_path, "cpu").provider == "CPU"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderError, match="cuda is not available"):
            make_session(onnx_path, "cuda")
    with pytest.raises(ProviderError, match="unknown provider"):
        make_session(onnx_path, "tpu")


def test_info_and_export_commands(fp32_store, tiny_teachers, tmp_path, capsys):
    from logitstore.cli import main

    assert main(["info", str(fp32_store)]) == 0
    out = capsys.readouterr().out
    for needle in ("train", "120", "checkpoint-10", "checkpoint-20", "ths", "tll", "CPU", "bytes/logit", "complete"):
        assert needle in out
    assert main(["export", str(tiny_teachers / "checkpoint-20"), "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 10_000
    assert "parity max |err|" in capsys.readouterr().out


def test_token_only_store_then_teachers_added(tiny_teachers, tiny_data, tmp_path):
    from logitstore.errors import StoreMismatchError

    out = tmp_path / "ids.zarr"
    r = build_store(BuildConfig(teachers=(), tokenizer=tiny_teachers / "checkpoint-10", labels=tuple(LABELS),
                                data=str(tiny_data), out=out))
    assert r.built == []
    store = open_store(out)
    assert store.meta.label_names == LABELS and store.checkpoint_names() == []
    assert len(store.read_split("train")) == 120
    build_store(BuildConfig(teachers=(tiny_teachers,), data=str(tiny_data), out=out))
    assert open_store(out).checkpoint_names() == ["checkpoint-10", "checkpoint-20"]
    # a teacher whose label names come in another order is refused, not silently misaligned
    make_teacher(tmp_path / "reordered", seed=3, label_names=[LABELS[1], LABELS[0], LABELS[2]])
    with pytest.raises(StoreMismatchError, match="names and order must match"):
        build_store(BuildConfig(teachers=(tmp_path / "reordered",), data=str(tiny_data), out=out,
                                labels=tuple(LABELS)))


def test_training_folder_means_its_checkpoints(tiny_teachers, tmp_path):
    from logitstore.checkpoints import discover

    run = tmp_path / "run"
    shutil.copytree(tiny_teachers, run)
    make_teacher(run, seed=9)  # a final model saved beside the checkpoints
    assert [c.name for c in discover([run])] == ["checkpoint-10", "checkpoint-20"]
    assert [c.name for c in discover([run / "checkpoint-20"])] == ["checkpoint-20"]


def test_build_config_takes_plain_strings(tiny_teachers, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README's API example, with str paths
    build_store(BuildConfig(teachers=[str(tiny_teachers / "checkpoint-10")], data=str(tiny_data), out="logits.zarr"))
    assert open_store("logits.zarr").checkpoint_names() == ["checkpoint-10"]
