"""Students on token-level stores (NER, extractive QA) that `build_store` writes from tiny
random BERT teachers: token-layout batches (in RAM and streamed), cached vs online KD,
the saved student re-scored through transformers, a one-step sweep, and the CLI's
one-line errors."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForQuestionAnswering, AutoModelForTokenClassification

from conftest import NER_LABELS, make_qa_records, make_qa_teacher, write_jsonl, write_ner_splits
from logitstore.build import BuildConfig, build_store
from logitstore.store import open_store
from logitstore.tasks import get_task
from students.cli import main
from students.data import LoaderConfig, SplitBatches
from students.train import TrainConfig, TrainResult, train

CHUNK = 8  # rows per build block: 40 NER training rows make 5 blocks, so streaming has work to do
MAX_LEN_QA, STRIDE = 48, 12


pytestmark = pytest.mark.usefixtures("_one_thread")


# ---------------------------------------------------------------------------- stores
@pytest.fixture(scope="module")
def ner_data(tmp_path_factory) -> Path:
    return write_ner_splits(tmp_path_factory.mktemp("ner-data"), {"train": 40, "validation": 24, "test": 12})


def _ner_build(run: Path, data: Path, out: Path, encoding: str) -> Path:
    build_store(BuildConfig(teachers=(run,), data=str(data), out=out, encoding=encoding, chunk_rows=CHUNK))
    return out


@pytest.fixture(scope="module")
def ner_store(_env, ner_run, ner_data, tmp_path_factory) -> Path:
    return _ner_build(ner_run, ner_data, tmp_path_factory.mktemp("stores") / "ner.zarr", "fp32")


@pytest.fixture(scope="module")
def qa_teacher(_env, tmp_path_factory) -> Path:
    return make_qa_teacher(tmp_path_factory.mktemp("qa") / "qa-teacher", seed=3)


@pytest.fixture(scope="module")
def qa_store(_env, qa_teacher, tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("qa-data")
    write_jsonl(data / "train.jsonl", make_qa_records(12, seed=1))
    write_jsonl(data / "validation.jsonl", make_qa_records(8, seed=2))
    out = tmp_path_factory.mktemp("stores") / "qa.zarr"
    build_store(BuildConfig(teachers=(qa_teacher,), data=str(data), out=out, encoding="fp32", chunk_rows=CHUNK,
                            max_length=MAX_LEN_QA, stride=STRIDE))
    return out


def _config(store: Path, out: Path, **kw) -> TrainConfig:
    base = {"distance": "ce", "temperature": 2.0, "student_temperature": "teacher", "alpha": 0.5,
            "teacher": "checkpoint-1", "layers": 2, "epochs": 1, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-3,
            "seed": 7, "device": "cpu", "progress": False}
    return TrainConfig(store=str(store), out=str(out), **{**base, **kw})


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def _max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _check_token_batches(store, split, checkpoint: str, loader: SplitBatches, epoch: int) -> list[int]:
    """Every batch of ``epoch`` holds its rows' tokens, labels and stored teacher logits, padded."""
    logits = store.read_logits(checkpoint, split.name)  # (T, C)
    off = split.offsets
    ner = store.meta.task == "token-classification"
    seen: list[int] = []
    for b in loader.epoch(epoch):
        rows = b.rows.numpy()
        lengths = split.lengths[rows]
        width = int(lengths.max())
        assert b.input_ids.shape == (len(rows), width)
        assert b.teacher_logits.shape == (len(rows), width, store.meta.num_labels)
        assert b.attention_mask.sum(1).tolist() == lengths.tolist()
        for i, r in enumerate(rows):
            n = lengths[i]
            assert b.input_ids[i, :n].tolist() == split.row(r).tolist()
            assert torch.equal(b.teacher_logits[i, :n], torch.from_numpy(logits[off[r]:off[r + 1]]))
            assert not b.teacher_logits[i, n:].any()  # zero at padding
            if ner:
                assert b.labels[i, :n].tolist() == split.labels[off[r]:off[r + 1]].tolist()
                assert b.labels[i, n:].eq(-100).all()
            if split.token_type_ids is not None:
                assert b.token_type_ids[i, :n].tolist() == split.token_type_ids[off[r]:off[r + 1]].tolist()
        if not ner:
            assert torch.equal(b.labels, torch.from_numpy(split.labels[rows]))  # (B, 2) start, end
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(len(split)))  # every row once per epoch
    assert seen == loader.order(epoch).tolist()
    return seen


