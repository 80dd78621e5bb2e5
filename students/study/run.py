"""Run (or resume) a study: the greedy search with its baselines for every (store, size),
one sweep folder each, through the sweep machinery (students/sweep/).

    StudyConfig -> OUT/study.json "running" (the plan) -> per case: run_sweep(OUT/<store>/L<size>)
    -> OUT/study.json "complete"

Every run is recorded by its sweep as it finishes, so a killed study resumes where it
stopped: rerunning the same command trains only the runs that no results.jsonl holds. Two
studies on one folder are refused (a lock beside it).

By default the cases run one after another, and ``workers`` (or Ray) trains the runs of one
greedy stage at once; the workers idle while a stage's last runs finish, and a stage has
only (its configurations x seeds) runs. ``parallel_cases`` = K runs K cases at once, each
case's greedy search in a thread of its own, all submitting their runs to one shared
executor (students/sweep/executors.py), so runs of other cases fill those gaps. Each case
decides its stages from its own records only, so the results are those of the cases run one
after another (tested). The cases' output lines carry their folder, ``[store/L<size>]``.
Every case asks for the same threads per run (parse_study checks it); the first case's
sets the shared executor's. A case that
fails (or an interrupt) stops the study: runs already training finish and are recorded,
queued ones are dropped (on Ray, each case's submitted runs finish: Ray cannot drop a queued
task without ending running ones), and a rerun resumes.
"""
from __future__ import annotations

import io
import json
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from logitstore.lock import exclusive
from students.config import output_dir
from students.study.config import StudyCase, StudyConfig
from students.sweep import SweepResult, run_sweep
from students.sweep.executors import make_executor
from students.sweep.points import train_run
from students.sweep.runner import RunFn

STUDY_FILE = "study.json"
STUDY_VERSION = 1


@dataclass
class StudyResult:
    """What a study did: each case's sweep result and how many runs it trained now."""

    out: Path
    sweeps: list[tuple[StudyCase, SweepResult]]

    @property
    def ran(self) -> int:
        return sum(r.ran for _, r in self.sweeps)


def write_study_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """OUT/study.json, atomically (a temporary file, then a rename)."""
    tmp = out / (STUDY_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / STUDY_FILE)


def run_study(config: StudyConfig, run_fn: RunFn = train_run, console: Console | None = None,
              check_store: bool = True) -> StudyResult:
    """Run every case of ``config`` that is not complete; returns what each sweep did.
    ``run_fn`` and ``check_store`` are passed to each sweep (fake runs in tests).

    Raises what run_sweep raises (a damaged sweep folder, a locked one, store errors) and
    StoreLockedError when another study writes OUT."""
    console = console or Console()
    out = output_dir(config.out)
    with exclusive(out, what="study", thing="study folder"):
        manifest = {"version": STUDY_VERSION, **config.to_dict(), "status": "running"}
        write_study_manifest(out, manifest)
        at_once = min(config.parallel_cases, len(config.cases))
        done = (_cases_at_once if at_once > 1 else _cases_in_order)(config, run_fn, console, check_store)
        manifest["status"] = "complete"
        write_study_manifest(out, manifest)
    trained = sum(r.ran for _, r in done)
    console.print(f"study complete: {len(done)} case(s), {trained} run(s) trained now; "
                  f"`students report {out}` for the study report")
    return StudyResult(out, done)


def _announce(console: Console, config: StudyConfig, i: int) -> None:
    case = config.cases[i]
    console.rule(f"study case {i + 1}/{len(config.cases)}: store {case.store}, {case.size}-layer student "
                 f"({case.sweep.template.epochs} epochs) -> {case.sweep.out}")


def _cases_in_order(config: StudyConfig, run_fn: RunFn, console: Console,
                    check_store: bool) -> list[tuple[StudyCase, SweepResult]]:
    done: list[tuple[StudyCase, SweepResult]] = []
    for i, case in enumerate(config.cases):
        _announce(console, config, i)
        done.append((case, run_sweep(case.sweep, run_fn, console, check_store)))
    return done


def _cases_at_once(config: StudyConfig, run_fn: RunFn, console: Console,
                   check_store: bool) -> list[tuple[StudyCase, SweepResult]]:
    """``parallel_cases`` cases at a time, each in a thread, one executor for all (module docstring)."""
    first = config.cases[0].sweep
    executor = make_executor(run_fn, first.template.threads, first.workers or 1, first.ray, first.gpus_per_run,
                             shared=True)

    def one(i: int) -> SweepResult:
        case = config.cases[i]
        lines = case_console(console, f"[{case.folder}] ")
        _announce(lines, config, i)
        return run_sweep(case.sweep, run_fn, lines, check_store, executor)

    threads = ThreadPoolExecutor(min(config.parallel_cases, len(config.cases)), thread_name_prefix="study-case")
    futures = [threads.submit(one, i) for i in range(len(config.cases))]
    try:
        wait(futures, return_when=FIRST_EXCEPTION)
        for fut in futures:  # the first case that failed, in case order
            if fut.done() and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]
        return [(case, fut.result()) for case, fut in zip(config.cases, futures)]
    finally:
        threads.shutdown(wait=False, cancel_futures=True)  # cases not started yet never start
        executor.stop()  # queued runs dropped (local pool); runs training finish and their cases record them
        threads.shutdown(wait=True)
        executor.close()  # after the case threads: Ray is never shut down under a thread using it


class _Prefixed(io.TextIOBase):
    """A text stream that writes each whole line to ``out`` with ``prefix`` in front, one line
    at a time under a lock shared by every such stream (the cases' lines never mix)."""

    _lock = threading.Lock()

    def __init__(self, out: io.TextIOBase, prefix: str) -> None:
        self.out, self.prefix, self._pending = out, prefix, ""

    def write(self, s: str) -> int:
        self._pending += s
        *lines, self._pending = self._pending.split("\n")
        if lines:
            with self._lock:
                self.out.write("".join(f"{self.prefix}{line}\n" for line in lines))
                self.out.flush()
        return len(s)

    def writable(self) -> bool:
        return True


def case_console(console: Console, prefix: str) -> Console:
    """A console for one of several cases running at once: plain lines (no live progress bar,
    which a terminal can show only one of) onto ``console``'s stream, each after ``prefix``."""
    return Console(file=_Prefixed(console.file, prefix), force_terminal=False, no_color=True,
                   width=max(40, console.width - len(prefix)), highlight=False, quiet=console.quiet)
