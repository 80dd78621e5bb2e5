"""Causal LM, the rest of issue 12: sampled targets (--sample N) checked against PyTorch's full
distribution, --runtime torch equal to ONNX, reruns and resumes giving identical draws, the
older-reader refusal, block-wise repair of LM entries, and students trained on draws."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli, write_lm_splits
from logitstore import open_store
from logitstore.sampled import decode_sampled, encode_sampled, row_draws
from logitstore.tasks import IGNORE, get_task

DRAWS, TEMPS = 12, (1.0, 2.0)
SAMPLED = ("ids", "counts", "logp", "lse")


def _args(run: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--task", "causal-lm", "--teacher", str(run), "--data", str(data), "--out", str(out),
            "--sample", str(DRAWS), "--sample-temperature", "2", "--temperatures", "1", "--max-length", "32",
            "--chunk-rows", "4", "--threads", "1", *extra]


def _entry(path: Path, ck: str, split: str, names: tuple[str, ...] = SAMPLED) -> dict[str, np.ndarray]:
    return open_store(path).read_entry(ck, split, names)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_lm_splits(tmp_path_factory.mktemp("lm-sampled-data"), {"train": 40, "validation": 16})


@pytest.fixture(scope="module")
def sampled_store(lm_run, data, _env, _one_thread) -> Path:
    from logitstore.cli import main

    out = data.parent / "sampled.zarr"
    assert main(_args(lm_run, data, out)) == 0
    return out


# ---------------------------------------------------------------------------- encoding
def test_sampled_encoding_keeps_distinct_ids_counts_and_log_probs():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, size=(30, 50)).astype(np.float32)  # (T, V)
    draws = rng.integers(0, 50, size=(30, 9))  # (T, N) with repeats
    lse = np.log(np.exp(z.astype(np.float64)).sum(1, keepdims=True)).astype(np.float32)
    step = 1 / 16
    enc = encode_sampled(draws, np.take_along_axis(z, draws, 1), z.max(1), lse, (1.0,), step, 50)
    got = decode_sampled(enc.ids, enc.counts, enc.logp, enc.lse, step)
    for t in range(30):
        ids, counts = np.unique(draws[t], return_counts=True)
        k = len(ids)
        assert got.ids[t, :k].tolist() == ids.tolist() and got.counts[t, :k].tolist() == counts.tolist()
        assert (got.counts[t, k:] == 0).all() and (enc.ids[t, k:] == 0).all()
        exact = z[t, ids] - np.log(np.exp(z[t].astype(np.float64)).sum())
        assert np.abs(got.logp()[t, :k] - exact).max() <= step / 2 + 1e-5
    assert (got.counts.sum(1) == 9).all()


# ---------------------------------------------------------------------------- build vs PyTorch
def test_draws_are_the_inverse_cdf_of_pytorch_full_distribution(sampled_store, lm_run):
    """Each stored draw is the id whose CDF interval (PyTorch's full softmax at the sampling
    temperature, float64) holds the row's seeded uniform number; kept log-probs are exact up to
    the quantisation; nll and val_loss come from the full logits."""
    import torch
    from transformers import AutoModelForCausalLM

    store = open_store(sampled_store)
    assert store.meta.task == "causal-lm-sampled" and store.meta.format_version == 4
    assert store.meta.sample == DRAWS and store.meta.temperatures == [1.0, 2.0] and store.meta.top_k is None
    split = store.read_split("validation")
    got = get_task("causal-lm-sampled").read_topk(store, "checkpoint-1", "validation")
    model = AutoModelForCausalLM.from_pretrained(lm_run / "checkpoint-1", attn_implementation="eager").eval()
    want_ids, z_all = [], []
    for i in range(len(split)):
        with torch.no_grad():
            z = model(torch.from_numpy(split.row(i).astype(np.int64))[None], use_cache=False).logits[0].double()
        cdf = torch.softmax(z / 2.0, -1).cumsum(-1).numpy()  # (T, V)
        u = row_draws(0, "validation", i, len(z), DRAWS).astype(np.float64)  # (T, N)
        want_ids.append(np.stack([np.searchsorted(c, x * c[-1], side="right") for c, x in zip(cdf, u)]))
        z_all.append(z)
    want = np.concatenate(want_ids)  # (T, N) per draw
    counts = np.zeros_like(got.counts)
    for t, row in enumerate(want):
        ids, c = np.unique(row, return_counts=True)
        same = got.ids[t, :len(ids)].tolist() == ids.tolist() and got.counts[t, :len(ids)].tolist() == c.tolist()
        counts[t] = same
    assert counts.mean() == 1.0  # every token's draws equal the float64 reference (no draw on a boundary here)
    z = torch.cat(z_all)
    for c, t in enumerate((1.0, 2.0)):
        dense = torch.log_softmax(z / t, -1).numpy()
        m = got.counts > 0
        assert np.abs((got.logp(c, t) - np.take_along_axis(dense, got.ids, 1))[m]).max() <= store.meta.logp_step / 2 / t + 1e-4
    m = split.labels != IGNORE
    ce = torch.nn.functional.cross_entropy(z[torch.from_numpy(m)], torch.from_numpy(split.labels[m])).item()
    ck = store.checkpoint("checkpoint-1")
    assert ck.val_loss == pytest.approx(ce, abs=1e-4) and ck.encoding == "sample-q8" and ck.runtime == "onnx"


def test_runtime_torch_equals_onnx_for_topk_and_sampled(sampled_store, lm_run, data, tmp_path):
    from logitstore.cli import main

    out = tmp_path / "torch.zarr"
    assert main(_args(lm_run, data, out, "--runtime", "torch")) == 0
    for ck in ("checkpoint-1", "checkpoint-2"):
        meta = open_store(out).checkpoint(ck)
        assert (meta.runtime, meta.provider, meta.onnx_path) == ("torch", "torch", None)
        for split in ("train", "validation"):
            a, b = _entry(sampled_store, ck, split), _entry(out, ck, split)
            assert all(np.array_equal(a[k], b[k]) for k in ("ids", "counts", "logp")), (ck, split)
            assert np.abs(a["lse"] - b["lse"]).max() < 1e-5
    topk = ["--top-k", "6"]
    plain = [a for a in _args(lm_run, data, tmp_path / "x") if a not in ("--sample", str(DRAWS))]
    for runtime, name in (("onnx", "o.zarr"), ("torch", "t.zarr")):
        args = [tmp_path / name if a == str(tmp_path / "x") else a for a in plain]
        assert main([str(a) for a in args] + topk + ["--runtime", runtime]) == 0
    a, b = _entry(tmp_path / "o.zarr", "checkpoint-1", "train", ("ids", "logp", "lse")), \
        _entry(tmp_path / "t.zarr", "checkpoint-1", "train", ("ids", "logp", "lse"))
    assert np.array_equal(a["ids"], b["ids"]) and np.abs(a["logp"].astype(int) - b["logp"]).max() <= 1
    assert np.abs(a["lse"] - b["lse"]).max() < 1e-5
    assert open_store(tmp_path / "t.zarr").checkpoint("checkpoint-1").runtime == "torch"


# ---------------------------------------------------------------------------- seeded: rerun, resume
def test_other_batching_and_a_resume_give_identical_draws(sampled_store, lm_run, data, tmp_path):
    """The draws are a function of (seed, split, row): another --token-budget (other batches)
    gives the same arrays, and so does a build resumed from its middle."""
    from logitstore.cli import main

    out = tmp_path / "b.zarr"
    assert main(_args(lm_run, data, out, "--token-budget", "32")) == 0
    entry = out / "checkpoints" / "checkpoint-1" / "train"
    meta = json.loads((entry / "zarr.json").read_text())
    meta["attributes"]["logitstore"] |= {"rows_done": 4, "complete": False}  # as if killed after one block:
    (entry / "zarr.json").write_text(json.dumps(meta))
    records = sorted((entry / "blocks" / "c").iterdir(), key=lambda p: int(p.name))  # format 4: block records
    assert len(records) > 2
    for p in records[1:]:
        p.unlink()
    ck = out / "checkpoints" / "checkpoint-1" / "zarr.json"
    cmeta = json.loads(ck.read_text())
    cmeta["attributes"]["logitstore"]["complete"] = False
    ck.write_text(json.dumps(cmeta))
    assert main(_args(lm_run, data, out)) == 0
    for c in ("checkpoint-1", "checkpoint-2"):
        for split in ("train", "validation"):
            a, b = _entry(sampled_store, c, split), _entry(out, c, split)
            assert all(np.array_equal(a[k], b[k]) for k in SAMPLED), (c, split)


# ---------------------------------------------------------------------------- format
def test_older_reader_refuses_a_sampled_store_in_one_line(sampled_store, monkeypatch):
    from logitstore.errors import FormatVersionError
    from logitstore.tasks import TASKS

    from logitstore import format as fmt

    with monkeypatch.context() as m:  # a format-3 reader (sampled targets, no block records)
        m.setattr(fmt, "READABLE_VERSIONS", (1, 2, 3))
        with pytest.raises(FormatVersionError, match="format version 4 is not readable") as info:
            open_store(sampled_store)
        assert "\n" not in str(info.value)
    monkeypatch.delitem(TASKS, "causal-lm-sampled")  # a format-4 reader that knows only the top-k layout
    with pytest.raises(FormatVersionError, match="store task 'causal-lm-sampled' is not known") as info:
        open_store(sampled_store)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("flags, needle", [
    (("--sample", "256"), "--sample must be between 1 and 255"),
    (("--sample-temperature", "0"), "--sample-temperature > 0"),
    (("--runtime", "jax"), "invalid choice"),
])
def test_bad_sample_settings_are_one_line_errors(flags, needle, lm_run, data, tmp_path, capsys, _env):
    args = _args(lm_run, data, tmp_path / "s.zarr")
    if flags[0] in args:
        args[args.index(flags[0]) + 1] = flags[1]
    else:
        args += list(flags)
    if flags[0] == "--runtime":
        with pytest.raises(SystemExit):
            run_cli(capsys, *args)
        return
    code, line = run_cli(capsys, *args)
    assert_one_line_error(code, line, needle)
    assert not (tmp_path / "s.zarr").exists()


# ---------------------------------------------------------------------------- block-wise repair
@pytest.mark.parametrize("mode", [("--top-k", "6"), ("--sample", str(DRAWS)),
                                  ("--sample", str(DRAWS), "--runtime", "torch")])
def test_repair_recomputes_only_the_damaged_block(mode, lm_run, data, tmp_path, capsys, monkeypatch, _env):
    """Entries in chunks of 32 tokens (blocks of 4 rows = 128 tokens): one damaged chunk is one
    block recomputed, and every chunk file's bytes equal an undamaged build's."""
    from logitstore import writer
    from logitstore.verify import scan

    monkeypatch.setattr(writer, "TOKEN_LOGIT_CHUNK", 32)
    args = [a for a in _args(lm_run, data, tmp_path / "X") if a not in ("--sample", str(DRAWS))] + list(mode)
    ref, out = tmp_path / "ref.zarr", tmp_path / "out.zarr"
    for target in (ref, out):
        assert run_cli(capsys, *[str(target) if a == str(tmp_path / "X") else a for a in args])[0] == 0
    entry = out / "checkpoints" / "checkpoint-2" / "train"
    chunk = sorted(p for p in (entry / "logp").rglob("*") if p.is_file() and p.name != "zarr.json")[5]
    chunk.write_bytes(chunk.read_bytes()[:-5])
    code, _ = run_cli(capsys, "verify", str(out))
    assert code == 1
    rows = open_store(ref).split_meta("train").rows
    capsys.readouterr()
    from logitstore.cli import main

    rerun = [a for a in args if a not in ("--runtime", "torch")]  # the entry's recorded runtime repairs it
    assert main([str(out) if a == str(tmp_path / "X") else a for a in rerun]) == 0
    said = "".join(capsys.readouterr())
    assert "checkpoint-2: repaired 1 block" in " ".join(said.split()), said
    assert rows > 8 and scan(out).clean

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in (root / "checkpoints").rglob("*")
                if p.is_file() and p.name != "zarr.json"}

    assert files(ref) == files(out)


def test_repair_of_a_damaged_block_record_and_chunk_gives_the_undamaged_bytes(sampled_store, lm_run, data, tmp_path,
                                                                              capsys):
    """Format 4 on a sampled store: a damaged block record (blocks/c/1) and a damaged ids chunk
    are rewritten through blocks.write_block (the build's block path), each row drawing with
    its own seed, so every chunk file equals the undamaged build's."""
    import shutil

    from logitstore.cli import main
    from logitstore.verify import scan

    out = tmp_path / "damaged.zarr"
    shutil.copytree(sampled_store, out)
    entry = out / "checkpoints" / "checkpoint-1" / "train"
    record = entry / "blocks" / "c" / "1"
    record.write_bytes(record.read_bytes()[:-3])
    val = entry.parent / "validation"  # its one 65,536-token chunk: all 3 blocks (9 rows) of the split
    chunk = next(p for p in (val / "ids").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:-5])
    assert not scan(out, read=True).clean
    capsys.readouterr()
    assert main(_args(lm_run, data, out)) == 0
    said = " ".join("".join(capsys.readouterr()).split())
    assert "checkpoint-1: repaired 4 blocks" in said and "rebuilt whole" not in said, said  # 1 + 3
    assert scan(out, read=True).clean

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in (root / "checkpoints").rglob("*")
                if p.is_file() and p.name != "zarr.json"}

    assert files(sampled_store) == files(out)


# ---------------------------------------------------------------------------- students
def test_students_train_on_draws_and_refuse_what_draws_cannot_serve(sampled_store, tmp_path, capsys):
    from students.cli import main as students_main
    from students.train import TrainConfig, train

    base = dict(store=str(sampled_store), out=str(tmp_path / "s"), alpha=0.5, temperature=2.0, layers=1, epochs=1,
                batch_size=4, eval_batch_size=8, progress=False, device="cpu", seed=3, max_steps=3)
    r = train(TrainConfig(**base))
    assert len(r.losses) == 3 and all(np.isfinite(r.losses))
    assert {"accuracy", "perplexity", "top1_agreement", "kl"} <= set(r.best.to_dict())
    r1 = train(TrainConfig(**(base | {"temperature": 1.0, "out": str(tmp_path / "t1")})))  # importance-weighted
    assert all(np.isfinite(r1.losses))
    for flags, needle in ((["--distance", "rkl"], "sampled teacher targets"), (["--temperature", "3"], "sampled")):
        code = students_main(["train", "--store", str(sampled_store), "--out", str(tmp_path / "x"), "--layers", "1",
                              "--no-progress", "--device", "cpu", *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("error: ") and needle in err[-1], err
