"""Training configs: the sweep's run keys and run_config.json fields stay what older sweep
folders hold (pinned values), so a sweep started before a refactor still resumes."""
from __future__ import annotations

from pathlib import Path

from students.sweep import Point, SweepConfig, run_config, run_key
from students.train import TrainConfig

#: A config that sets every field away from its default (keys computed before the configs were nested).
EVERY_FIELD = dict(store="s.zarr", out="o", distance="mse", temperature=4, student_temperature="1", alpha=0.9,
                   teacher="tll", layers=3, init="/x", epochs=1, batch_size=16, eval_batch_size=64, lr=5e-4,
                   schedule="constant", warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=0.5, seed=3, max_steps=30,
                   eval_every=10, device="cpu", online="onnx", memory_budget_mb=10.0, loader="stream",
                   buffer_chunks=2, progress=False, save_checkpoints=True)
FIELDS = ["store", "out", "distance", "temperature", "student_temperature", "alpha", "teacher", "layers", "init",
          "epochs", "batch_size", "eval_batch_size", "lr", "schedule", "warmup_ratio", "weight_decay",
          "max_grad_norm", "seed", "max_steps", "eval_every", "device", "online", "memory_budget_mb", "loader",
          "buffer_chunks", "group_by_length", "progress", "save_checkpoints"]


def test_run_keys_of_older_sweeps_stay_the_same():
    assert run_key(TrainConfig(store="s.zarr", out="o")) == "1d0d59add118d034"
    assert run_key(TrainConfig(**EVERY_FIELD)) == "cf977034e0ed9c15"
    assert run_key(TrainConfig(store="s.zarr", out="o", group_by_length=True)) == "78a6cfac958e47b4"
    template = SweepConfig("s.zarr", "sw").template
    cfg = run_config(template, Point("ce", 2.0, "teacher", 0.5, "ths", 2), 1, Path("sw"))
    assert cfg.out == str(Path("sw") / "runs" / "37492e0e0be1a953")


def test_run_config_json_keeps_its_flat_fields():
    cfg = TrainConfig(**EVERY_FIELD)
    assert list(cfg.to_dict()) == FIELDS
    assert TrainConfig.from_dict({**cfg.to_dict(), "checkpoint": "ignored"}) == cfg
