"""students: train small transformer students from a logit store (knowledge distillation).

    from students import TrainConfig, train
    result = train(TrainConfig(store="logits.zarr", out="runs/s", distance="ce", temperature=2.0,
                               student_temperature="1", alpha=0.5, teacher="tll", layers=2))

The modules, in the order data flows: config (the settings of a run, validated once), data
(batches from the store), teacher (cached or online teacher logits), model (skip-layer
students), loss (the one KD loss), train (the recipe), sweep/ (grid and greedy KD-parameter
searches), report (tables and plots of a sweep), cli (`students train`, `students sweep`,
`students report`).
"""
from __future__ import annotations

from students.config import KDLossConfig, LoaderConfig, OptimConfig, TrainConfig
from students.data import Batch, SplitBatches
from students.errors import (ConfigError, OnlineTeacherError, OutputPathError, StoreContentError, StudentInitError,
                             StudentsError)
from students.loss import KDLossOutput, kd_loss
from students.model import StudentInit, build_student, layer_map
from students.report import SweepReport, load_report, write_report
from students.sweep import (Point, ResultsFileError, RunOutcome, SweepConfig, SweepResult, SweepSpace,
                            SweepSpaceError, load_space, run_sweep)
from students.train import EvalResult, TrainResult, evaluate, train

from logitstore import __version__  # one version for both packages (pyproject reads it there)
__all__ = [
    "Batch", "ConfigError", "EvalResult", "KDLossConfig", "KDLossOutput", "LoaderConfig", "OnlineTeacherError",
    "OptimConfig", "OutputPathError", "Point", "ResultsFileError", "RunOutcome", "SplitBatches",
    "StoreContentError", "StudentInit", "StudentInitError", "StudentsError", "SweepConfig", "SweepReport",
    "SweepResult", "SweepSpace", "SweepSpaceError", "TrainConfig", "TrainResult", "build_student", "evaluate",
    "kd_loss", "layer_map", "load_report", "load_space", "run_sweep", "train", "write_report"
]
