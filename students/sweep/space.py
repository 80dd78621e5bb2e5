"""The sweep space: the values a sweep draws from, from flags or a TOML file, validated
with one SweepSpaceError that lists every problem (each ending "Got X instead")."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from students.config import DISTANCES, STUDENT_TEMPERATURES, TAILS
from students.errors import ConfigError

PARAMS = ("distance", "temperature", "student_temperature", "alpha", "teacher", "layers", "seeds", "tail", "beta")
SPACE_KEYS = PARAMS + ("base_temperature", "base_alpha")


class SweepSpaceError(ConfigError):
    """A sweep space (flags or TOML file) is invalid; the message lists every problem."""


@dataclass(frozen=True)
class SweepSpace:
    """The values a sweep draws from; validated at construction (one SweepSpaceError).

    ``seeds`` lists the seeds every configuration is trained with. ``base_temperature``
    and ``base_alpha`` are the Hinton configuration's tau_t and alpha (the greedy start
    and both fixed baselines). ``tail`` and ``beta`` (causal-LM stores only: the teacher's
    mass outside its top-k and the generalized JSD's beta) start from their first value, the
    baselines' too; other stores take only the defaults."""

    distance: tuple[str, ...] = ("ce", "mse")
    temperature: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    student_temperature: tuple[str, ...] = ("teacher", "1")
    alpha: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    teacher: tuple[str, ...] = ("ths", "tll")
    layers: tuple[int, ...] = (2,)
    seeds: tuple[int, ...] = (0,)
    tail: tuple[str, ...] = ("bucket",)
    beta: tuple[float, ...] = (0.5,)
    base_temperature: float = 2.0
    base_alpha: float = 0.5

    def __post_init__(self) -> None:
        problems = space_problems(self)
        if problems:
            raise SweepSpaceError("invalid sweep space: " + "; ".join(problems), problems)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# entry -> (is a value allowed, what the values must be)
_CHECKS = {
    "distance": (lambda v: v in DISTANCES, f"one of {', '.join(DISTANCES)}"),
    "temperature": (lambda v: _num(v) and 0 < v < math.inf, "finite numbers > 0"),
    "student_temperature": (lambda v: v in STUDENT_TEMPERATURES, f"one of {', '.join(STUDENT_TEMPERATURES)}"),
    "alpha": (lambda v: _num(v) and 0 <= v <= 1, "numbers in [0, 1]"),
    "teacher": (lambda v: isinstance(v, str) and v != "", "ths, tll or a checkpoint name"),
    "layers": (lambda v: _count(v) and v >= 1, "integers >= 1"),
    "seeds": (lambda v: _count(v) and v >= 0, "integers >= 0"),
    "tail": (lambda v: v in TAILS, f"one of {', '.join(TAILS)}"),
    "beta": (lambda v: _num(v) and 0 < v < 1, "numbers in (0, 1)"),
}


def space_problems(space: SweepSpace) -> list[str]:
    """Every problem with the values of ``space``, each ending "Got X instead"."""
    p = [f"{name} has no values (empty grid); give at least one. Got [] instead"
         for name in PARAMS if not getattr(space, name)]
    for name, (ok, what) in _CHECKS.items():
        wrong = [v for v in getattr(space, name) if not ok(v)]
        if wrong:
            p.append(f"{name} values must be {what}. Got {', '.join(map(repr, wrong))} instead")
    if not (_num(space.base_temperature) and 0 < space.base_temperature < math.inf):
        p.append(f"base_temperature must be a finite number > 0. Got {space.base_temperature!r} instead")
    if not (_num(space.base_alpha) and 0 < space.base_alpha < 1):
        p.append(f"base_alpha (Hinton's alpha: labels and teacher both used) must be in (0, 1). "
                 f"Got {space.base_alpha!r} instead")
    return p


def _coerce(name: str, value: Any) -> tuple[Any, ...] | float:
    """One space entry from TOML (scalar or list) or a flag (comma-separated string)."""
    if name in ("base_temperature", "base_alpha"):
        return float(value) if isinstance(value, str) else value
    if isinstance(value, str):
        items: list[Any] = [x.strip() for x in value.split(",") if x.strip()]
        if name == "seeds" and len(items) == 1 and items[0].isdigit():
            return tuple(range(int(items[0])))  # --seeds N: seeds 0..N-1
        if name in ("temperature", "alpha", "beta"):
            items = [float(x) for x in items]
        elif name in ("layers", "seeds"):
            items = [int(x) for x in items]
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if name == "seeds" and not isinstance(value, (list, tuple)) and _num(value):
            return tuple(range(int(value)))  # seeds = N in a TOML file
        if name in ("temperature", "alpha", "beta"):
            items = [float(x) if _num(x) else x for x in items]
    if name == "student_temperature":  # TOML users write 1 for "1"
        items = ["1" if _num(x) and x == 1 else x for x in items]
    return tuple(dict.fromkeys(items))  # drop repeats, keep order


def parse_space(data: Mapping[str, Any], source: str = "flags") -> SweepSpace:
    """A SweepSpace from a mapping of entry -> value(s); every problem in one SweepSpaceError.

    Values are a scalar, a list, or (from flags) a comma-separated string; ``seeds`` may
    also be a count N (seeds 0..N-1)."""
    problems = [f"unknown parameter {k!r} (known: {', '.join(SPACE_KEYS)}). Got {k!r} instead"
                for k in data if k not in SPACE_KEYS]
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if k not in SPACE_KEYS:
            continue
        try:
            kwargs[k] = _coerce(k, v)
        except (TypeError, ValueError):
            problems.append(f"{k} values must be {'integers' if k in ('layers', 'seeds') else 'numbers'}. "
                            f"Got {v!r} instead")
    try:
        space = SweepSpace(**kwargs)
    except SweepSpaceError as exc:
        problems += exc.problems
    if problems:
        raise SweepSpaceError(f"invalid sweep space ({source}): " + "; ".join(problems), problems)
    return space


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The top-level table of the TOML file ``path``; SweepSpaceError naming the fix when
    it is missing, a folder, unreadable, not UTF-8 text or not TOML."""
    try:
        import tomllib  # stdlib from Python 3.11
    except ImportError as exc:
        raise SweepSpaceError("reading --space FILE.toml needs Python 3.11 (tomllib); "
                              "pass the values as flags instead") from exc
    p = Path(path)
    if p.is_dir():
        raise SweepSpaceError(f"--space {path} is a folder; pass --space FILE.toml, a TOML file with the space")
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise SweepSpaceError(f"no sweep space file at {path}; pass --space FILE.toml with an existing file") from exc
    except OSError as exc:
        raise SweepSpaceError(f"cannot read sweep space file {path} ({exc.strerror or exc}); "
                              "pass --space FILE.toml with a file you can read") from exc
    except UnicodeDecodeError as exc:
        raise SweepSpaceError(f"sweep space file {path} is not UTF-8 text (byte {exc.start}); "
                              "pass --space FILE.toml, a TOML text file") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SweepSpaceError(f"cannot parse sweep space file {path} ({exc}); fix its TOML syntax") from exc


def load_space(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None) -> SweepSpace:
    """The space of a TOML file (top-level keys = SPACE_KEYS) with flag ``overrides`` on
    top (None values ignored). Raises SweepSpaceError."""
    data = _read_toml(path) if path is not None else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return parse_space(data, "flags" if path is None else f"{path}")
