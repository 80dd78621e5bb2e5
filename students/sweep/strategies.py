"""Sweep strategies, per student size: the fixed baselines, ``greedy`` (the study's search)
and ``grid`` (every combination), and the rewards they report.

* Baselines of every sweep: the Hinton configuration (CE, tau_s = tau_t, ths teacher,
  alpha = base_alpha < 1, tau_t = base_temperature), the study's recommended one (tll, CE,
  tau_s = 1, same tau_t and alpha) and the student without KD (alpha = 0).
* ``greedy``: start from Hinton; tune tau_t over its grid, then alpha over its grid (the
  current value competes; ties keep the current value, then the first grid value); then
  for each categorical parameter in GREEDY_ORDER (distance, teacher, student_temperature)
  try every other value in the space and keep the best one only when its mean validation
  metric over seeds is strictly higher; then (causal-LM stores, when the space has more than
  one value) the tail and beta (the latter matters only if gjsd won the distance stage).
  tail and beta start from the space's first value, in every baseline too.
* ``grid``: the product of the space's values, in the same batch as the baselines.

The reward of a parameter is R = metric(alternative) - metric(default), both at the same
stage (for tau_t and alpha: the tuned value versus the value the stage started from).
A strategy gets its results from ``run_points`` (Runner.run_points: trains what is missing).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from students.sweep.points import Point, PointStats
from students.sweep.space import SweepSpace

STRATEGIES = ("grid", "greedy")
GREEDY_ORDER = ("temperature", "alpha", "distance", "teacher", "student_temperature", "tail", "beta")
TUNED = ("temperature", "alpha", "beta")  # tuned over their grids; the rest are categorical alternatives
LM_ONLY = ("tail", "beta")  # causal-LM stores; a stage only when the space gives more than one value
HINTON = {"distance": "ce", "student_temperature": "teacher", "teacher": "ths"}
RECOMMENDED = {"distance": "ce", "student_temperature": "1", "teacher": "tll"}

RunPoints = Callable[[list[Point], str], Mapping[Point, PointStats]]


@dataclass(frozen=True)
class Reward:
    """R = mean validation metric with ``alternative`` minus with ``default`` (same stage).
    ``spread`` is the larger seed std of the two (None with one seed); the two configurations
    are recorded (``*_point``, Point.to_dict(); None in sweeps recorded before) so that the
    report can pair their runs seed by seed."""

    layers: int
    parameter: str
    default: str
    alternative: str
    r: float
    spread: float | None
    kept: bool
    default_point: dict[str, Any] | None = None
    alternative_point: dict[str, Any] | None = None


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


def baselines(space: SweepSpace, layers: int) -> dict[str, Point]:
    """The fixed configurations of every sweep: hinton, recommended and no_kd."""
    hinton = Point(temperature=space.base_temperature, alpha=space.base_alpha, layers=layers, tail=space.tail[0],
                   beta=space.beta[0], **HINTON)
    return {"hinton": hinton.canonical(),
            "recommended": replace(hinton, **RECOMMENDED).canonical(),
            "no_kd": replace(hinton, alpha=0.0).canonical()}


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
                      stats[a].val_mean - base.val_mean, spread(stats[a]), a == chosen, cur.to_dict(), a.to_dict())
               for a in ([best] if param in TUNED else others)]
    record = {"parameter": param, "candidates": [{"point": c.to_dict(), "val_mean": stats[c].val_mean}
                                                 for c in cands], "chosen": chosen.to_dict()}
    return chosen, rewards, record


def _alternatives(space: SweepSpace, param: str) -> list[Any]:
    """The values a stage tries: a tuned parameter's whole grid, else every non-Hinton value."""
    start = HINTON.get(param, getattr(space, param)[0])
    return [v for v in getattr(space, param) if param in TUNED or v != start]


def greedy(space: SweepSpace, layers: int, run_points: RunPoints) -> LayersOutcome:
    """The study's greedy search for one student size (order: GREEDY_ORDER)."""
    base = baselines(space, layers)
    run_points(list(base.values()), f"L{layers} stage baselines (hinton, recommended, no KD)")
    out = LayersOutcome(layers, base["hinton"], base["recommended"], base["no_kd"], base["hinton"])
    current = base["hinton"]
    for param in GREEDY_ORDER:
        if param in LM_ONLY and len(getattr(space, param)) < 2:
            continue
        values = _alternatives(space, param)
        stats = run_points([current] + [replace(current, **{param: v}) for v in values], f"L{layers} stage {param}")
        current, rewards, record = _stage(param, current, values, stats, keep_best=True)
        out.rewards += rewards
        out.stages.append(record)
    out.winner = current
    return out


def grid_product(space: SweepSpace, layers: int) -> list[Point]:
    """The configurations of a grid for one student size (canonical, each once, in product order)."""
    return list(dict.fromkeys(Point(d, t, s, a, te, layers, ta, b).canonical() for d, t, s, a, te, ta, b in
                              itertools.product(space.distance, space.temperature, space.student_temperature,
                                                space.alpha, space.teacher, space.tail, space.beta)))


def grid_runs(space: SweepSpace) -> int:
    """How many runs a grid sweep has in all (every size, baselines included, times the seeds)."""
    per_size = [set(grid_product(space, k)) | set(baselines(space, k).values()) for k in space.layers]
    return sum(map(len, per_size)) * len(space.seeds)


def grid(space: SweepSpace, layers: int, run_points: RunPoints) -> LayersOutcome:
    """Every combination for one student size, plus the baselines in the same batch. Rewards
    are one-at-a-time changes of the Hinton configuration that the grid contains."""
    base = baselines(space, layers)
    ranked = grid_product(space, layers)
    stats = dict(run_points(list(base.values()) + ranked, f"L{layers} grid"))
    out = LayersOutcome(layers, base["hinton"], base["recommended"], base["no_kd"], base["hinton"])
    out.winner = max(ranked, key=lambda p: stats[p].val_mean)
    for param in GREEDY_ORDER:
        if param in LM_ONLY and len(getattr(space, param)) < 2:
            continue
        _, rewards, _ = _stage(param, base["hinton"], _alternatives(space, param), stats, keep_best=False)
        out.rewards += rewards
    return out
