"""Early stopping (`--patience N`): the counting rule, a real run that stops where the rule
says, and the restored student, whose validation score is the best one seen."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from logitstore.build import BuildConfig, build_store
from logitstore.store import open_store
from students.config import KDLossConfig
from students.data import LoaderConfig, SplitBatches
from students.early_stop import EarlyStop
from students.train import TrainConfig, evaluate, train

pytestmark = pytest.mark.usefixtures("_one_thread")


@pytest.fixture(scope="module")
def store(_env, tmp_path_factory, tiny_teachers, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("stores") / "es.zarr"
    build_store(BuildConfig(teachers=(tiny_teachers,), data=str(tiny_data), out=out, encoding="fp32", chunk_rows=16))
    return out


def _config(store: Path, out: Path, **kw) -> TrainConfig:
    base = dict(store=str(store), out=str(out), alpha=0.5, teacher="ths", layers=1, batch_size=16, seed=3,
                device="cpu", progress=False, eval_every=1, max_steps=30)
    return TrainConfig(**{**base, **kw})


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_counter_stops_after_patience_evaluations_without_improvement():
    stop = EarlyStop(patience=2)
    # improved, not, improved (resets), not, not -> stop at the 5th evaluation
    assert [stop.update(x) for x in (True, False, True, False, False)] == [False, False, False, False, True]
    assert not any(EarlyStop(None).update(False) for _ in range(50))  # no patience: never stops


def test_patience_must_be_at_least_one(store, tmp_path):
    with pytest.raises(ValueError, match="patience must be >= 1 or unset. Got 0 instead"):
        _config(store, tmp_path / "x", patience=0)


def test_a_run_that_cannot_improve_stops_after_patience_evaluations(store, tmp_path):
    """lr 1e-12 leaves every float32 weight as it was (updates far below the weights' rounding),
    so every evaluation scores the same: the first is the best (ties keep the earlier student),
    evaluations 2 and 3 do not improve, and with patience 2 the run stops at step 3 of 30."""
    result = train(_config(store, tmp_path / "flat", lr=1e-12, patience=2))
    log = _log(tmp_path / "flat")
    assert [x["step"] for x in log] == [1, 2, 3]
    assert len({x["accuracy"] for x in log}) == 1
    assert (result.steps, result.best_step, len(result.losses)) == (3, 1, 3)
    summary = json.loads((tmp_path / "flat" / "summary.json").read_text())
    assert summary["early_stop"] == {"stopped": True, "step": 3, "epoch": 1, "best_step": 1, "best_epoch": 1}
    assert summary["steps"] == 3


def _expected_stop(scores: list[float], patience: int) -> tuple[int, int]:
    """By hand: (index of the evaluation that stops the run, index of the best) for ``scores``."""
    best, bad = 0, 0
    for i in range(1, len(scores)):
        if scores[i] > scores[best]:
            best, bad = i, 0
        else:
            bad += 1
        if bad >= patience:
            return i, best
    return len(scores) - 1, best


def test_a_learning_run_stops_where_the_rule_says_and_keeps_the_best_student(store, tmp_path):
    out = tmp_path / "learn"
    result = train(_config(store, out, lr=2e-3, patience=2, max_steps=40))
    log = _log(out)
    scores = [x["accuracy"] for x in log]
    stop_i, best_i = _expected_stop(scores, 2)
    assert stop_i == len(log) - 1 and result.steps == log[stop_i]["step"] < 40  # it stopped early, here
    assert result.best_step == log[best_i]["step"] and result.best.score("accuracy") == max(scores)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["early_stop"]["stopped"] and summary["early_stop"]["best_step"] == result.best_step
    assert summary["best_validation"]["accuracy"] == max(scores)
    # the saved student is the best one: evaluating it again gives the best score seen
    s = open_store(store)
    batches = SplitBatches(s, s.read_split("validation"), None, LoaderConfig(batch_size=128, pad_id=s.meta.pad_token_id),
                           shuffle=False)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    again = evaluate(model, batches, None, KDLossConfig(), torch.device("cpu"))
    assert again.score("accuracy") == max(scores)
    assert again.ce == pytest.approx(log[best_i]["ce"], abs=1e-5)
