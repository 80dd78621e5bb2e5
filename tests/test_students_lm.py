"""Causal-LM students (issue 12): `students train` on a top-k store, cached == online, the
temperature refusal, metrics (with ECE and Brier, issue 14: equal to logitstore.calibration
on the full logits, at any chunk) and the saved student."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_lm_splits
from students.cli import main as students_main
from students.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("_one_thread")


@pytest.fixture(scope="module")
def lm_store(lm_run, tmp_path_factory, _env) -> Path:
    from logitstore.cli import main

    root = tmp_path_factory.mktemp("lm-students")
    data = write_lm_splits(root / "data", {"train": 40, "validation": 12, "test": 12})
    out = root / "s.zarr"
    assert main(["build", "--task", "causal-lm", "--teacher", str(lm_run), "--data", str(data), "--out", str(out),
                 "--top-k", "6", "--temperatures", "1,2", "--max-length", "24", "--threads", "1"]) == 0
    return out


def _cfg(store: Path, out: Path, **kw) -> TrainConfig:
    base = dict(store=str(store), out=str(out), alpha=0.5, temperature=2.0, layers=1, epochs=1, batch_size=4,
                eval_batch_size=8, progress=False, device="cpu", seed=3)
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize("online", ["onnx", "pytorch"])
def test_cached_equals_online(lm_store, tmp_path, online):
    cached = train(_cfg(lm_store, tmp_path / "cached"))
    other = train(_cfg(lm_store, tmp_path / online, online=online))
    assert cached.losses == pytest.approx(other.losses, rel=1e-5, abs=1e-6)
    a, b = cached.best.to_dict(), other.best.to_dict()
    assert a.pop("split") == b.pop("split")
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("distance", ["ce", "rkl", "gjsd", "tvd", "mse"])
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_every_distance_trains_and_reports_lm_metrics(lm_store, tmp_path, distance, tail):
    r = train(_cfg(lm_store, tmp_path / "s", distance=distance, tail=tail, max_steps=3,
                   student_temperature="1"))
    assert len(r.losses) == 3 and all(x == x for x in r.losses)
    for key in ("accuracy", "perplexity", "ece", "brier", "top1_agreement", "kl", "ce", "kd"):
        assert key in r.best.to_dict()
    assert r.best.to_dict()["perplexity"] > 1 and r.test is not None
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["metric"] == "accuracy"


def test_saved_student_is_a_causal_lm_with_fewer_layers(lm_store, tmp_path):
    from transformers import AutoModelForCausalLM

    train(_cfg(lm_store, tmp_path / "s", max_steps=2))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert model.config.num_hidden_layers == 1
    assert (tmp_path / "s" / "tokenizer.json").exists()


def test_a_temperature_without_stored_lse_is_refused_in_one_line(lm_store, tmp_path, capsys):
    code = students_main(["train", "--store", str(lm_store), "--out", str(tmp_path / "s"), "--temperature", "4",
                          "--layers", "1", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "no stored log-sum-exp" in err[-1], err
    r = train(_cfg(lm_store, tmp_path / "r", temperature=4.0, tail="renormalize", max_steps=2))  # needs no lse
    assert len(r.losses) == 2


def test_sparse_distances_are_refused_on_dense_stores(tiny_teachers, tiny_data, tmp_path, _env):
    from logitstore.build import BuildConfig, build_store
    from students.errors import ConfigError

    out = tmp_path / "dense.zarr"
    build_store(BuildConfig(teachers=(tiny_teachers / "checkpoint-10",), data=str(tiny_data), out=out, threads=1))
    with pytest.raises(ConfigError, match="causal-LM stores only"):
        train(_cfg(out, tmp_path / "s", distance="rkl", max_steps=1))
    with pytest.raises(ConfigError, match="causal-LM stores only"):
        train(_cfg(out, tmp_path / "t", tail="renormalize", max_steps=1))


def test_a_grid_sweep_runs_on_a_causal_lm_store(lm_store, tmp_path):
    from students.sweep import SweepConfig, SweepSpace, run_sweep

    space = SweepSpace(distance=("ce", "tvd"), temperature=(2.0,), student_temperature=("teacher",), alpha=(0.5,),
                       teacher=("tll",), layers=(1,), seeds=(0,))
    template = _cfg(lm_store, tmp_path / "unused", max_steps=2)
    result = run_sweep(SweepConfig(str(lm_store), str(tmp_path / "sweep"), "grid", space, 1, template))
    assert result.ran >= 2
    assert all(r["val_eval"]["perplexity"] > 1 for r in result.records.values())
    assert all(0 <= r[s]["ece"] <= 1 and 0 <= r[s]["brier"] <= 2 for r in result.records.values()
               for s in ("val_eval", "test_eval"))


def test_the_sweep_report_shows_lm_students_ece(lm_store, tmp_path):
    """Calibration (issue 14) on a causal-LM sweep: the report's ECE column holds each
    configuration's test ECE from its runs' records, as for the other tasks."""
    from students.report import load_report, markdown
    from students.sweep import SweepConfig, SweepSpace, run_sweep

    space = SweepSpace(distance=("ce",), temperature=(2.0,), student_temperature=("teacher",), alpha=(0.0, 0.5),
                       teacher=("tll",), layers=(1,), seeds=(0,))
    result = run_sweep(SweepConfig(str(lm_store), str(tmp_path / "sweep"), "grid", space, 1,
                                   _cfg(lm_store, tmp_path / "unused", max_steps=2)))
    report = load_report(tmp_path / "sweep")
    md = markdown(report)
    rows = [r for rs in report.rows.values() for r in rs]
    assert len(rows) >= 2  # the two points and the sweep's baselines
    for row in rows:
        want = [rec["test_eval"]["ece"] for rec in row.records]
        assert row.calibration("ece") == ("test", pytest.approx(want))
        assert f"| {want[0]:.4f} (test) |" in md
    assert all(f"| {r['test_eval']['ece']:.4f} (test) |" in md for r in result.records.values())


def test_a_student_with_another_tokenizer_is_refused_in_one_line(lm_store, lm_run, tmp_path, capsys):
    """--init with the teacher's weights but another tokenizer (same vocabulary size, tokens
    reordered): refused before training, in one line; the teacher's own folder is accepted."""
    import shutil

    from transformers import AutoTokenizer

    other = tmp_path / "other"
    shutil.copytree(lm_run / "checkpoint-1", other)
    tok = AutoTokenizer.from_pretrained(other)
    vocab = tok.get_vocab()
    words = sorted(w for w in vocab if not w.startswith("<"))
    swapped = json.loads((other / "tokenizer.json").read_text())
    a, b = words[0], words[1]
    swapped["model"]["vocab"][a], swapped["model"]["vocab"][b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(swapped))
    code = students_main(["train", "--store", str(lm_store), "--out", str(tmp_path / "s"), "--init", str(other),
                          "--layers", "1", "--no-progress", "--device", "cpu", "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "another tokenizer than store" in err[0], err
    assert not (tmp_path / "s" / "summary.json").exists()
    r = train(_cfg(lm_store, tmp_path / "same", init=str(lm_run / "checkpoint-1"), max_steps=1))
    assert len(r.losses) == 1


def test_hidden_states_and_head_equal_the_models_logits(lm_run):
    """The chunked path (base model, then the LM head per chunk) sees the same logits as
    the model's own forward."""
    import torch
    from transformers import AutoModelForCausalLM

    from students.data import Batch
    from students.lm import hidden_states, lm_head

    model = AutoModelForCausalLM.from_pretrained(lm_run / "checkpoint-1").eval()
    ids = torch.randint(3, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    am[1, 6:] = 0
    batch = Batch(rows=torch.arange(2), input_ids=ids, attention_mask=am, token_type_ids=torch.zeros_like(ids),
                  labels=ids, teacher_logits=None)
    mask = am.bool()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=am, use_cache=False).logits[mask]  # (N, V)
        got = lm_head(model)(hidden_states(model, batch, mask))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_training_steps_do_not_depend_on_the_loss_chunk(lm_store, tmp_path, monkeypatch):
    """A run with the LM head applied 3 tokens at a time trains the same student as one
    with every token in one chunk (losses and validation metrics)."""
    import functools

    import students.lm as lm
    from students.sparse_loss import SparseLossConfig

    runs = []
    for chunk in (3, 100_000):
        monkeypatch.setattr(lm, "SparseLossConfig", functools.partial(SparseLossConfig, chunk=chunk))
        runs.append(train(_cfg(lm_store, tmp_path / f"c{chunk}", max_steps=3, distance="gjsd")))
    assert runs[0].losses == pytest.approx(runs[1].losses, rel=1e-5, abs=1e-6)
    a, b = runs[0].best.to_dict(), runs[1].best.to_dict()
    assert a.pop("split") == b.pop("split")
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6) and {"ece", "brier"} <= a.keys()
    assert json.loads((tmp_path / "c3" / "run_config.json").read_text())["loss"]["chunk"] == 3


def test_a_sweep_tunes_tail_and_beta_on_a_causal_lm_store(lm_store, tmp_path):
    """`students sweep --tail bucket,renormalize --beta 0.3,0.7` with gjsd: runs differ by
    tail and beta (different keys and results); beta collapses for other distances."""
    from students.sweep import load_results

    code = students_main(["sweep", "--store", str(lm_store), "--out", str(tmp_path / "w"), "--strategy", "grid",
                          "--distance", "gjsd,tvd", "--temperature", "2", "--student-temperature", "teacher",
                          "--alpha", "0.5", "--teacher", "tll", "--layers", "1", "--seeds", "1",
                          "--tail", "bucket,renormalize", "--beta", "0.3,0.7", "--max-steps", "2",
                          "--batch-size", "4", "--eval-batch-size", "8", "--device", "cpu"])
    assert code == 0
    recs = load_results(tmp_path / "w")
    points = {(r["point"]["distance"], r["point"].get("tail", "bucket"), r["point"].get("beta", 0.5))
              for r in recs.values() if r["point"]["alpha"] > 0}
    assert points >= {("gjsd", "bucket", 0.3), ("gjsd", "renormalize", 0.7), ("tvd", "renormalize", 0.5)}
    assert ("tvd", "bucket", 0.3) not in points  # beta is canonical (0.5) outside gjsd
    cfgs = {json.dumps([c["distance"], c["tail"], c["beta"]]) for c in
            (json.loads((tmp_path / "w" / "runs" / k / "run_config.json").read_text()) for k in recs)}
    assert json.dumps(["gjsd", "renormalize", 0.3]) in cfgs
    gj = [r["val_eval"]["kd"] for r in recs.values() if r["point"]["distance"] == "gjsd"]
    assert len(set(gj)) == len(gj) == 4  # four gjsd runs, four different KD distances


def _full_logit_calibration(student_dir: Path, split) -> dict[str, float]:
    """logitstore.calibration of the saved student's whole (T, V) logits, one row at a time
    and in float64, over the split's tokens that have a next token."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from logitstore.calibration import calibration
    from logitstore.tasks import IGNORE

    model = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    rows = []
    with torch.no_grad():
        for a, b in zip(split.offsets[:-1], split.offsets[1:]):
            ids = torch.from_numpy(split.input_ids[a:b].astype(np.int64))[None]  # (1, t)
            rows.append(model(input_ids=ids, use_cache=False).logits[0].double().numpy())  # (t, V)
    z, m = np.concatenate(rows), split.labels != IGNORE  # (T, V), (T,)
    return calibration(z[m], split.labels[m])


def test_lm_students_ece_and_brier_equal_the_full_logits_at_any_chunk(lm_store, tmp_path):
    """Calibration (issue 14): the ``ece`` and ``brier`` that `students train` records in
    summary.json for a causal-LM student equal logitstore.calibration on the student's full
    logits of the same tokens; evaluate_lm gives them with the LM head 3 tokens at a time
    and with one chunk."""
    from dataclasses import replace

    import torch
    from transformers import AutoModelForCausalLM

    from logitstore.store import open_store
    from students.data import SplitBatches
    from students.lm import evaluate_lm
    from students.sparse_loss import SparseLossConfig

    assert students_main(["train", "--store", str(lm_store), "--out", str(tmp_path / "s"), "--layers", "1",
                          "--alpha", "0.5", "--max-steps", "4", "--batch-size", "4", "--seed", "3",
                          "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    store = open_store(lm_store)
    for split, got in ((store.meta.validation_split, summary["best_validation"]), ("test", summary["test"])):
        want = _full_logit_calibration(tmp_path / "s", store.read_split(split))
        assert 0 < want["ece"] < 1 and 0 < want["brier"] < 2
        assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-6)
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
    split = store.read_split("test")
    loader = replace(_cfg(lm_store, tmp_path / "unused").loader_config(store.meta.pad_token_id), batch_size=5)
    for chunk in (3, 100_000):
        res = evaluate_lm(student, SplitBatches(store, split, None, loader, shuffle=False, read_logits=False), None,
                          SparseLossConfig(chunk=chunk), torch.device("cpu"))
        assert {k: res.scores[k] for k in ("ece", "brier")} == pytest.approx(
            {k: summary["test"][k] for k in ("ece", "brier")}, abs=1e-6)
