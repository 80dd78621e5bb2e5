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
        speed = task.finished_speed or task.speed
        return rich.text.Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")
