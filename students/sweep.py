"""KD-parameter sweeps over one logit store: the recipe behind `students sweep`.

    space (flags or TOML) -> plan (grid product, or greedy stages) -> train runs (seeds,
    optionally in parallel processes) -> SWEEP_DIR/results.jsonl (one line per run)
    -> outcome (winner, baselines, rewards) -> SWEEP_DIR/sweep.json

Strategies (docs/sweeps.md has the user's view):

* ``grid``: every combination of the space's values, per student size.
* ``greedy`` (the study's procedure, in this documented order): start from Hinton et al.
  (CE, tau_s = tau_t, ths teacher, alpha = base_alpha < 1, tau_t = base_temperature);
  tune tau_t over its grid, then alpha over its grid (the current value competes; ties
  keep the current value, then the first grid value); then for each categorical
  parameter in GREEDY_ORDER (distance, teacher, student_temperature) try every other
  value in the space and keep the best one only when its mean validation metric over
  seeds is strictly higher. The reward of a parameter is R = metric(alternative) -
  metric(default), both at the same greedy stage (for tau_t and alpha: the tuned value
  versus the value the stage started from).

Both strategies also run, per student size, the fixed baselines: the Hinton
configuration, the study's recommended one (tll, CE, tau_s = 1, same tau_t and alpha as
Hinton) and the student without KD (alpha = 0). Every run is also evaluated on test when
the store has a test split (``train`` does that).

Runs are keyed by a hash of their full training config (KD parameters, seed, training
options), so a rerun of the same sweep skips every run already in results.jsonl; a
truncated last line (a kill mid-write) is ignored. Runs that differ only in how they name
the same teacher checkpoint (ths and tll resolving to one checkpoint) are trained once;
the other is recorded with ``same_run_as`` pointing at it. The runner takes ``run_fn`` (a
TrainConfig -> RunOutcome callable; the real one calls ``train``) so tests can inject a
fake metric.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from students.errors import ConfigError, StudentsError
from students.config import DISTANCES, STUDENT_TEMPERATURES
from students.train import TrainConfig

STRATEGIES = ("grid", "greedy")
PARAMS = ("distance", "temperature", "student_temperature", "alpha", "teacher", "layers", "seeds")
SPACE_KEYS = PARAMS + ("base_temperature", "base_alpha")
GREEDY_ORDER = ("temperature", "alpha", "distance", "teacher", "student_temperature")
TUNED = ("temperature", "alpha")  # tuned over their grids; the rest are categorical alternatives
HINTON = {"distance": "ce", "student_temperature": "teacher", "teacher": "ths"}
RECOMMENDED = {"distance": "ce", "student_temperature": "1", "teacher": "tll"}
RESULTS, MANIFEST, RUNS_DIR = "results.jsonl", "sweep.json", "runs"
RECORD_VERSION = 1
# TrainConfig fields that name where a run lives or how it prints, not what it computes.
_NOT_IN_KEY = ("store", "out", "progress")
_ADDED_OPTIONS = {"group_by_length": False}  # TrainConfig fields newer than the key format, and their defaults

RunFn = Callable[[TrainConfig], "RunOutcome"]


class SweepSpaceError(ConfigError):
    """A sweep space (flags or TOML file) is invalid; the message lists every problem."""


class ResultsFileError(StudentsError, ValueError):
    """SWEEP_DIR's results.jsonl or sweep.json cannot be used (corrupt line, other store)."""


