"""Early stopping on validation (`--patience N`): the rule `train` follows after each evaluation.

A run evaluates on validation at the end of every epoch, or every ``--eval-every`` steps. The
best student so far is the one with the highest task metric (ties keep the earlier one, as
``train`` always did). With patience N, the run stops after N evaluations in a row that did
not improve on the best; ``train`` then restores the best student, as it does at the end of
every run. Without patience (None) a run never stops early.

    stop = EarlyStop(patience=2)
    stop.update(improved=True)    # -> False (best so far)
    stop.update(improved=False)   # -> False (1 without improvement)
    stop.update(improved=False)   # -> True  (2 without improvement: stop)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EarlyStop:
    """Counts evaluations without improvement; ``update`` says when to stop. ``patience``
    None never stops."""

    patience: int | None = None
    bad: int = 0  # evaluations since the last improvement

    def update(self, improved: bool) -> bool:
        """Record one evaluation; True when the run should stop now."""
        self.bad = 0 if improved else self.bad + 1
        return self.patience is not None and self.bad >= self.patience


def stopped_record(stopped: bool, step: int, epoch: int, best_step: int, best_epoch: int) -> dict[str, object]:
    """The ``early_stop`` entry of summary.json: whether the run stopped before its last step,
    the step and epoch it stopped at (its last step otherwise) and those of the best student."""
    return {"stopped": stopped, "step": step, "epoch": epoch, "best_step": best_step, "best_epoch": best_epoch}
