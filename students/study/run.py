"""Run (or resume) a study: the greedy search with its baselines for every (store, size),
one sweep folder each, through the sweep machinery (students/sweep/).

    StudyConfig -> OUT/study.json "running" (the plan) -> per case: run_sweep(OUT/<store>/L<size>)
    -> OUT/study.json "complete"

Every run is recorded by its sweep as it finishes, so a killed study resumes where it
stopped: rerunning the same command trains only the runs that no results.jsonl holds. The
cases run one after another; ``workers`` parallelises the runs within each greedy stage
(the sweep's process pool). Two studies on one folder are refused (a lock beside it).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from logitstore.lock import exclusive
from students.config import output_dir
from students.study.config import StudyCase, StudyConfig
from students.sweep import SweepResult, run_sweep
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
        done: list[tuple[StudyCase, SweepResult]] = []
        for i, case in enumerate(config.cases):
            console.rule(f"study case {i + 1}/{len(config.cases)}: store {case.store}, {case.size}-layer student "
                         f"({case.sweep.template.epochs} epochs) -> {case.sweep.out}")
            done.append((case, run_sweep(case.sweep, run_fn, console, check_store)))
        manifest["status"] = "complete"
        write_study_manifest(out, manifest)
    trained = sum(r.ran for _, r in done)
    console.print(f"study complete: {len(done)} case(s), {trained} run(s) trained now; "
                  f"`students report {out}` for the study report")
    return StudyResult(out, done)
