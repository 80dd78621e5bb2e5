"""The numbers of a study report: each case's baselines, recommended configuration, winner
and teacher on one split, and the aggregates the paper reports across cases.

    OUT/study.json + each case's sweep folder (students.report.load_report) -> CaseNumbers
    -> RewardSummary per KD parameter, the recommended configuration's share of cases that
    beat both baselines, the teacher-student gap it closes, its relative gains

Definitions (docs/study.md):
* R of a parameter, in one case: the sweep's reward (docs/sweeps.md): mean validation metric
  with the alternative minus with the default, at the same greedy stage; across cases: mean,
  median, sample std, min, max, wins (R > 0), losses (R < 0), ties.
* S: a configuration's metric on the case's split (test when every compared configuration
  has it, else validation), mean over seeds; T: the ths teacher checkpoint's on the same split.
* gap closed = (S_kd - S_noKD) / (T - S_noKD) (None when T <= S_noKD: no gap to close);
  relative gain of a over b = (S_a - S_b) / S_b.
* a comparison is "within the seed spread" when the larger seed std of the two exceeds
  |S_a - S_b| (None with one seed: no spread measured).
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from students.errors import StudentsError
from students.sweep.strategies import TUNED

CALIBRATION = ("ece", "brier")  # keys a score dict may hold (teachers' split_scores, students' *_eval)
ROLES = ("no_kd", "hinton", "recommended", "winner")


class StudyFolderError(StudentsError, FileNotFoundError):
    """A folder holds no study (no study.json) or a damaged one."""


@dataclass(frozen=True)
class RewardSummary:
    """R of one parameter over the cases that measured it."""

    n: int
    mean: float | None
    median: float | None
    std: float | None
    min: float | None
    max: float | None
    wins: int
    losses: int
    ties: int


def summarize(values: Sequence[float]) -> RewardSummary:
    """Mean, median, sample std (None below 2 values), range, wins (> 0), losses (< 0), ties."""
    v = list(values)
    if not v:
        return RewardSummary(0, None, None, None, None, None, 0, 0, 0)
    return RewardSummary(len(v), statistics.fmean(v), statistics.median(v), statistics.stdev(v) if len(v) > 1 else None,
                         min(v), max(v), sum(x > 0 for x in v), sum(x < 0 for x in v), sum(x == 0 for x in v))


def gap_closed(s_kd: float | None, s_nokd: float | None, teacher: float | None) -> float | None:
    """(S_kd - S_noKD) / (T - S_noKD); None when a value is missing or T <= S_noKD."""
    if s_kd is None or s_nokd is None or teacher is None or teacher <= s_nokd:
        return None
    return (s_kd - s_nokd) / (teacher - s_nokd)


def relative_gain(a: float | None, b: float | None) -> float | None:
    """(a - b) / b; None when a value is missing or b is 0."""
    return None if a is None or b is None or b == 0 else (a - b) / b


def within_spread(diff: float | None, spread: float | None) -> bool | None:
    """True when the seed spread exceeds |diff| (the difference is not resolved); None without one."""
    return None if diff is None or spread is None else spread > abs(diff)


def share(flags: Sequence[bool | None]) -> tuple[int, int, float | None]:
    """(true count, count of known flags, their ratio) over the flags that are not None."""
    known = [f for f in flags if f is not None]
    return sum(known), len(known), (sum(known) / len(known) if known else None)


@dataclass(frozen=True)
class Score:
    """A configuration's metric on a case's split over its seeds, and its calibration (None
    when its records lack ``ece``/``brier``)."""

    label: str
    mean: float | None
    std: float | None
    n: int
    ece: float | None = None
    brier: float | None = None


def _mean_key(evals: list[dict[str, Any] | None], key: str) -> float | None:
    got = [e.get(key) for e in evals if e is not None]
    return statistics.fmean(got) if got and len(got) == len(evals) and None not in got else None


def score_of(label: str, records: list[dict[str, Any]], split: str) -> Score:
    """The Score of a configuration's run records (one per seed) on ``split`` ("test" or "val")."""
    values = [r[split] for r in records if r.get(split) is not None]
    if not values or len(values) < len(records):
        return Score(label, None, None, len(records))
    evals = [r.get(f"{split}_eval") for r in records]
    std = statistics.stdev(values) if len(values) > 1 else None
    return Score(label, statistics.fmean(values), std, len(values), *(_mean_key(evals, k) for k in CALIBRATION))


