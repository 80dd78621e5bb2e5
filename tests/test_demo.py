"""The README's first command, at reduced size: the real MiniLM-L6 teacher fine-tuned on
300 real Rotten Tomatoes snippets, the store, a student and a greedy sweep, end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from logitstore import open_store

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[1]


def test_demo_end_to_end_at_reduced_size(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, DEMO_SKIP_SETUP="1", EXAMPLES="300", TEACHER_EPOCHS="1", TEACHER_EVALS="2",
               STUDENT_LAYERS="1", SWEEP_TEMPERATURES="2", SWEEP_ALPHAS="0.5",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), str(out)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == f"report: {out}/sweep"

    store = open_store(out / "logits.zarr")
    assert {s: store.split_meta(s).rows for s in store.split_names()} == {"train": 240, "validation": 30, "test": 30}
    names = store.checkpoint_names()
    assert len(names) == 2 and all(n.startswith("checkpoint-") for n in names)
    for c in store.checkpoints():
        assert c.complete and c.parity_max_abs_err < 1e-3 and 0 <= c.val_score <= 1 and c.val_loss > 0

    teacher = json.loads((out / "teacher" / "summary.json").read_text())
    student = json.loads((out / "students" / "L1-kd" / "summary.json").read_text())
    for s in (teacher, student):
        assert 0 <= s["best_validation"]["accuracy"] <= 1 and 0 <= s["test"]["accuracy"] <= 1
    assert student["checkpoint"] in names
    records = [json.loads(x) for x in (out / "sweep" / "results.jsonl").read_text().splitlines()]
    assert len(records) >= 5 and {r["point"]["layers"] for r in records} == {1}
    assert any(r["point"]["alpha"] == 0 for r in records)  # the no-KD baseline
    for name in ("report.md", "rewards.png", "metrics.png"):
        assert (out / "sweep" / name).stat().st_size > 500

    again = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), str(out)], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") == 5  # token ids, teacher, store, student, sweep


def test_ner_demo_end_to_end_at_reduced_size(tmp_path):
    """`scripts/demo.sh --task ner`: the real MiniLM-L6 as a token classifier fine-tuned on
    200 real WNUT-16 tweets, per-token logits in the store, a student and a sweep."""
    out = tmp_path / "ner"
    env = dict(os.environ, DEMO_SKIP_SETUP="1", EXAMPLES="200", TEACHER_EPOCHS="1", TEACHER_EVALS="2",
               STUDENT_LAYERS="1", SWEEP_TEMPERATURES="2", SWEEP_ALPHAS="0.5",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--task", "ner", str(out)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == f"report: {out}/sweep"

    store = open_store(out / "logits.zarr")
    assert store.meta.task == "token-classification" and store.meta.layout == "token"
    assert len(store.meta.label_names) == 21 and store.meta.label_names[0] == "O"
    assert {s: store.split_meta(s).rows for s in store.split_names()} == {"train": 160, "validation": 20, "test": 20}
    val = store.read_split("validation")
    for c in store.checkpoints():
        assert c.complete and c.layout == "token" and c.metric == "f1"
        assert c.parity_max_abs_err < 1e-3 and 0 <= c.val_score <= 1 and c.val_loss > 0
        assert store.read_logits(c.name, "validation").shape == (int(val.offsets[-1]), 21)
    student = json.loads((out / "students" / "L1-kd" / "summary.json").read_text())
    assert student["metric"] == "f1" and 0 <= student["best_validation"]["f1"] <= 1
    assert 0.5 < student["best_validation"]["accuracy"] <= 1  # token accuracy: most words are O
    for name in ("report.md", "rewards.png", "metrics.png"):
        assert (out / "sweep" / name).stat().st_size > 500
