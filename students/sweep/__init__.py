"""KD-parameter sweeps over one logit store: the recipe behind `students sweep`.

    space (flags or TOML) -> plan (grid product, or greedy stages) -> train runs (seeds,
    optionally in parallel processes) -> SWEEP_DIR/results.jsonl (one line per run)
    -> outcome (winner, baselines, rewards) -> SWEEP_DIR/sweep.json

One module per part (docs/sweeps.md has the user's view):

* ``space``: SweepSpace, parse_space, load_space (flags and TOML; SweepSpaceError).
* ``points``: Point, the run config and run key of a (point, seed), RunOutcome, PointStats.
* ``results``: results.jsonl and sweep.json (load_results, append_record, read_manifest;
  ResultsFileError).
* ``runner``: Runner, which trains the runs a strategy asks for that results.jsonl lacks.
* ``executors``: where the runs train: Executor (run a batch, yield each run as it finishes),
  Serial, Pool (--workers N) and make_executor; ``ray_executor``: RayExecutor (--ray), imported
  only when asked for.
* ``strategies``: the baselines, ``greedy`` (the study's search), ``grid``, rewards.
* ``progress``: SweepProgress, the sweep's one progress line (runs done / total, ETA).
* ``recipe``: SweepConfig and run_sweep, which ties them together (and prunes the student
  models nobody asked to keep).

Runs are keyed by a hash of their full training config (KD parameters, seed, training
options), so a rerun of the same sweep skips every run already in results.jsonl; a
truncated last line (a kill mid-write) is ignored. Every run is also evaluated on test
when the store has a test split (``train`` does that).
"""
from __future__ import annotations

from students.sweep.points import (RUNS_DIR, Point, PointStats, RunOutcome, point_stats, run_config, run_key,
                                   train_run)
from students.sweep.recipe import SAVE_MODELS, SweepConfig, SweepResult, run_sweep
from students.sweep.results import (MANIFEST, RECORD_VERSION, RESULTS, ResultsFileError, append_record,
                                    load_results, read_manifest)
from students.sweep.executors import Executor, Finished, Pool, RunFn, Serial, make_executor
from students.sweep.runner import Runner
from students.sweep.space import PARAMS, SPACE_KEYS, SweepSpace, SweepSpaceError, load_space, parse_space
from students.sweep.strategies import (GREEDY_ORDER, HINTON, RECOMMENDED, STRATEGIES, TUNED, LayersOutcome, Reward,
                                       baselines, greedy, grid)

__all__ = [
    "Executor", "Finished", "Pool", "Serial", "make_executor",
    "GREEDY_ORDER", "HINTON", "MANIFEST", "PARAMS", "RECOMMENDED", "RECORD_VERSION", "RESULTS", "RUNS_DIR",
    "SAVE_MODELS",
    "SPACE_KEYS", "STRATEGIES", "TUNED", "LayersOutcome", "Point", "PointStats", "ResultsFileError", "Reward",
    "RunFn", "RunOutcome", "Runner", "SweepConfig", "SweepResult", "SweepSpace", "SweepSpaceError",
    "append_record", "baselines", "greedy", "grid", "load_results", "load_space", "parse_space", "point_stats",
    "read_manifest", "run_config", "run_key", "run_sweep", "train_run",
]