@dataclass
class CaseNumbers:
    """One (store, size): its scores on ``split``, the teacher's, its rewards, and the
    recommended configuration against both baselines."""

    store: str
    size: int
    folder: str
    metric: str
    split: str  # "test" or "validation"
    complete: bool
    scores: dict[str, Score]  # ROLES -> Score
    teacher: Score | None  # the ths checkpoint on the same split (n = 0: not a student)
    teachers: dict[str, Score] = field(default_factory=dict)  # every teacher value the sweep used (ths, tll, ...)
    rewards: list[dict[str, Any]] = field(default_factory=list)  # key, parameter, r, spread, within_spread
    paired: dict[str, Any] = field(default_factory=dict)

    def diff(self, a: str, b: str) -> tuple[float | None, float | None]:
        """S_a - S_b and the larger seed std of the two (None with one seed)."""
        sa, sb = self.scores[a], self.scores[b]
        if sa.mean is None or sb.mean is None:
            return None, None
        spread = max(sa.std, sb.std) if sa.std is not None and sb.std is not None else None
        return sa.mean - sb.mean, spread

    def derived(self) -> dict[str, Any]:
        """The recommended configuration against both baselines, and the gap each KD run closes."""
        t = self.teacher.mean if self.teacher is not None else None
        d_h, spread_h = self.diff("recommended", "hinton")
        d_n, spread_n = self.diff("recommended", "no_kd")
        beats = None if d_h is None or d_n is None else d_h > 0 and d_n > 0
        marks = [within_spread(d_h, spread_h), within_spread(d_n, spread_n)]
        s = {k: v.mean for k, v in self.scores.items()}
        return {"recommended_minus_hinton": d_h, "recommended_minus_no_kd": d_n, "beats_both": beats,
                "within_seed_spread": None if None in marks else any(marks),
                "gap_closed": {k: gap_closed(s[k], s["no_kd"], t) for k in ("recommended", "hinton", "winner")},
                "relative_gain_over_hinton": relative_gain(s["recommended"], s["hinton"]),
                "relative_gain_over_no_kd": relative_gain(s["recommended"], s["no_kd"]),
                "winner_minus_hinton": self.diff("winner", "hinton")[0]}

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "size": self.size, "folder": self.folder, "metric": self.metric,
                "split": self.split, "complete": self.complete,
                "scores": {k: asdict(v) for k, v in self.scores.items()},
                "teacher": asdict(self.teacher) if self.teacher else None,
                "teachers": {k: asdict(v) for k, v in self.teachers.items()},
                "rewards": self.rewards, "paired": self.paired, **self.derived()}


def reward_key(parameter: str, default: str, alternative: str) -> str:
    """How a reward is named across cases: "temperature (tuned)", "distance: ce -> mse"."""
    return f"{parameter} (tuned)" if parameter in TUNED else f"{parameter}: {default} -> {alternative}"


def read_study(study_dir: str | Path) -> dict[str, Any]:
    """OUT/study.json; StudyFolderError naming the fix when it is missing or damaged."""
    path = Path(study_dir) / "study.json"
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
            raise ValueError("not a study manifest")
    except FileNotFoundError as exc:
        raise StudyFolderError(f"{study_dir} holds no study.json; run `students study --out {study_dir}` "
                               "first") from exc
    except (OSError, ValueError) as exc:
        raise StudyFolderError(f"{path} is not a study manifest ({exc}); delete it and rerun the same "
                               "`students study` command (finished runs are kept)") from exc
    return data
