"""Rich console and progress bars (examples/s) shared by the commands; output on stderr."""
from __future__ import annotations

import rich.progress
import rich.text
from rich.console import Console

console = Console(stderr=True)


class Progress(rich.progress.Progress):
    """A progress bar with rows done, rate and time left."""

    def __init__(self, unit: str = "ex") -> None:
        super().__init__(
            rich.progress.TextColumn("{task.description}"),
            rich.progress.BarColumn(),
            rich.progress.MofNCompleteColumn(),
            RateColumn(unit),
            rich.progress.TimeElapsedColumn(),
            rich.progress.TimeRemainingColumn(),
            console=console,
        )


class RateColumn(rich.progress.ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: rich.progress.Task) -> rich.text.Text:
        """Average rate since the bar started (rows already done on a resume do not count)."""
        elapsed = task.elapsed or 0.0
        done = task.completed - task.fields.get("resumed_from", 0)
        speed = done / elapsed if elapsed > 0 else None
        return rich.text.Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")
