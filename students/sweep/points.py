"""Points of a sweep and their runs: a Point (one KD configuration and student size), the
TrainConfig and key of its run with one seed, what a run reports (RunOutcome) and the
statistics of a point over its seeds (PointStats).

Runs are keyed by a hash of their full training config (KD parameters, seed, training
options; not where the run is written), so a rerun of a sweep finds the runs it already has.
"""
from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from students.config import TrainConfig

RUNS_DIR = "runs"
# TrainConfig fields that name where a run lives, how it prints or how fast it runs, not what it computes.
NOT_IN_KEY = ("store", "out", "progress", "threads")
_ADDED_OPTIONS = {"group_by_length": False, "tail": "bucket", "beta": 0.5, "patience": None}  # TrainConfig fields newer than the key format, and their defaults


@dataclass(frozen=True)
class Point:
    """One configuration of the KD parameters and the student size (seeds apart)."""

    distance: str
    temperature: float
    student_temperature: str
    alpha: float
    teacher: str
    layers: int

    def canonical(self) -> "Point":
        """alpha = 0 trains on labels only: distance and temperatures cannot matter, so all
        such points are one configuration (the teacher still picks the initialisation)."""
        if self.alpha == 0:
            return replace(self, distance="ce", temperature=1.0, student_temperature="1", alpha=0.0)
        return replace(self, temperature=float(self.temperature), alpha=float(self.alpha))

    def label(self) -> str:
        if self.alpha == 0:
            return f"no KD (alpha=0), init {self.teacher}, L{self.layers}"
        tau_s = "tau_t" if self.student_temperature == "teacher" else "1"
        return (f"{self.distance} tau_t={self.temperature:g} tau_s={tau_s} alpha={self.alpha:g} "
                f"{self.teacher} L{self.layers}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Point":
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def run_config(template: TrainConfig, point: Point, seed: int, sweep_dir: Path) -> TrainConfig:
    """The TrainConfig of one run; its output folder is SWEEP_DIR/runs/<key>."""
    p = point.canonical()
    cfg = replace(template, distance=p.distance, temperature=p.temperature,
                  student_temperature=p.student_temperature, alpha=p.alpha, teacher=p.teacher,
                  layers=p.layers, seed=seed, progress=False)
    return replace(cfg, out=str(sweep_dir / RUNS_DIR / run_key(cfg)))


def run_key(config: TrainConfig) -> str:
    """A stable hash of everything that determines a run's result (not where it is written)."""
    d = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_KEY}
    for k, default in _ADDED_OPTIONS.items():  # options added later enter the key only when set, so
        if d.get(k) == default:                # the keys (and resumes) of older sweeps stay valid
            d.pop(k, None)
    d.update(temperature=float(d["temperature"]), alpha=float(d["alpha"]))
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunOutcome:
    """What one run reports back: the best-by-validation metric, on validation and test."""

    metric: str
    val: float
    test: float | None
    checkpoint: str | None
    train_seconds: float
    steps: int = 0
    best_step: int = 0
    val_eval: dict[str, Any] | None = None
    test_eval: dict[str, Any] | None = None
    teacher_score: float | None = None  # the teacher checkpoint's validation score, for the report's reference line
    early_stop: dict[str, Any] | None = None  # TrainResult.early_stop: stopped?, where, best step/epoch


def train_run(config: TrainConfig) -> RunOutcome:
    """The real ``run_fn`` of a sweep: one ``train`` call, quiet."""
    from students.train import train  # here: reading a sweep folder needs no torch

    r = train(config, console=Console(quiet=True))
    return RunOutcome(r.metric, r.best.score(r.metric), r.test.score(r.metric) if r.test else None, r.checkpoint,
                      round(r.train_seconds, 4), r.steps, r.best_step, r.best.to_dict(),
                      r.test.to_dict() if r.test else None, r.teacher_score, r.early_stop)


@dataclass(frozen=True)
class PointStats:
    """A configuration's metric over its seeds: mean and (sample) standard deviation."""

    point: Point
    seeds: tuple[int, ...]
    val_mean: float
    val_std: float
    test_mean: float | None
    test_std: float | None
    train_seconds: float

    @property
    def n(self) -> int:
        return len(self.seeds)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def point_stats(point: Point, records: Iterable[Mapping[str, Any]]) -> PointStats:
    """Aggregate the records of one point (sorted by seed, so the means are reproducible).
    ``train_seconds`` counts only runs that trained (not copies marked ``same_run_as``)."""
    rs = sorted(records, key=lambda r: r["seed"])
    val_mean, val_std = _mean_std([r["val"] for r in rs])
    tests = [r["test"] for r in rs if r["test"] is not None]
    test_mean, test_std = _mean_std(tests) if len(tests) == len(rs) else (None, None)
    return PointStats(point, tuple(r["seed"] for r in rs), val_mean, val_std, test_mean, test_std,
                      round(sum(r["train_seconds"] for r in rs if "same_run_as" not in r), 4))