# ---------------------------------------------------------------------------- space
@dataclass(frozen=True)
class SweepSpace:
    """The values a sweep draws from; validated at construction (one SweepSpaceError).

    ``seeds`` lists the seeds every configuration is trained with. ``base_temperature``
    and ``base_alpha`` are the Hinton configuration's tau_t and alpha (the greedy start
    and both fixed baselines)."""

    distance: tuple[str, ...] = ("ce", "mse")
    temperature: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    student_temperature: tuple[str, ...] = ("teacher", "1")
    alpha: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    teacher: tuple[str, ...] = ("ths", "tll")
    layers: tuple[int, ...] = (2,)
    seeds: tuple[int, ...] = (0,)
    base_temperature: float = 2.0
    base_alpha: float = 0.5

    def __post_init__(self) -> None:
        problems = space_problems(self)
        if problems:
            raise SweepSpaceError("invalid sweep space: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def space_problems(space: SweepSpace) -> list[str]:
    """Every problem with the values of ``space``, each ending "Got X instead"."""
    p = []
    for name in PARAMS:
        if not getattr(space, name):
            p.append(f"{name} has no values (empty grid); give at least one. Got [] instead")
    bad = lambda name, ok: [v for v in getattr(space, name) if not ok(v)]  # noqa: E731
    checks = {
        "distance": (lambda v: v in DISTANCES, f"one of {', '.join(DISTANCES)}"),
        "temperature": (lambda v: _num(v) and 0 < v < math.inf, "finite numbers > 0"),
        "student_temperature": (lambda v: v in STUDENT_TEMPERATURES, f"one of {', '.join(STUDENT_TEMPERATURES)}"),
        "alpha": (lambda v: _num(v) and 0 <= v <= 1, "numbers in [0, 1]"),
        "teacher": (lambda v: isinstance(v, str) and v != "", "ths, tll or a checkpoint name"),
        "layers": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "integers >= 1"),
        "seeds": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "integers >= 0"),
    }
    for name, (ok, what) in checks.items():
        wrong = bad(name, ok)
        if wrong:
            p.append(f"{name} values must be {what}. Got {', '.join(map(repr, wrong))} instead")
    if not (_num(space.base_temperature) and 0 < space.base_temperature < math.inf):
        p.append(f"base_temperature must be a finite number > 0. Got {space.base_temperature!r} instead")
    if not (_num(space.base_alpha) and 0 < space.base_alpha < 1):
        p.append(f"base_alpha (Hinton's alpha: labels and teacher both used) must be in (0, 1). "
                 f"Got {space.base_alpha!r} instead")
    return p


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _coerce(name: str, value: Any) -> tuple[Any, ...] | float:
    """One space entry from TOML (scalar or list) or a flag (comma-separated string)."""
    if name in ("base_temperature", "base_alpha"):
        return float(value) if isinstance(value, str) else value
    if isinstance(value, str):
        items: list[Any] = [x.strip() for x in value.split(",") if x.strip()]
        if name == "seeds" and len(items) == 1 and items[0].isdigit():
            return tuple(range(int(items[0])))  # --seeds N: seeds 0..N-1
        if name in ("temperature", "alpha"):
            items = [float(x) for x in items]
        elif name in ("layers", "seeds"):
            items = [int(x) for x in items]
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if name == "seeds" and not isinstance(value, (list, tuple)) and _num(value):
            return tuple(range(int(value)))  # seeds = N in a TOML file
        if name in ("temperature", "alpha"):
            items = [float(x) if _num(x) else x for x in items]
    if name == "student_temperature":  # TOML users write 1 for "1"
        items = ["1" if _num(x) and x == 1 else x for x in items]
    return tuple(dict.fromkeys(items))  # drop repeats, keep order


def parse_space(data: Mapping[str, Any], source: str = "flags") -> SweepSpace:
    """A SweepSpace from a mapping of entry -> value(s); every problem in one SweepSpaceError.

    Values are a scalar, a list, or (from flags) a comma-separated string; ``seeds`` may
    also be a count N (seeds 0..N-1)."""
    problems = [f"unknown parameter {k!r} (known: {', '.join(SPACE_KEYS)}). Got {k!r} instead"
                for k in data if k not in SPACE_KEYS]
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if k not in SPACE_KEYS:
            continue
        try:
            kwargs[k] = _coerce(k, v)
        except (TypeError, ValueError):
            problems.append(f"{k} values must be {'integers' if k in ('layers', 'seeds') else 'numbers'}. "
                            f"Got {v!r} instead")
    try:
        space = SweepSpace(**kwargs)
    except SweepSpaceError as exc:
        problems += str(exc).removeprefix("invalid sweep space: ").split("; ")
    if problems:
        raise SweepSpaceError(f"invalid sweep space ({source}): " + "; ".join(problems))
    return space


