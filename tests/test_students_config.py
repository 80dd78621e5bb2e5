"""Training configs: the sweep's run keys and run_config.json fields stay what older sweep
folders hold (pinned values), so a sweep started before a refactor still resumes; the nested
parts and their one error; the learning-rate schedule; the CLI flags of train and sweep."""
from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from students.config import KDLossConfig, LoaderConfig, OptimConfig
from students.errors import ConfigError
from students.sweep import Point, SweepConfig, run_config, run_key
from students.train import TrainConfig

#: A config that sets every field away from its default (keys computed before the configs were nested).
EVERY_FIELD = dict(store="s.zarr", out="o", distance="mse", temperature=4, student_temperature="1", alpha=0.9,
                   teacher="tll", layers=3, init="/x", epochs=1, batch_size=16, eval_batch_size=64, lr=5e-4,
                   schedule="constant", warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=0.5, seed=3, max_steps=30,
                   eval_every=10, device="cpu", online="onnx", memory_budget_mb=10.0, loader="stream",
                   buffer_chunks=2, progress=False, save_checkpoints=True, threads=3)
FIELDS = ["store", "out", "distance", "temperature", "student_temperature", "alpha", "teacher", "layers", "init",
          "epochs", "batch_size", "eval_batch_size", "lr", "schedule", "warmup_ratio", "weight_decay",
          "max_grad_norm", "seed", "max_steps", "eval_every", "device", "online", "memory_budget_mb", "loader",
          "buffer_chunks", "group_by_length", "progress", "save_checkpoints", "threads", "tail", "beta", "patience"]


def test_run_keys_of_older_sweeps_stay_the_same():
    # lr=1e-4: the default when these keys were pinned (the default is 5e-4 now; the key format is unchanged)
    old = dict(store="s.zarr", out="o", lr=1e-4)
    assert run_key(TrainConfig(**old)) == "1d0d59add118d034"
    assert run_key(TrainConfig(**EVERY_FIELD)) == "cf977034e0ed9c15"  # threads=3 there: not in the key
    assert run_key(TrainConfig(**old, group_by_length=True)) == "78a6cfac958e47b4"
    assert run_key(TrainConfig(**old, patience=None)) == "1d0d59add118d034" != run_key(TrainConfig(**old, patience=2))
    template = SweepConfig("s.zarr", "sw", train=TrainConfig(**old)).template
    cfg = run_config(template, Point("ce", 2.0, "teacher", 0.5, "ths", 2), 1, Path("sw"))
    assert cfg.out == str(Path("sw") / "runs" / "37492e0e0be1a953")


def test_run_config_json_keeps_its_flat_fields():
    cfg = TrainConfig(**EVERY_FIELD)
    assert list(cfg.to_dict()) == FIELDS
    assert TrainConfig.from_dict({**cfg.to_dict(), "checkpoint": "ignored"}) == cfg


# ---------------------------------------------------------------------------- nested parts
def test_the_parts_are_built_once_from_the_flat_fields():
    cfg = TrainConfig(**EVERY_FIELD)
    assert cfg.loss is cfg.loss and cfg.optim is cfg.optim  # kept, not rebuilt (nor re-checked) per use
    assert cfg.loss == KDLossConfig("mse", 4, "1", 0.9) and cfg.loss.tau_s == 1.0
    assert cfg.optim == OptimConfig(epochs=1, max_steps=30, lr=5e-4, schedule="constant", warmup_ratio=0.0,
                                    weight_decay=0.0, max_grad_norm=0.5)
    assert cfg.loader_config(pad_id=7) == LoaderConfig(batch_size=16, seed=3, memory_budget_bytes=10 * 2**20,
                                                       mode="stream", buffer_chunks=2, pad_id=7)
    moved = replace(cfg, alpha=0.25, lr=1e-3)
    assert moved.loss.alpha == 0.25 and moved.optim.lr == 1e-3
    assert pickle.loads(pickle.dumps(cfg)).loss == cfg.loss  # sweeps send configs to worker processes


def test_one_error_lists_the_problems_of_every_part():
    with pytest.raises(ConfigError) as info:
        TrainConfig(store="s", out="o", alpha=2.0, batch_size=0, lr=-1.0, layers=0, device="tpu")
    message, problems = str(info.value), info.value.problems
    assert message.startswith("invalid training config: ") and message.count("invalid") == 1
    for part in ("alpha must be in [0, 1]. Got 2.0 instead", "batch size must be >= 1. Got 0 instead",
                 "learning rate must be > 0. Got -1.0 instead", "layers must be >= 1. Got 0 instead",
                 "device must be auto, cpu, cuda[:N] or mps. Got 'tpu' instead"):
        assert part in message and part in problems, part
    assert len(problems) == 5


