"""Training from real stores that `build_store` writes from the tiny teachers: batches,
cached vs online equivalence, fp16 vs fp32, ths/tll, the output folder, and the CLI's
one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from conftest import make_teacher
from logitstore.build import BuildConfig, build_store
from logitstore.errors import FormatVersionError
from logitstore.store import open_store
from students.cli import main
from students.data import LoaderConfig, SplitBatches
from students.train import TrainConfig, TrainResult, train

CHUNK = 16  # rows per logits chunk: the 120 training rows make 8 chunks, so streaming has work to do
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("_one_thread")


def _build(teachers: Path, data: Path, out: Path, encoding: str) -> Path:
    build_store(BuildConfig(teachers=(teachers,), data=str(data), out=out, encoding=encoding, chunk_rows=CHUNK))
    return out


@pytest.fixture(scope="module")
def fp32_store(_env, tmp_path_factory, tiny_teachers, tiny_data) -> Path:
    return _build(tiny_teachers, tiny_data, tmp_path_factory.mktemp("stores") / "fp32.zarr", "fp32")


@pytest.fixture(scope="module")
def fp16_store(_env, tmp_path_factory, tiny_teachers, tiny_data) -> Path:
    return _build(tiny_teachers, tiny_data, tmp_path_factory.mktemp("stores") / "fp16.zarr", "fp16")


@pytest.fixture(scope="module")
def pick_store(_env, tmp_path_factory, tiny_data) -> Path:
    """Two constant teachers whose ths and tll picks differ by construction.

    validation has 40 rows with labels i % 3: 14 of class 0, 13 of class 1, 13 of class 2.
    checkpoint-1 always says class 0 with logits (10, 0, 0): accuracy 0.35, loss ~6.5.
    checkpoint-2 always says class 1 with logits (0, 0.1, 0): accuracy 0.325, loss ~1.10.
    So ths = checkpoint-1 and tll = checkpoint-2.
    """
    run = tmp_path_factory.mktemp("pick-run")
    for name, seed, bias in (("checkpoint-1", 11, [10.0, 0.0, 0.0]), ("checkpoint-2", 12, [0.0, 0.1, 0.0])):
        folder = make_teacher(run / name, seed=seed)
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(bias))
        model.save_pretrained(folder)
    return _build(run, tiny_data, tmp_path_factory.mktemp("stores") / "pick.zarr", "fp32")


def _config(store: Path, out: Path, **kw) -> TrainConfig:
    base = dict(store=str(store), out=str(out), distance="ce", temperature=2.0, student_temperature="teacher",
                alpha=0.5, teacher="checkpoint-10", layers=2, epochs=2, batch_size=16, lr=1e-3, seed=7,
                device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def _max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


# ---------------------------------------------------------------------------- batches
def test_streamed_and_in_ram_batches_hold_the_same_examples(fp32_store):
    store = open_store(fp32_store)
    split = store.read_split("train")
    logits = store.read_logits("checkpoint-10", "train")  # (R, C)
    ram = SplitBatches(store, split, "checkpoint-10", LoaderConfig(batch_size=16, seed=3, mode="ram"))
    stream = SplitBatches(store, split, "checkpoint-10", LoaderConfig(batch_size=16, seed=3, mode="stream",
                                                                      buffer_chunks=2))
    assert not ram.streamed and stream.streamed and stream.chunk_rows == CHUNK
    orders = {}
    for name, loader in (("ram", ram), ("stream", stream)):
        for epoch in (0, 1):
            seen = []
            for b in loader.epoch(epoch):
                rows = b.rows.numpy()
                lengths = split.lengths[rows]
                assert b.input_ids.shape == (len(rows), lengths.max())  # padded to its own longest row
                assert b.attention_mask.sum(1).tolist() == lengths.tolist()
                for i, r in enumerate(rows):
                    assert b.input_ids[i, :lengths[i]].tolist() == split.row(r).tolist()
                    assert b.input_ids[i, lengths[i]:].eq(store.meta.pad_token_id).all()
                assert torch.equal(b.labels, torch.from_numpy(split.labels[rows]))
                assert torch.equal(b.teacher_logits, torch.from_numpy(logits[rows]))  # aligned by row
                assert not b.token_type_ids.any()
                seen.extend(rows.tolist())
            assert sorted(seen) == list(range(len(split)))  # every example once per epoch
            assert seen == loader.order(epoch).tolist()
            orders[name, epoch] = seen
        assert orders[name, 0] != orders[name, 1]  # each epoch reshuffles
    # Streaming takes whole chunks two at a time: the order is a run of buffers, each of which
    # holds every row of two chunks (the last buffer of an odd count holds one).
    order, pos, chunk_size = orders["stream", 0], 0, lambda c: min(CHUNK, len(split) - c * CHUNK)
    while pos < len(order):
        chunks: set[int] = set()
        end = pos
        while end < len(order) and len(chunks | {order[end] // CHUNK}) <= 2:
            chunks.add(order[end] // CHUNK)
            end += 1
        assert end - pos == sum(chunk_size(c) for c in chunks) and (len(chunks) == 2 or end == len(order))
        pos = end
    again = SplitBatches(store, split, "checkpoint-10", LoaderConfig(batch_size=16, seed=3, mode="stream",
                                                                     buffer_chunks=2))
    assert again.order(1).tolist() == orders["stream", 1]  # seeded by seed + epoch
    # "auto" decides by the memory budget for the decoded logits (120 rows x 3 x 4 bytes).
    assert SplitBatches(store, split, "checkpoint-10", LoaderConfig(memory_budget_bytes=120 * 12 - 1)).streamed
    assert not SplitBatches(store, split, "checkpoint-10", LoaderConfig(memory_budget_bytes=120 * 12)).streamed


# ---------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("mode", ["ram", "stream"])
def test_group_by_length_keeps_every_row_once_and_pads_less(fp32_store, mode):
    store = open_store(fp32_store)
    split = store.read_split("train")
    logits = store.read_logits("checkpoint-10", "train")  # (R, C)
    plain = SplitBatches(store, split, "checkpoint-10", LoaderConfig(batch_size=8, seed=1, mode=mode))
    grouped = SplitBatches(store, split, "checkpoint-10", LoaderConfig(batch_size=8, seed=1, mode=mode,
                                                                       group_by_length=True))
    padded = {}
    for name, loader in (("plain", plain), ("grouped", grouped)):
        seen, cells = [], 0
        for b in loader.epoch(2):
            rows = b.rows.numpy()
            assert torch.equal(b.teacher_logits, torch.from_numpy(logits[rows]))  # still aligned by row
            cells += b.input_ids.numel()
            seen.extend(rows.tolist())
        assert sorted(seen) == list(range(len(split))) and seen == loader.order(2).tolist()
        padded[name] = cells
    assert padded["grouped"] < 0.8 * padded["plain"]  # 120 rows of 2-24 words: far less padding
    assert grouped.order(2).tolist() == grouped.order(2).tolist() != grouped.order(3).tolist()  # seeded per epoch


@pytest.fixture(scope="module")
def cached_run(fp32_store, tmp_path_factory) -> TrainResult:
    out = tmp_path_factory.mktemp("runs") / "cached"
    return train(_config(fp32_store, out, loader="stream", eval_every=5))


@pytest.mark.parametrize("online", ["pytorch", "onnx"])
def test_cached_and_online_training_agree(fp32_store, cached_run, online, tmp_path):
    """Same seed, fp32 store: the same batches, dropout masks and loss, so the runs agree up
    to the difference between the stored teacher logits (ONNX Runtime, length-bucketed
    batches) and the recomputed ones (float32 rounding of other kernels or padding; the
    build's parity check measured ~2e-7). Measured here after 16 AdamW steps: ONNX 0 (the
    same graph), PyTorch <= 2e-7 in losses and weights. The bounds (1e-6 loss, 2e-6 weight)
    leave ~10x room for other CPUs' kernels yet fail for any real divergence: a different
    batch, dropout mask or teacher changes the losses at 1e-2, and even fp16 rounding of
    the stored logits (next test) moves the weights by ~2e-5."""
    online_run = train(_config(fp32_store, tmp_path / "online", loader="stream", eval_every=5, online=online))
    assert len(online_run.losses) == len(cached_run.losses) == 16
    np.testing.assert_allclose(online_run.losses, cached_run.losses, rtol=0, atol=1e-6)
    assert online_run.best_step == cached_run.best_step
    assert _max_weight_diff(online_run.out, cached_run.out) < 2e-6


def test_fp16_store_differs_little_and_measurably(fp32_store, fp16_store, cached_run, tmp_path):
    """The default fp16 store rounds each logit by up to ~1e-4 here; measured after 16 steps:
    losses differ by ~1.5e-6 and weights by ~1.8e-5. The bounds leave ~10x room."""
    err = open_store(fp16_store).checkpoint("checkpoint-10").encode_max_abs_err
    assert 0 < err < 1e-3  # fp16 rounding of logits of magnitude ~1-10
    fp16 = train(_config(fp16_store, tmp_path / "fp16", loader="stream", eval_every=5))
    loss_diff = float(np.max(np.abs(np.array(fp16.losses) - np.array(cached_run.losses))))
    weight_diff = _max_weight_diff(fp16.out, cached_run.out)
    print(f"\nfp16 vs fp32 store: logit error {err:.2e}, max loss diff {loss_diff:.2e}, max weight diff {weight_diff:.2e}")
    assert 0 < loss_diff < 2e-5
    assert 0 < weight_diff < 2e-4


# ---------------------------------------------------------------------------- teacher choice
def test_ths_and_tll_pick_the_documented_checkpoints_and_drive_training(pick_store, tiny_teachers, tmp_path,
                                                                         capsys):
    # One --init model for all runs, so only the teacher logits can make the runs differ.
    init = str(tiny_teachers / "checkpoint-20")
    runs = {t: train(_config(pick_store, tmp_path / t, teacher=t, max_steps=2, alpha=1.0, init=init))
            for t in ("ths", "tll", "checkpoint-1")}
    assert runs["ths"].checkpoint == "checkpoint-1" and runs["tll"].checkpoint == "checkpoint-2"
    assert json.loads((tmp_path / "tll" / "run_config.json").read_text())["checkpoint"] == "checkpoint-2"
    assert "teacher checkpoint: checkpoint-2 (--teacher tll" in capsys.readouterr().out  # printed too
    assert runs["ths"].losses == runs["checkpoint-1"].losses  # ths trains exactly as its checkpoint
    assert abs(runs["ths"].losses[0] - runs["tll"].losses[0]) > 1e-3  # and not as the other one


# ---------------------------------------------------------------------------- outputs
def test_output_folder_holds_the_best_student_and_its_records(fp32_store, cached_run):
    out = cached_run.out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "run_config.json", "metrics.jsonl",
            "summary.json"} <= names
    resolved = json.loads((out / "run_config.json").read_text())
    assert resolved["checkpoint"] == "checkpoint-10" and resolved["tau_s"] == 2.0
    assert resolved["student_init"]["layer_map"] == [1, 3] and resolved["streamed"] is True
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10, 15, 16]
    assert all(x["kd"] is not None and x["kd"] >= 0 and x["train_ce"] is not None for x in lines)
    best = max(lines, key=lambda x: x["accuracy"])  # first of the best: ties keep the earlier student
    assert cached_run.best_step == best["step"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_validation"]["accuracy"] == best["accuracy"] and summary["test"]["examples"] == 30

    # The saved student is the best one: reloaded with transformers, it scores what was logged.
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    store = open_store(fp32_store)
    val = store.read_split("validation")
    batches = SplitBatches(store, val, None, LoaderConfig(batch_size=64), shuffle=False)
    with torch.no_grad():
        logits = torch.cat([model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
                            for b in batches.epoch(0)])  # (N, C)
    assert float((logits.argmax(-1).numpy() == val.labels).mean()) == best["accuracy"]
    gold_ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(val.labels)).item()
    assert gold_ce == pytest.approx(best["ce"], abs=1e-5)


def test_alpha_one_uses_no_labels_and_mse_tau_s_one_trains(fp32_store, tmp_path):
    res = train(_config(fp32_store, tmp_path / "a1", alpha=1.0, distance="mse", student_temperature="1",
                        max_steps=4, eval_every=2))
    lines = [json.loads(x) for x in (tmp_path / "a1" / "metrics.jsonl").read_text().splitlines()]
    assert [x["train_ce"] for x in lines] == [None, None]  # the gold labels were not used
    assert all(np.isfinite(res.losses))
    assert all(x["train_loss"] == pytest.approx(x["train_kd"]) for x in lines)


# ---------------------------------------------------------------------------- CLI errors
@pytest.fixture(scope="module")
def bad_inputs(fp32_store, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    empty = root / "no-checkpoints.zarr"
    shutil.copytree(fp32_store, empty)
    for ck in (empty / "checkpoints").iterdir():
        if ck.is_dir():
            shutil.rmtree(ck)
    future = root / "future.zarr"
    shutil.copytree(fp32_store, future)
    meta = json.loads((future / "zarr.json").read_text())
    meta["attributes"]["logitstore"]["format_version"] = 99
    (future / "zarr.json").write_text(json.dumps(meta))
    tampered = root / "tampered.zarr"  # records other weights than the teacher folder now holds
    shutil.copytree(fp32_store, tampered)
    ck_json = tampered / "checkpoints" / "checkpoint-10" / "zarr.json"
    meta = json.loads(ck_json.read_text())
    meta["attributes"]["logitstore"]["weights_sha256"] = "0" * 64
    ck_json.write_text(json.dumps(meta))
    other = make_teacher(root / "other-vocab", seed=9)
    model = AutoModelForSequenceClassification.from_pretrained(other)
    model.resize_token_embeddings(model.config.vocab_size + 7)
    model.save_pretrained(other)
    return {"empty": empty, "future": future, "tampered": tampered, "other": other}


def _cli(store: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--store", str(store), "--out", str(out), "--max-steps", "2", "--batch-size", "16",
            "--device", "cpu", "--no-progress", *extra]


@pytest.mark.parametrize("case,extra,message", [
    ("empty", ["--alpha", "0.5"], "has no complete teacher checkpoint"),
    ("empty", ["--alpha", "0"], "has no teacher checkpoint to initialise the student from; pass --init PATH"),
    ("fp32", ["--teacher", "nope"], "no complete checkpoint named 'nope'"),
    ("fp32", ["--layers", "9"], "pick --layers between 1 and 4"),
    ("future", [], "store format version 99 is not readable"),
    ("fp32", ["--init", "OTHER"], "has a vocabulary of"),
    ("tampered", ["--teacher", "checkpoint-10", "--online", "pytorch"], "changed since checkpoint 'checkpoint-10'"),
    ("fp32", ["--alpha", "2", "--temperature", "0"], "Got 0.0 instead; alpha must be in [0, 1]. Got 2.0 instead"),
])
def test_bad_input_is_one_line_and_exit_2(case, extra, message, fp32_store, bad_inputs, tmp_path, capsys):
    store = fp32_store if case == "fp32" else bad_inputs[case]
    extra = [str(bad_inputs["other"]) if x == "OTHER" else x for x in extra]
    assert main(_cli(store, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_alpha_zero_without_checkpoints_trains_from_init(bad_inputs, tiny_teachers, tmp_path, capsys):
    out = tmp_path / "plain"
    args = _cli(bad_inputs["empty"], out, "--alpha", "0", "--init", str(tiny_teachers / "checkpoint-20"))
    assert main(args) == 0
    resolved = json.loads((out / "run_config.json").read_text())
    assert resolved["checkpoint"] is None and resolved["student_init"]["source"].endswith("checkpoint-20")
    assert all(json.loads(x)["kd"] is None for x in (out / "metrics.jsonl").read_text().splitlines())


def test_real_process_exit_code_and_debug_traceback(bad_inputs, tmp_path):
    args = _cli(bad_inputs["future"], tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "students.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    with pytest.raises(FormatVersionError):
        main(args + ["--debug"])


def test_online_onnx_after_the_export_was_pruned_says_how_to_restore_it(fp32_store, tmp_path, capsys):
    """`logitstore cache --prune` may remove the graph a store recorded: --online onnx then says
    to export it again (which puts it back at the same path), not to rebuild the store."""
    from logitstore import open_store

    ck = open_store(fp32_store).checkpoint("checkpoint-10")
    graph = Path(ck.onnx_path)
    saved = graph.read_bytes()
    graph.write_bytes(b"")  # what a pruned or damaged entry leaves behind
    try:
        assert main(_cli(fp32_store, tmp_path / "out", "--teacher", "checkpoint-10", "--online", "onnx")) == 2
    finally:
        graph.write_bytes(saved)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"logitstore export {ck.source_path}" in err[0], err


# ---------------------------------------------------------------------------- threads
@pytest.mark.parametrize("cpus,omp,want", [(4, None, 4), (4, "2", 2), (2, "8", 2), (3, "x", 3), (3, "0", 3)])
def test_default_threads_are_the_allowed_cpus_capped_by_omp_num_threads(monkeypatch, cpus, omp, want):
    from students.config import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if omp is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert default_threads() == want


def test_threads_set_torch_and_the_onnx_teacher_and_are_recorded(fp32_store, tmp_path, monkeypatch, capsys):
    import students.teacher

    seen: list[int] = []
    real = students.teacher.make_session
    monkeypatch.setattr(students.teacher, "make_session", lambda *a, **kw: seen.append(kw["threads"]) or real(*a, **kw))
    args = ["train", "--store", str(fp32_store), "--out", str(tmp_path / "t"), "--layers", "1", "--max-steps", "2",
            "--batch-size", "16", "--device", "cpu", "--no-progress", "--teacher", "checkpoint-10", "--online", "onnx"]
    assert main(args + ["--threads", "1"]) == 0
    assert torch.get_num_threads() == 1 and seen == [1]
    assert json.loads((tmp_path / "t" / "run_config.json").read_text())["threads"] == 1
    # no flag: the CPUs the process may use, capped by OMP_NUM_THREADS
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert main(args) == 0
    assert seen == [1, 2] and json.loads((tmp_path / "t" / "run_config.json").read_text())["threads"] == 2
    torch.set_num_threads(1)