def load_space(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None) -> SweepSpace:
    """The space of a TOML file (top-level keys = SPACE_KEYS) with flag ``overrides`` on
    top (None values ignored). Raises SweepSpaceError."""
    data: dict[str, Any] = {}
    source = "flags"
    if path is not None:
        source = f"{path}"
        try:
            import tomllib  # stdlib from Python 3.11
        except ImportError as exc:
            raise SweepSpaceError("reading --space FILE.toml needs Python 3.11 (tomllib); "
                                  "pass the values as flags instead") from exc
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise SweepSpaceError(f"no sweep space file at {path}; pass --space FILE.toml with an existing file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SweepSpaceError(f"cannot parse sweep space file {path} ({exc}); fix its TOML syntax") from exc
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return parse_space(data, source)


# ---------------------------------------------------------------------------- points and runs
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


def baselines(space: SweepSpace, layers: int) -> dict[str, Point]:
    """The fixed configurations of every sweep: hinton, recommended and no_kd."""
    hinton = Point(temperature=space.base_temperature, alpha=space.base_alpha, layers=layers, **HINTON)
    return {"hinton": hinton.canonical(),
            "recommended": replace(hinton, **RECOMMENDED).canonical(),
            "no_kd": replace(hinton, alpha=0.0).canonical()}


def run_config(template: TrainConfig, point: Point, seed: int, sweep_dir: Path) -> TrainConfig:
    """The TrainConfig of one run; its output folder is SWEEP_DIR/runs/<key>."""
    p = point.canonical()
    cfg = replace(template, distance=p.distance, temperature=p.temperature,
                  student_temperature=p.student_temperature, alpha=p.alpha, teacher=p.teacher,
                  layers=p.layers, seed=seed, progress=False)
    return replace(cfg, out=str(sweep_dir / RUNS_DIR / run_key(cfg)))


def run_key(config: TrainConfig) -> str:
    """A stable hash of everything that determines a run's result (not where it is written)."""
    d = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_KEY}
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


def train_run(config: TrainConfig) -> RunOutcome:
    """The real ``run_fn``: one ``train`` call, quiet."""
    from students.train import train

    r = train(config, console=Console(quiet=True))
    return RunOutcome(r.metric, r.best.score(r.metric), r.test.score(r.metric) if r.test else None, r.checkpoint,
                      round(r.train_seconds, 4), r.steps, r.best_step, r.best.to_dict(),
                      r.test.to_dict() if r.test else None)


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


