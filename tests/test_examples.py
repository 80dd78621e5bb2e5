"""examples/trainer_teacher.py: a teacher fine-tuned with the transformers 5 Trainer leaves an
output folder that `logitstore build --teacher` takes as it is, and the store's validation
loss of each checkpoint is the Trainer's eval_loss."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import make_teacher, write_csv_splits
from logitstore.cli import main as logitstore
from logitstore.store import open_store

ROOT = Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("trainer_teacher", ROOT / "examples" / "trainer_teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_trainer_output_folder_builds_a_store(tmp_path, _one_thread):
    pretrained = make_teacher(tmp_path / "pretrained", seed=5)  # stands for a pretrained encoder
    data = write_csv_splits(tmp_path / "data", {"train": 48, "validation": 24})
    out = tmp_path / "teacher"
    assert _example().main(["--model", str(pretrained), "--data", str(data), "--out", str(out), "--max-steps", "4",
                            "--eval-steps", "2", "--batch-size", "16", "--lr", "1e-3"]) == 0
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    assert not list(out.glob("checkpoint-*/*.pt")) and not list(out.glob("checkpoint-*/*.pth"))  # no pickles

    assert logitstore(["build", "--teacher", str(out), "--data", str(data), "--out", str(tmp_path / "s.zarr"),
                       "--dtype", "fp32"]) == 0
    store = open_store(tmp_path / "s.zarr")
    assert sorted(c.name for c in store.checkpoints()) == checkpoints
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    eval_loss = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    for name in checkpoints:
        assert store.select(name).val_loss == pytest.approx(eval_loss[int(name.split("-")[1])], abs=1e-4), name