# ---------------------------------------------------------------------------- 1. NER batches
def test_ner_streamed_and_in_ram_batches_hold_the_same_rows_and_logits(ner_store):
    store = open_store(ner_store)
    split = store.read_split("train")
    assert store.meta.task == "token-classification" and store.meta.label_names == NER_LABELS
    ram = SplitBatches(store, split, "checkpoint-1", LoaderConfig(batch_size=8, seed=3, mode="ram"))
    stream = SplitBatches(store, split, "checkpoint-1", LoaderConfig(batch_size=8, seed=3, memory_budget_bytes=64,
                                                                     buffer_chunks=2))
    assert not ram.streamed and stream.streamed and stream.chunk_rows == CHUNK
    orders = {}
    for name, loader in (("ram", ram), ("stream", stream)):
        for epoch in (0, 1):
            orders[name, epoch] = _check_token_batches(store, split, "checkpoint-1", loader, epoch)
        assert orders[name, 0] != orders[name, 1]  # each epoch reshuffles
    # streamed buffers are whole blocks: each run of 16 rows holds exactly two blocks
    for pos in range(0, len(split) - len(split) % 16, 16):
        assert len({r // CHUNK for r in orders["stream", 0][pos:pos + 16]}) == 2
    # "auto" decides by the decoded size of the split's per-token logits: tokens x C x 4 bytes
    need = int(split.offsets[-1]) * len(NER_LABELS) * 4
    assert SplitBatches(store, split, "checkpoint-1", LoaderConfig(memory_budget_bytes=need - 1)).streamed
    assert not SplitBatches(store, split, "checkpoint-1", LoaderConfig(memory_budget_bytes=need)).streamed


# ---------------------------------------------------------------------------- 1. NER training
@pytest.fixture(scope="module")
def ner_cached(ner_store, tmp_path_factory) -> TrainResult:
    out = tmp_path_factory.mktemp("runs") / "ner-cached"
    return train(_config(ner_store, out, loader="stream", memory_budget_mb=1e-4, eval_every=2))


@pytest.mark.parametrize("online", ["onnx", "pytorch"])
def test_ner_cached_and_online_training_agree(ner_store, ner_cached, online, tmp_path):
    res = train(_config(ner_store, tmp_path / "online", loader="stream", memory_budget_mb=1e-4, eval_every=2,
                        online=online))
    assert len(res.losses) == len(ner_cached.losses) == 5
    loss_diff = float(np.max(np.abs(np.array(res.losses) - np.array(ner_cached.losses))))
    weight_diff = _max_weight_diff(res.out, ner_cached.out)
    print(f"\nNER {online}: max loss diff {loss_diff:.2e}, max weight diff {weight_diff:.2e}")
    if online == "onnx":  # the graph that wrote the store: the same logits, bit for bit (measured)
        assert res.losses == ner_cached.losses and weight_diff == 0.0
    np.testing.assert_allclose(res.losses, ner_cached.losses, rtol=0, atol=1e-6)  # PyTorch: measured 2.4e-7
    assert weight_diff < 2e-6  # PyTorch: measured 1.2e-7
    assert res.best_step == ner_cached.best_step
    assert res.best.to_dict()["f1"] == ner_cached.best.to_dict()["f1"]


def test_ner_fp16_store_differs_little_and_measurably(_env, ner_run, ner_data, ner_store, ner_cached, tmp_path):
    fp16_store = _ner_build(ner_run, ner_data, tmp_path / "fp16.zarr", "fp16")
    err = open_store(fp16_store).checkpoint("checkpoint-1").encode_max_abs_err
    assert 0 < err < 2e-2  # fp16 rounding of per-token logits of magnitude up to ~30 (measured 2.8e-3)
    fp16 = train(_config(fp16_store, tmp_path / "fp16", loader="stream", memory_budget_mb=1e-4, eval_every=2))
    loss_diff = float(np.max(np.abs(np.array(fp16.losses) - np.array(ner_cached.losses))))
    weight_diff = _max_weight_diff(fp16.out, ner_cached.out)
    print(f"\nNER fp16 vs fp32 store: logit error {err:.2e}, max loss diff {loss_diff:.2e}, "
          f"max weight diff {weight_diff:.2e}")
    assert 0 < loss_diff < 1.5e-4  # measured 1.5e-5
    assert 0 < weight_diff < 1e-3  # measured 6.3e-5


def test_ner_streamed_run_trains_like_an_in_ram_run_with_the_same_row_order(ner_store, ner_cached, tmp_path,
                                                                            monkeypatch):
    """The streamed loader reads per-token logits block by block; given the streamed row
    order, a run that holds the logits in RAM must train to the same bits."""
    chunk_groups = SplitBatches._chunk_groups

    def streamed_order(self, epoch):
        twin = copy.copy(self)
        twin.streamed = self.shuffle  # the training split takes the streamed order; eval splits stay in order
        return chunk_groups(twin, epoch)

    monkeypatch.setattr(SplitBatches, "_chunk_groups", streamed_order)
    ram = train(_config(ner_store, tmp_path / "ram", loader="ram", eval_every=2))
    assert json.loads((tmp_path / "ram" / "run_config.json").read_text())["streamed"] is False
    assert json.loads((ner_cached.out / "run_config.json").read_text())["streamed"] is True
    assert ram.losses == ner_cached.losses
    assert _max_weight_diff(ram.out, ner_cached.out) == 0.0


# ---------------------------------------------------------------------------- 2. QA
def test_qa_batches_hold_the_stored_start_end_logits(qa_store):
    store = open_store(qa_store)
    assert store.meta.task == "question-answering" and store.meta.num_labels == 2
    split = store.read_split("train")
    assert len(np.unique(split.window_of)) < len(split)  # some questions span several windows
    assert split.token_type_ids is not None and split.token_type_ids.any()  # (question, context) pairs
    for loader in (SplitBatches(store, split, "qa-teacher", LoaderConfig(batch_size=8, seed=1, mode="ram")),
                   SplitBatches(store, split, "qa-teacher", LoaderConfig(batch_size=8, seed=1, mode="stream"))):
        assert _check_token_batches(store, split, "qa-teacher", loader, 0)


@pytest.fixture(scope="module")
def qa_cached(qa_store, tmp_path_factory) -> TrainResult:
    out = tmp_path_factory.mktemp("runs") / "qa-cached"
    return train(_config(qa_store, out, teacher="ths", loader="stream", eval_every=2, max_steps=4))


@pytest.mark.parametrize("online", ["onnx", "pytorch"])
def test_qa_cached_and_online_training_agree(qa_store, qa_cached, online, tmp_path):
    res = train(_config(qa_store, tmp_path / "online", teacher="ths", loader="stream", eval_every=2, max_steps=4,
                        online=online))
    assert res.checkpoint == qa_cached.checkpoint == "qa-teacher"
    assert len(res.losses) == len(qa_cached.losses) == 4
    loss_diff = float(np.max(np.abs(np.array(res.losses) - np.array(qa_cached.losses))))
    weight_diff = _max_weight_diff(res.out, qa_cached.out)
    print(f"\nQA {online}: max loss diff {loss_diff:.2e}, max weight diff {weight_diff:.2e}")
    np.testing.assert_allclose(res.losses, qa_cached.losses, rtol=0, atol=1e-6)
    assert res.best_step == qa_cached.best_step
    # Two parameters only shift every token's start (end) logit of a window by the same amount,
    # which the softmax over the window's tokens ignores: qa_outputs.bias and the bias of the
    # last layer's output LayerNorm. Their gradient is 0 up to float rounding, which AdamW
    # divides by its own size, so with the PyTorch teacher (logits ~1e-7 off) they move by up to
    # ~lr per step, differently from the cached run (measured 1.6e-4 after 2 steps at lr 1e-3).
    # The student's predictions do not see them: the validation scores and loss still agree.
    wa, wb = _weights(res.out), _weights(qa_cached.out)
    shift_only = {"qa_outputs.bias", "bert.encoder.layer.1.output.LayerNorm.bias"}
    assert shift_only <= wa.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa if k not in shift_only) < 2e-6
    assert max(float((wa[k] - wb[k]).abs().max()) for k in shift_only) < 2 * 1e-3
    if online == "onnx":  # the graph that wrote the store: the same logits, bit for bit (measured)
        assert res.losses == qa_cached.losses and weight_diff == 0.0
    ea, eb = res.best.to_dict(), qa_cached.best.to_dict()
    assert (ea["f1"], ea["exact_match"]) == (eb["f1"], eb["exact_match"])
    assert ea["ce"] == pytest.approx(eb["ce"], abs=1e-5)


# ---------------------------------------------------------------------------- 3. outputs
def _student_logits(model, store, split, task: str) -> np.ndarray:
    """The reloaded student's logits in the store's (T, C) layout, each row's own tokens."""
    parts = []
    batches = SplitBatches(store, split, None, LoaderConfig(batch_size=16), shuffle=False)
    with torch.no_grad():
        for b in batches.epoch(0):
            o = model(input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids)
            z = o.logits if task == "token-classification" else torch.stack([o.start_logits, o.end_logits], -1)
            parts.extend(z[j, :n].numpy() for j, n in enumerate(b.attention_mask.sum(1).tolist()))
    return np.concatenate(parts)


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_saved_student_loads_and_reproduces_the_summary(task, ner_store, qa_store, ner_cached, qa_cached):
    store_path, run = (ner_store, ner_cached) if task == "token-classification" else (qa_store, qa_cached)
    out = run.out
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines and all("f1" in x and x["kd"] is not None for x in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == run.metric == "f1"
    best = max(lines, key=lambda x: x["f1"])  # first of the best: ties keep the earlier student
    assert summary["best_step"] == best["step"] and summary["best_validation"]["f1"] == best["f1"]

    auto = AutoModelForTokenClassification if task == "token-classification" else AutoModelForQuestionAnswering
    model = auto.from_pretrained(out).eval()
    assert model.config.num_hidden_layers == 2
    store = open_store(store_path)
    if task == "token-classification":
        assert [model.config.id2label[i] for i in range(len(NER_LABELS))] == NER_LABELS
    val = store.read_split(store.meta.validation_split)
    scores = get_task(task).scores(_student_logits(model, store, val, task), val, store.meta.label_names)
    for name in get_task(task).metrics:  # f1 first, then the task's other metrics
        assert scores[name] == pytest.approx(summary["best_validation"][name], abs=1e-9), name
    for name in ("ece", "brier"):  # calibration (issue 14) is in the summary, from the same logits
        assert scores[name] == pytest.approx(summary["best_validation"][name], abs=1e-6), name
    assert scores["loss"] == pytest.approx(summary["best_validation"]["ce"], abs=1e-5)
    if task == "token-classification":  # the test split is scored by the same student
        test = store.read_split("test")
        got = get_task(task).scores(_student_logits(model, store, test, task), test, store.meta.label_names)
        assert got["f1"] == pytest.approx(summary["test"]["f1"], abs=1e-9)
    else:
        assert summary["test"] is None  # the QA store has no test split


# ---------------------------------------------------------------------------- 4. sweep
def test_one_step_grid_sweep_on_a_ner_store_reports_f1(ner_store, tmp_path):
    from students.report import load_report, write_report
    from students.sweep import SweepConfig, SweepSpace, run_sweep

    space = SweepSpace(distance=("ce",), temperature=(2.0,), student_temperature=("teacher",), alpha=(0.5,),
                       teacher=("ths",), layers=(1,), seeds=(0,))
    template = TrainConfig(store=str(ner_store), out="unused", max_steps=1, batch_size=8, eval_batch_size=32,
                           lr=1e-3, device="cpu")
    result = run_sweep(SweepConfig(str(ner_store), str(tmp_path / "sweep"), "grid", space, 1, template))
    assert result.ran == len(result.records) == 3  # hinton, recommended (tll), no KD
    for rec in result.records.values():
        assert rec["metric"] == "f1" and rec["steps"] == 1
        assert rec["val"] == rec["val_eval"]["f1"] and rec["test"] == rec["test_eval"]["f1"]
    report = write_report(tmp_path / "sweep")
    assert report.metric == load_report(tmp_path / "sweep").metric == "f1"
    assert "metric f1" in (tmp_path / "sweep" / "report.md").read_text()


# ---------------------------------------------------------------------------- 5. CLI errors
@pytest.fixture(scope="module")
def bad_inputs(ner_store, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    tampered = root / "tampered.zarr"  # records other weights than the teacher folder now holds
    shutil.copytree(ner_store, tampered)
    no_onnx = root / "no-onnx.zarr"  # its recorded ONNX export is gone
    shutil.copytree(ner_store, no_onnx)
    for store, key, value in ((tampered, "weights_sha256", "0" * 64), (no_onnx, "onnx_path", str(root / "gone.onnx"))):
        ck_json = store / "checkpoints" / "checkpoint-1" / "zarr.json"
        meta = json.loads(ck_json.read_text())
        meta["attributes"]["logitstore"][key] = value
        ck_json.write_text(json.dumps(meta))
    not_a_model = root / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "README").write_text("no config.json here\n")
    return {"ner": ner_store, "tampered": tampered, "no_onnx": no_onnx, "not_a_model": not_a_model}


@pytest.mark.parametrize("case,extra,message", [
    ("ner", ["--teacher", "nope"], "no complete checkpoint named 'nope'"),
    ("ner", ["--layers", "3"], "pick --layers between 1 and 2"),
    ("ner", ["--init", "NOT_A_MODEL"], "cannot read a transformers model config"),
    ("tampered", ["--teacher", "checkpoint-1", "--online", "pytorch"], "changed since checkpoint 'checkpoint-1'"),
    ("no_onnx", ["--teacher", "checkpoint-1", "--online", "onnx"], "cannot open the ONNX model"),
    ("qa", ["--teacher", "checkpoint-1"], "no complete checkpoint named 'checkpoint-1'"),
])
def test_bad_input_is_one_line_and_exit_2(case, extra, message, bad_inputs, qa_store, tmp_path, capsys):
    store = qa_store if case == "qa" else bad_inputs[case]
    extra = [str(bad_inputs["not_a_model"]) if x == "NOT_A_MODEL" else x for x in extra]
    args = ["train", "--store", str(store), "--out", str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "8",
            "--device", "cpu", "--no-progress", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