# ---------------------------------------------------------------------------- results file
def load_results(sweep_dir: str | os.PathLike[str], repair: bool = False) -> dict[str, dict[str, Any]]:
    """The records of SWEEP_DIR/results.jsonl by key. A truncated last line is ignored (and,
    with ``repair``, cut off so appends start on a fresh line); any other unreadable line
    raises ResultsFileError."""
    path = Path(sweep_dir) / RESULTS
    if not path.exists():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records: dict[str, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            records[rec["key"]] = rec
        except (ValueError, KeyError, TypeError) as exc:
            if i == len(lines) - 1:  # no newline after it: a write cut short by a kill
                if repair:
                    with open(path, "r+b") as f:
                        f.truncate(len(raw) - len(line))
                break
            raise ResultsFileError(f"line {i + 1} of {path} is not a results record ({exc}); delete that line "
                                   "(its run is redone on the next sweep) or the file") from exc
    return records


def append_record(sweep_dir: Path, record: Mapping[str, Any]) -> None:
    """Append one line to results.jsonl and make it durable before returning."""
    with open(sweep_dir / RESULTS, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------- runner
def _worker_init(threads: int) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)


def _timed(run_fn: RunFn, config: TrainConfig) -> tuple[RunOutcome, float]:
    started = time.perf_counter()
    outcome = run_fn(config)
    return outcome, time.perf_counter() - started


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Runner:
    """Runs (point, seed) pairs that results.jsonl lacks, records each as it finishes and
    answers PointStats. With ``workers`` > 1 the runs of one call go to a pool of spawned
    processes, each with cpu_count() // workers torch threads."""

    def __init__(self, sweep_dir: Path, template: TrainConfig, seeds: tuple[int, ...], run_fn: RunFn,
                 workers: int = 1, console: Console | None = None, teachers: Mapping[str, str] | None = None) -> None:
        self.dir, self.template, self.seeds, self.run_fn, self.workers = sweep_dir, template, seeds, run_fn, workers
        self.console = console or Console(quiet=True)
        self.records = load_results(sweep_dir, repair=True)
        self.ran = 0
        self._pool: ProcessPoolExecutor | None = None
        # Teacher value -> the checkpoint it resolves to in the store (ths and tll may be the
        # same one): runs that differ only by the name of the same checkpoint are run once.
        self.teachers = dict(teachers or {})
        self._by_twin: dict[str, str] = {}
        for key, rec in self.records.items():
            cfg = run_config(self.template, Point.from_dict(rec["point"]), rec["seed"], self.dir)
            self._by_twin.setdefault(self._twin_key(cfg), key)

    def _twin_key(self, cfg: TrainConfig) -> str:
        """The run key with the teacher named by the checkpoint it resolves to."""
        return run_key(replace(cfg, teacher=self.teachers.get(cfg.teacher, cfg.teacher)))

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            threads = max(1, cpu_count() // self.workers)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init, initargs=(threads,))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def evaluate(self, points: Iterable[Point], stage: str = "") -> dict[Point, PointStats]:
        """Make sure every point has a result for every seed; returns their stats."""
        pts = list(dict.fromkeys(p.canonical() for p in points))
        todo: dict[str, tuple[Point, int, TrainConfig]] = {}
        twins: dict[str, tuple[Point, int, str]] = {}  # key -> (point, seed, key of the same run)
        for p in pts:
            for s in self.seeds:
                cfg = run_config(self.template, p, s, self.dir)
                key = Path(cfg.out).name
                if key in self.records or key in todo:
                    continue
                twin = self._by_twin.setdefault(self._twin_key(cfg), key)
                if twin != key:
                    twins[key] = (p, s, twin)
                else:
                    todo[key] = (p, s, cfg)
        done_before = len(pts) * len(self.seeds) - len(todo) - len(twins)
        self.console.print(f"[bold]{stage or 'runs'}[/]: {len(pts)} configuration(s) x {len(self.seeds)} seed(s); "
                           f"{len(todo)} to run, {done_before} already in {RESULTS}"
                           + (f", {len(twins)} the same as another run (ths and tll are one checkpoint)"
                              if twins else ""))
        if self.workers > 1 and len(todo) > 1:
            self._run_parallel(todo)
        else:
            for key, (p, s, cfg) in todo.items():
                self._record(key, p, s, *_timed(self.run_fn, cfg))
        for key, (p, s, twin) in twins.items():
            rec = {**self.records[twin], "key": key, "point": p.to_dict(), "seed": s, "same_run_as": twin}
            append_record(self.dir, rec)
            self.records[key] = json.loads(json.dumps(rec))
        return {p: self.stats(p) for p in pts}

    def _run_parallel(self, todo: dict[str, tuple[Point, int, TrainConfig]]) -> None:
        pool = self._executor()
        futures: dict[Future, str] = {pool.submit(_timed, self.run_fn, cfg): key for key, (_, _, cfg) in todo.items()}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    key = futures[fut]
                    self._record(key, todo[key][0], todo[key][1], *fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise

    def _record(self, key: str, point: Point, seed: int, outcome: RunOutcome, run_seconds: float) -> None:
        rec = {"version": RECORD_VERSION, "key": key, "point": point.to_dict(), "seed": seed, **asdict(outcome),
               "run_seconds": round(run_seconds, 4)}
        append_record(self.dir, rec)
        self.records[key] = json.loads(json.dumps(rec))  # as it reads back from the file
        self.ran += 1
        test = f", test {outcome.test:.4f}" if outcome.test is not None else ""
        self.console.print(f"  {point.label()} seed {seed}: val {outcome.metric} {outcome.val:.4f}{test} "
                           f"({outcome.train_seconds:.1f} s training)")

    def stats(self, point: Point) -> PointStats:
        p = point.canonical()
        keys = [Path(run_config(self.template, p, s, self.dir).out).name for s in self.seeds]
        return point_stats(p, [self.records[k] for k in keys])


# ---------------------------------------------------------------------------- strategies
@dataclass(frozen=True)
class Reward:
    """R = mean validation metric with ``alternative`` minus with ``default`` (same stage).
    ``spread`` is the larger seed std of the two (None with one seed)."""

    layers: int
    parameter: str
    default: str
    alternative: str
    r: float
    spread: float | None
    kept: bool

    @property
    def exceeds_spread(self) -> bool | None:
        return None if self.spread is None else abs(self.r) > self.spread


@dataclass
class LayersOutcome:
    """The sweep's answer for one student size."""

    layers: int
    hinton: Point
    recommended: Point
    no_kd: Point
    winner: Point
    stages: list[dict[str, Any]] = field(default_factory=list)
    rewards: list[Reward] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "hinton": self.hinton.to_dict(), "recommended": self.recommended.to_dict(),
                "no_kd": self.no_kd.to_dict(), "winner": self.winner.to_dict(), "stages": self.stages,
                "rewards": [asdict(r) for r in self.rewards]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayersOutcome":
        return cls(d["layers"], *(Point.from_dict(d[k]) for k in ("hinton", "recommended", "no_kd", "winner")),
                   list(d["stages"]), [Reward(**r) for r in d["rewards"]])


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _stage(param: str, current: Point, values: Iterable[Any], stats: Mapping[Point, PointStats],
           keep_best: bool) -> tuple[Point, list[Reward], dict[str, Any]]:
    """One greedy stage: compare ``current`` with ``current`` changed in ``param`` to each
    value. Tuned parameters report one reward (best value vs current); categorical ones one
    per alternative. The best candidate replaces ``current`` only when strictly better."""
    cur = current.canonical()
    cands = [cur] + [c for c in dict.fromkeys(replace(current, **{param: v}).canonical() for v in values)
                     if c != cur and c in stats]
    base, others = stats[cur], cands[1:]
    if not others:
        return cur, [], {"parameter": param, "candidates": [{"point": cur.to_dict(), "val_mean": base.val_mean}],
                         "chosen": cur.to_dict()}
    best = max(others, key=lambda c: stats[c].val_mean)  # max keeps the first of equals: grid order
    chosen = best if keep_best and stats[best].val_mean > base.val_mean else cur  # ties keep current
    spread = lambda a: max(a.val_std, base.val_std) if min(a.n, base.n) > 1 else None  # noqa: E731
    rewards = [Reward(cur.layers, param, _value(getattr(cur, param)), _value(getattr(a, param)),
                      stats[a].val_mean - base.val_mean, spread(stats[a]), a == chosen)
               for a in ([best] if param in TUNED else others)]
    record = {"parameter": param, "candidates": [{"point": c.to_dict(), "val_mean": stats[c].val_mean}
                                                 for c in cands], "chosen": chosen.to_dict()}
    return chosen, rewards, record


def greedy(space: SweepSpace, layers: int, evaluate: Callable[[list[Point], str], Mapping[Point, PointStats]]
           ) -> LayersOutcome:
    """The study's greedy search for one student size (order: GREEDY_ORDER)."""
    base = baselines(space, layers)
    evaluate(list(base.values()), f"L{layers} baselines (hinton, recommended, no KD)")
    out = LayersOutcome(layers, base["hinton"], base["recommended"], base["no_kd"], base["hinton"])
    current = base["hinton"]
    for param in GREEDY_ORDER:
        values = [v for v in getattr(space, param) if param in TUNED or v != HINTON[param]]
        stats = evaluate([current] + [replace(current, **{param: v}) for v in values], f"L{layers} {param}")
        current, rewards, record = _stage(param, current, values, stats, keep_best=True)
        out.rewards += rewards
        out.stages.append(record)
    out.winner = current
    return out


def grid(space: SweepSpace, layers: int, evaluate: Callable[[list[Point], str], Mapping[Point, PointStats]]
         ) -> LayersOutcome:
    """Every combination for one student size, plus the baselines in the same batch. Rewards
    are one-at-a-time changes of the Hinton configuration that the grid contains."""
    base = baselines(space, layers)
    product = [Point(d, t, s, a, te, layers) for d, t, s, a, te in itertools.product(
        space.distance, space.temperature, space.student_temperature, space.alpha, space.teacher)]
    stats = dict(evaluate(list(base.values()) + product, f"L{layers} grid"))
    out = LayersOutcome(layers, base["hinton"], base["recommended"], base["no_kd"], base["hinton"])
    ranked = list(dict.fromkeys(p.canonical() for p in product))
    out.winner = max(ranked, key=lambda p: stats[p].val_mean)
    for param in GREEDY_ORDER:
        values = [v for v in getattr(space, param) if param in TUNED or v != HINTON[param]]
        _, rewards, _ = _stage(param, base["hinton"], values, stats, keep_best=False)
        out.rewards += rewards
    return out


# ---------------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class SweepConfig:
    """One sweep: store, folder, strategy, space, parallel workers and the training options
    every run shares (``train``: a TrainConfig whose KD fields, seed, store and out are
    replaced per run; None = TrainConfig defaults)."""

    store: str
    out: str
    strategy: str = "greedy"
    space: SweepSpace = field(default_factory=SweepSpace)
    workers: int = 1
    train: TrainConfig | None = None

    def __post_init__(self) -> None:
        p = []
        if self.strategy not in STRATEGIES:
            p.append(f"strategy must be one of {', '.join(STRATEGIES)}. Got {self.strategy!r} instead")
        if not isinstance(self.workers, int) or self.workers < 1:
            p.append(f"workers must be an integer >= 1. Got {self.workers!r} instead")
        if p:
            raise ConfigError("invalid sweep config: " + "; ".join(p))

    @property
    def template(self) -> TrainConfig:
        base = self.train or TrainConfig(store=self.store, out=self.out)
        return replace(base, store=str(self.store), out=str(self.out), progress=False)


@dataclass
class SweepResult:
    """What a sweep did: the outcome per student size and how many runs it trained now."""

    out: Path
    outcomes: list[LayersOutcome]
    ran: int
    records: dict[str, dict[str, Any]]


def _store_identity(store_path: str, space: SweepSpace) -> dict[str, Any]:
    """Open the store once (metadata only) and check every teacher value resolves."""
    from logitstore.store import open_store

    store = open_store(store_path)
    chosen = {t: store.select(t).name for t in dict.fromkeys(("ths", "tll") + space.teacher)}
    return {"dataset_fingerprint": store.meta.dataset_fingerprint,
            "tokenizer_fingerprint": store.meta.tokenizer_fingerprint, "teachers": chosen}


def _write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def run_sweep(config: SweepConfig, run_fn: RunFn = train_run, console: Console | None = None,
              check_store: bool = True) -> SweepResult:
    """Run (or resume) a sweep; writes SWEEP_DIR/results.jsonl as runs finish and
    SWEEP_DIR/sweep.json (the plan, then the outcome). ``run_fn`` trains one config;
    ``check_store`` = False skips opening the store (for fake run functions)."""
    console = console or Console()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    identity = _store_identity(config.store, config.space) if check_store else None
    manifest_path = out / MANIFEST
    if manifest_path.exists() and identity is not None:
        old = json.loads(manifest_path.read_text()).get("store_identity")
        if old is not None and old["dataset_fingerprint"] != identity["dataset_fingerprint"]:
            raise ResultsFileError(f"{out} holds a sweep of another store (dataset fingerprint "
                                   f"{old['dataset_fingerprint'][:12]}, this store {identity['dataset_fingerprint'][:12]}); "
                                   "pass a new --out folder")
        moved = {t: (old["teachers"][t], c) for t, c in identity["teachers"].items()
                 if old is not None and old.get("teachers", {}).get(t, c) != c}
        if moved:
            raise ResultsFileError(f"the store's teacher choice changed since {out} was swept ("
                                   + ", ".join(f"{t}: {a} -> {b}" for t, (a, b) in moved.items())
                                   + "); pass a new --out folder")
    template = config.template
    options = {k: v for k, v in template.to_dict().items() if k not in _NOT_IN_KEY + PARAMS + ("seed",)}
    manifest: dict[str, Any] = {"version": RECORD_VERSION, "store": str(config.store), "store_identity": identity,
                                "strategy": config.strategy, "space": config.space.to_dict(),
                                "greedy_order": list(GREEDY_ORDER), "train_options": options,
                                "status": "running", "outcomes": []}
    _write_manifest(manifest_path, manifest)
    runner = Runner(out, template, config.space.seeds, run_fn, config.workers, console,
                    identity["teachers"] if identity is not None else None)
    strategy = greedy if config.strategy == "greedy" else grid
    try:
        outcomes = [strategy(config.space, k, runner.evaluate) for k in config.space.layers]
    finally:
        runner.close()
    manifest.update(status="complete", outcomes=[o.to_dict() for o in outcomes])
    _write_manifest(manifest_path, manifest)
    for o in outcomes:
        console.print(f"L{o.layers} {config.strategy} winner: {o.winner.label()} "
                      f"(val {runner.stats(o.winner).val_mean:.4f}); `students report {out}` for the tables")
    return SweepResult(out, outcomes, runner.ran, runner.records)