# ---------------------------------------------------------------------------- learning-rate schedule
@pytest.mark.parametrize("schedule,factors", [
    ("linear", [0, 1 / 2, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]),
    ("constant", [0, 1 / 2, 1, 1, 1, 1, 1, 1, 1, 1]),
])
def test_the_lr_schedule_is_transformers_warmup_schedule(schedule, factors):
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    from students.train import _optimizer

    def lrs(opt, sched) -> list[list[float]]:
        seen = []
        for _ in range(10):
            seen.append(sched.get_last_lr())  # the lr of this step, one per parameter group
            opt.step()
            sched.step()
        return seen

    optim = OptimConfig(lr=1e-3, schedule=schedule, warmup_ratio=0.2, max_steps=10)  # warm-up: 2 steps
    ours = lrs(*_optimizer(torch.nn.Linear(3, 2), optim, optim.total_steps(steps_per_epoch=4)))
    ref_opt = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    ref = (get_linear_schedule_with_warmup(ref_opt, 2, 10) if schedule == "linear"
           else get_constant_schedule_with_warmup(ref_opt, 2))
    assert [step[0] for step in ours] == [step[0] for step in lrs(ref_opt, ref)]
    assert [step[0] for step in ours] == pytest.approx([1e-3 * f for f in factors])
    assert all(len(set(step)) == 1 for step in ours)  # weight-decay and no-decay groups share the lr


# ---------------------------------------------------------------------------- CLI flags
def _parse(*argv: str):
    from students.cli import _parser

    return _parser().parse_args(list(argv))


def _subparser(command: str):
    from students.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command]


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_every_flag_of_train_and_sweep_is_explained(command, capsys):
    import argparse

    shown = [a for a in _subparser(command)._actions if a.help != argparse.SUPPRESS]  # --debug: the global flag
    assert len(shown) > 20
    for action in shown:
        assert action.help and len(action.help) > 10, action.option_strings
    with pytest.raises(SystemExit):
        _parse(command, "--help")
    text = capsys.readouterr().out
    for action in shown:
        assert any(flag in text for flag in action.option_strings), action.option_strings


def test_train_flags_set_every_field_and_default_to_trainconfig():
    from students.cli import config_kwargs

    args = _parse("train", "--store", "s.zarr", "--out", "o")
    assert TrainConfig(store=args.store, out=args.out, **config_kwargs(args, "train")) == TrainConfig("s.zarr", "o")
    flags = ["--distance", "mse", "--temperature", "4", "--student-temperature", "1", "--alpha", "0.9", "--teacher",
             "tll", "--layers", "3", "--init", "/x", "--epochs", "1", "--batch-size", "16", "--eval-batch-size", "64",
             "--lr", "5e-4", "--schedule", "constant", "--warmup-ratio", "0", "--weight-decay", "0",
             "--max-grad-norm", "0.5", "--seed", "3", "--max-steps", "30", "--eval-every", "10", "--device", "cpu",
             "--online", "onnx", "--memory-budget-mb", "10", "--loader", "stream", "--no-progress",
             "--save-checkpoints", "--group-by-length", "--threads", "3"]
    args = _parse("train", "--store", "s.zarr", "--out", "o", *flags)
    cfg = TrainConfig(store=args.store, out=args.out, **config_kwargs(args, "train"))
    assert cfg == TrainConfig(**{**EVERY_FIELD, "buffer_chunks": 4, "group_by_length": True})


def test_the_default_learning_rate_is_the_measured_one():
    """5e-4 (docs/results.md, section 5), for train and every sweep run, shown in --help."""
    assert _parse("train", "--store", "s", "--out", "o").lr == 5e-4 == _parse("sweep", "--store", "s").lr
    assert TrainConfig("s", "o").optim.lr == 5e-4
    assert "(default: 0.0005)" in " ".join(_subparser("train").format_help().split())


def test_sweep_shares_the_training_flags_but_not_the_kd_ones():
    from students.cli import OPTIONS, config_kwargs
    from students.sweep import SPACE_KEYS

    args = _parse("sweep", "--store", "s.zarr", "--out", "sw", "--lr", "5e-4", "--init", "/x", "--alpha", "0.25,1")
    kwargs = config_kwargs(args, "sweep")
    assert kwargs["lr"] == 5e-4 and kwargs["init"] == "/x"
    assert not {"distance", "temperature", "student_temperature", "alpha", "teacher", "layers", "seed"} & set(kwargs)
    assert args.alpha == "0.25,1"  # a space value, parsed by load_space
    assert TrainConfig(store="s.zarr", out="sw", progress=False, **kwargs) == replace(
        SweepConfig("s.zarr", "sw").template, lr=5e-4, init="/x")
    sweep_flags = {a.dest for a in _subparser("sweep")._actions}
    assert set(SPACE_KEYS) <= sweep_flags and {o.field for o in OPTIONS if not o.train_only} <= sweep_flags
