"""The runner of a sweep: trains the (point, seed) runs that results.jsonl lacks, records
each as it finishes, and answers PointStats. Strategies ask it through ``run_points``.

Runs that differ only in how they name the same teacher checkpoint (ths and tll resolving
to one checkpoint) are trained once; the other is recorded with ``same_run_as`` pointing at
it. With ``workers`` > 1 the runs of one call go to a pool of spawned processes; each run
gets threads // workers torch threads (threads: the template's, else default_threads()).
``run_fn`` (TrainConfig -> RunOutcome; the real one calls ``train``) is injectable so tests
can use a fake metric.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from pathlib import Path

from rich.console import Console

from students.config import TrainConfig, default_threads
from students.sweep.points import Point, PointStats, RunOutcome, point_stats, run_config, run_key
from students.sweep.progress import SweepProgress
from students.sweep.results import RECORD_VERSION, RESULTS, append_record, load_results

RunFn = Callable[[TrainConfig], RunOutcome]
_Todo = dict[str, tuple[Point, int, TrainConfig]]  # key -> (point, seed, config) of the runs to train


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


class Runner:
    """Runs (point, seed) pairs that results.jsonl lacks, records each as it finishes and
    answers PointStats (see the module docstring)."""

    def __init__(self, sweep_dir: Path, template: TrainConfig, seeds: tuple[int, ...], run_fn: RunFn,
                 workers: int = 1, console: Console | None = None, teachers: Mapping[str, str] | None = None,
                 progress: SweepProgress | None = None) -> None:
        self.dir, self.seeds, self.run_fn, self.workers = sweep_dir, seeds, run_fn, workers
        self.threads = max(1, (template.threads or default_threads()) // workers)  # per run; not in run keys
        self.template = replace(template, threads=self.threads)
        self.console = console or Console(quiet=True)
        self.records = load_results(sweep_dir, repair=True)
        self.ran = 0
        self.progress = progress
        self.asked: set[str] = set()  # the keys of every run the strategies asked for
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
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init, initargs=(self.threads,))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

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
        if self.workers > 1 and len(todo) > 1:
            self._run_parallel(todo)
        else:
            for key, (p, s, cfg) in todo.items():
                self._record(key, p, s, *_timed(self.run_fn, cfg))
        for key, (p, s, twin) in twins.items():
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
                if key in self.records or key in todo:
                    continue
                twin = self._by_twin.setdefault(self._twin_key(cfg), key)
                if twin != key:
                    twins[key] = (p, s, twin)
                else:
                    todo[key] = (p, s, cfg)
        return todo, twins

    def _run_parallel(self, todo: _Todo) -> None:
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
        if self.progress is not None:
            self.progress.advance(trained=True)

    def key(self, point: Point, seed: int) -> str:
        """The run key of ``point`` with ``seed`` (the name of its folder under runs/)."""
        return Path(run_config(self.template, point.canonical(), seed, self.dir).out).name

    def stats(self, point: Point) -> PointStats:
        p = point.canonical()
        return point_stats(p, [self.records[self.key(p, s)] for s in self.seeds])
