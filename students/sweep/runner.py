"""The runner of a sweep: trains the (point, seed) runs that results.jsonl lacks, records
each as it finishes, and answers PointStats. Strategies ask it through ``run_points``.

Runs that differ only in how they name the same teacher checkpoint (ths and tll resolving
to one checkpoint) are trained once; the other is recorded with ``same_run_as`` pointing at
it. Where the runs of one call train (this process, a local process pool, a Ray cluster) is
the executor's business (students/sweep/executors.py): the runner hands it the batch and
records what comes back. A run that comes back failed (its worker died twice, on Ray) is
recorded with ``failed`` (the reason) and counts as worse than any finished run; a rerun of
the sweep trains it again.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from pathlib import Path

from rich.console import Console

from students.config import TrainConfig
from students.sweep.executors import Executor, Finished, RunFn
from students.sweep.points import Point, PointStats, point_stats, run_config, run_key
from students.sweep.progress import SweepProgress
from students.sweep.results import RECORD_VERSION, RESULTS, append_record, load_results

__all__ = ["Runner", "RunFn"]
_Todo = dict[str, tuple[Point, int, TrainConfig]]  # key -> (point, seed, config) of the runs to train


class Runner:
    """Runs (point, seed) pairs that results.jsonl lacks, records each as it finishes and
    answers PointStats (see the module docstring)."""

    def __init__(self, sweep_dir: Path, template: TrainConfig, seeds: tuple[int, ...], executor: Executor,
                 console: Console | None = None, teachers: Mapping[str, str] | None = None,
                 progress: SweepProgress | None = None) -> None:
        self.dir, self.seeds, self.executor = sweep_dir, seeds, executor
        self.template = replace(template, threads=executor.threads)  # per run; not in run keys
        self.console = console or Console(quiet=True)
        # Finished runs; a run recorded as failed is tried again by a new runner (a rerun).
        self.records = {k: r for k, r in load_results(sweep_dir, repair=True).items() if "failed" not in r}
        self.failed: dict[str, str] = {}  # key -> why, for the runs that failed in this runner
        self.ran = 0
        self.progress = progress
        self.asked: set[str] = set()  # the keys of every run the strategies asked for
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

    def close(self) -> None:
        self.executor.close()

    def run_points(self, points: Iterable[Point], stage: str = "") -> dict[Point, PointStats]:
        """Train every run of ``points`` (each seed) that results.jsonl lacks; their stats."""
        pts = list(dict.fromkeys(p.canonical() for p in points))
        todo, twins = self._plan(pts)
        done_before = len(pts) * len(self.seeds) - len(todo) - len(twins)
        self.asked.update(self.key(p, s) for p in pts for s in self.seeds)
        self.console.print(f"[bold]{stage or 'runs'}[/]: {len(pts)} configuration(s) x {len(self.seeds)} seed(s); "
                           f"{len(todo)} to run, {done_before} already in {RESULTS}"
                           + (f", {len(twins)} the same as another run (ths and tll are one checkpoint)"
                              if twins else ""))
        if self.progress is not None:
            self.progress.stage(stage, len(pts) * len(self.seeds))
            self.progress.advance(done_before)
        for done in self.executor.run({key: cfg for key, (_, _, cfg) in todo.items()}):
            self._record(done, *todo[done.key][:2])
        for key, (p, s, twin) in twins.items():
            if twin in self.failed:
                self.failed[key] = self.failed[twin]
                continue
            rec = {**self.records[twin], "key": key, "point": p.to_dict(), "seed": s, "same_run_as": twin}
            append_record(self.dir, rec)
            self.records[key] = json.loads(json.dumps(rec))
        if self.progress is not None:
            self.progress.advance(len(twins))
        return {p: self.stats(p) for p in pts}

    def _plan(self, pts: list[Point]) -> tuple[_Todo, dict[str, tuple[Point, int, str]]]:
        """The runs to train, and the runs that are another run under the other teacher name
        (key -> (point, seed, key of that run)); runs already recorded are in neither."""
        todo: _Todo = {}
        twins: dict[str, tuple[Point, int, str]] = {}
        for p in pts:
            for s in self.seeds:
                cfg = run_config(self.template, p, s, self.dir)
                key = Path(cfg.out).name
                if key in self.records or key in todo or key in self.failed:
                    continue
                twin = self._by_twin.setdefault(self._twin_key(cfg), key)
                if twin != key:
                    twins[key] = (p, s, twin)
                else:
                    todo[key] = (p, s, cfg)
        return todo, twins

    def _record(self, done: Finished, point: Point, seed: int) -> None:
        """Append ``done`` to results.jsonl: a finished run, or a failed one with its reason."""
        rec: dict = {"version": RECORD_VERSION, "key": done.key, "point": point.to_dict(), "seed": seed}
        if done.outcome is None:
            rec["failed"] = self.failed[done.key] = done.error or "unknown"
            append_record(self.dir, rec)
            self.console.print(f"  {point.label()} seed {seed}: [red]failed[/] ({rec['failed']})")
        else:
            rec.update(**asdict(done.outcome), run_seconds=round(done.seconds, 4))
            append_record(self.dir, rec)
            self.records[done.key] = json.loads(json.dumps(rec))  # as it reads back from the file
            self.ran += 1
            o = done.outcome
            test = f", test {o.test:.4f}" if o.test is not None else ""
            self.console.print(f"  {point.label()} seed {seed}: val {o.metric} {o.val:.4f}{test} "
                               f"({o.train_seconds:.1f} s training)")
        if self.progress is not None:
            self.progress.advance(trained=True)

    def key(self, point: Point, seed: int) -> str:
        """The run key of ``point`` with ``seed`` (the name of its folder under runs/)."""
        return Path(run_config(self.template, point.canonical(), seed, self.dir).out).name

    def stats(self, point: Point) -> PointStats:
        """The point's statistics over its seeds; a point with a failed run ranks below every
        other (val_mean -inf, no test)."""
        p = point.canonical()
        keys = [self.key(p, s) for s in self.seeds]
        if any(k in self.failed for k in keys):
            return PointStats(p, self.seeds, float("-inf"), 0.0, None, None, 0.0)
        return point_stats(p, [self.records[k] for k in keys])
