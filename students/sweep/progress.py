"""The one progress line of a sweep: runs done / total and an ETA from the runs trained so far.

A grid knows every run up front, so its line counts the whole sweep ("grid sweep: 12/40
runs"). Greedy decides each stage's candidates from the stage before, so its total is known
one stage at a time and the line says so ("L1 stage alpha: 3/8 runs ... for this stage").
Runs found in results.jsonl (a resumed sweep) and copies of another run (ths = tll) count as
done without time; the ETA is the mean wall time per run trained in this process so far
(with --workers N or on Ray, N runs finish in the time of one) times the runs left.

On a terminal the line is a rich progress bar redrawn in place; elsewhere (a log file, CI)
it is printed as a plain line after each change, so logs show it too.
"""
from __future__ import annotations

import time
from datetime import timedelta
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

#: What the greedy line adds: its total covers one stage only.
GREEDY_NOTE = "greedy: each stage's runs are known when it starts"


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class SweepProgress:
    """The sweep's progress line. ``total`` = the runs of the whole sweep (grid); None =
    greedy, whose ``stage`` calls set a new total per stage."""

    def __init__(self, console: Console, total: int | None = None) -> None:
        self.console, self.fixed = console, total is not None
        self.label, self.total, self.done = ("grid sweep", total, 0) if total is not None else ("", 0, 0)
        self.trained, self.started = 0, time.perf_counter()
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), console=console,
                             disable=not console.is_terminal)
        self._task = self._bar.add_task(self.line(), total=max(1, self.total))

    def __enter__(self) -> "SweepProgress":
        self._bar.start()
        self.started = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._bar.stop()

    def stage(self, label: str, total: int) -> None:
        """A greedy stage starts with ``total`` runs (a grid's line ignores stages)."""
        if not self.fixed:
            self.label, self.total, self.done = label, total, 0

    def advance(self, runs: int = 1, trained: bool = False) -> None:
        """``runs`` more runs are done; ``trained`` = they took training time (else found done or copied)."""
        if runs <= 0:
            return
        self.done += runs
        self.trained += runs if trained else 0
        self._bar.update(self._task, description=self.line(), completed=self.done, total=max(1, self.total))
        if not self.console.is_terminal:
            self.console.print(self.line(), highlight=False, soft_wrap=True)  # one line in a log, however narrow

    def eta(self) -> str:
        left = self.total - self.done
        if left <= 0:
            return "done"
        if self.trained == 0:
            return "ETA after the first run"
        per_run = (time.perf_counter() - self.started) / self.trained
        return f"ETA {_clock(left * per_run)}" + (" for this stage" if not self.fixed else "")

    def line(self) -> str:
        note = "" if self.fixed else f" ({GREEDY_NOTE})"
        return f"{self.label}: {self.done}/{self.total} runs, {self.eta()}{note}"
