"""The settings of a study: which stores, student sizes and seeds, the search space and the
training options per store, from a TOML file (Python's tomllib) and/or command-line flags.

    [study TOML] + flags -> StudyConfig (validated once: one StudyError listing every problem)
      .cases -> one StudyCase per (store, size), each a SweepConfig for OUT/<store>/L<size>

Precedence, lowest first: TrainConfig's and SweepSpace's defaults; the file's top-level
``[space]``, ``[train]`` and ``[epochs]``; a ``[[stores]]`` entry's own tables; command-line
flags (they apply to every store). ``[epochs]`` maps a student size to its epochs (TOML keys
are strings: ``1 = 12``); sizes it does not name use ``train.epochs``. docs/study.md has an
example. Relative store paths are relative to the current folder, as on the command line.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from students.config import TrainConfig
from students.errors import ConfigError
from students.sweep.recipe import SAVE_MODELS, SweepConfig
from students.sweep.space import SPACE_KEYS, SweepSpace, SweepSpaceError, parse_space

TOP_KEYS = ("out", "sizes", "seeds", "workers", "ray", "parallel_cases", "save_models", "space", "train", "epochs",
            "stores")
STORE_KEYS = ("name", "path", "sizes", "seeds", "space", "train", "epochs")
#: TrainConfig fields a study sets itself (per run, per case) or that only print: not in [train].
NOT_TRAIN_KEYS = ("store", "out", "layers", "seed", "distance", "temperature", "student_temperature", "alpha",
                  "teacher", "progress")
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in NOT_TRAIN_KEYS)
SPACE_TABLE_KEYS = tuple(k for k in SPACE_KEYS if k not in ("layers", "seeds"))  # sizes, seeds: their own keys
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HINTS = get_type_hints(TrainConfig)
_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class StudyError(ConfigError):
    """A study file or its flags are invalid; the message lists every problem and its fix."""


@dataclass(frozen=True)
class StudyCase:
    """One (store, size) of a study: its sweep, in OUT/<store>/L<size>."""

    store: str  # the store's name in the study
    path: str
    size: int
    sweep: SweepConfig

    @property
    def folder(self) -> str:
        """The sweep folder relative to the study folder."""
        return f"{self.store}/L{self.size}"


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: its folder and its cases (store order, then size order)."""

    out: str
    cases: tuple[StudyCase, ...]
    workers: int = 1
    ray: str | None = None  # the sweeps' Ray cluster (students/sweep/ray_executor.py), or None
    parallel_cases: int = 1  # cases run at once, sharing the workers (or the Ray cluster)

    def to_dict(self) -> dict[str, Any]:
        """What study.json records of the plan (no training happens here)."""
        return {"out": self.out, "workers": self.workers, "ray": self.ray, "parallel_cases": self.parallel_cases,
                "cases": [{"store": c.store, "path": c.path, "size": c.size, "folder": c.folder,
                           "epochs": c.sweep.template.epochs, "space": c.sweep.space.to_dict(),
                           "train_options": {k: getattr(c.sweep.template, k) for k in TRAIN_KEYS}}
                          for c in self.cases]}


def _unknown(where: str, table: Mapping[str, Any], known: tuple[str, ...]) -> list[str]:
    return [f"unknown key {k!r} in {where} (known: {', '.join(known)}); fix or remove it" for k in table
            if k not in known]


def _table(where: str, value: Any, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{where} must be a table (`[{where}]` or `{where} = {{...}}`). Got {value!r} instead")
        return {}
    return dict(value)


def _kinds(key: str) -> list[Any]:
    """The types a TrainConfig field takes, None aside ([None] for a key that is no field)."""
    return [t for t in get_args(_HINTS.get(key)) if t is not type(None)] or [_HINTS.get(key)]


def _as_field(key: str, value: Any) -> Any:
    """``value`` as its field stores it: an integer for a float field as a float, since run
    keys hash 0 and 0.0 apart (`weight_decay = 0` here and `--weight-decay 0` would not share runs)."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    return float(value) if whole and float in _kinds(key) and int not in _kinds(key) else value


def _fits(value: Any, kinds: list[Any]) -> bool:
    """Whether a TOML value fits a field of types ``kinds`` (an integer fits a float field)."""
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds
    return any(isinstance(value, t) for t in kinds if t in (float, str))


def _wrong_types(where: str, table: Mapping[str, Any]) -> dict[str, str]:
    """Key -> problem for each value of a [train] table whose TOML type does not fit its
    TrainConfig field (a string for an integer, 2.5 for a batch size, true for patience)."""
    out = {}
    for k, v in table.items():
        if k in _HINTS:
            kinds = _kinds(k)
            if not _fits(v, kinds):
                out[k] = f"{where} {k} must be {_KINDS.get(kinds[0], kinds[0])}. Got {v!r} instead"
    return out


def _sizes(where: str, value: Any, problems: list[str]) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in items):
        problems.append(f"{where} must be student sizes (integers >= 1, e.g. sizes = [1, 2]). Got {value!r} instead")
        return ()
    return tuple(dict.fromkeys(items))


def _epochs(where: str, table: Mapping[str, Any], problems: list[str]) -> dict[int, int]:
    """``[epochs]``: size -> epochs (keys are strings in TOML)."""
    out: dict[int, int] = {}
    for k, v in table.items():
        if not (str(k).isdigit() and int(k) >= 1 and isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            problems.append(f"{where} maps a student size to its epochs (e.g. `1 = 12`). Got {k} = {v!r} instead")
        else:
            out[int(k)] = v
    return out


@dataclass(frozen=True)
class _Layer:
    """One level of settings (the file's top level or a store entry), before merging."""

    sizes: tuple[int, ...] | None
    seeds: Any
    space: dict[str, Any]
    train: dict[str, Any]
    epochs: dict[int, int]


def _layer(where: str, d: Mapping[str, Any], problems: list[str]) -> _Layer:
    sizes = _sizes(f"{where}sizes", d["sizes"], problems) if "sizes" in d else None
    space = _table(f"{where}space", d.get("space"), problems)
    train = _table(f"{where}train", d.get("train"), problems)
    problems += _unknown(f"[{where}space]", space, SPACE_TABLE_KEYS) + _unknown(f"[{where}train]", train, TRAIN_KEYS)
    wrong = _wrong_types(f"[{where}train]", train)
    problems += wrong.values()
    train = {k: _as_field(k, v) for k, v in train.items() if k not in wrong}  # wrong: reported, left out
    return _Layer(sizes, d.get("seeds"), space, train,
                  _epochs(f"[{where}epochs]", _table(f"{where}epochs", d.get("epochs"), problems), problems))


def _store_entries(data: Mapping[str, Any], cli_stores: list[str], problems: list[str]) -> list[dict[str, Any]]:
    """The [[stores]] of the file, then the --store flags (NAME=PATH or PATH; name: the file stem)."""
    entries = data.get("stores", [])
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        problems.append("stores must be a list of tables ([[stores]] with name and path). Got "
                        f"{entries!r} instead")
        entries = []
    out = [dict(e) for e in entries]
    for s in cli_stores:
        name, _, path = s.rpartition("=") if "=" in s and "://" not in s.split("=", 1)[0] else ("", "", s)
        out.append({"name": name or Path(path.rstrip("/")).stem, "path": path})
    for i, e in enumerate(out):
        problems += _unknown(f"[[stores]] entry {i + 1}", e, STORE_KEYS)
        if not isinstance(e.get("path"), str) or not e["path"]:
            problems.append(f"[[stores]] entry {i + 1} has no path; add `path = \"STORE.zarr\"`")
        e.setdefault("name", Path(str(e.get("path", ""))).stem)
        if not isinstance(e["name"], str) or not NAME.match(e["name"]):
            problems.append(f"store name {e['name']!r} must be letters, digits, '.', '_' or '-' (it names a folder); "
                            "set `name`")
    names = [str(e["name"]) for e in out]
    problems += [f"two stores are named {n!r}; give each its own `name`" for n in sorted(set(names))
                 if names.count(n) > 1]
    if not out:
        problems.append("no stores: add [[stores]] entries to the study file or pass --store PATH")
    return out


def _missing_store(name: str, path: str) -> str | None:
    if "://" in path or Path(path).is_dir():
        return None
    return f"store {name!r}: no store at {path}; build it with `logitstore build` or fix its path"


def _train_config(where: str, merged: dict[str, Any], path: str, out: str, size: int,
                  problems: list[str]) -> TrainConfig | None:
    try:
        return TrainConfig(store=path, out=out, layers=size, progress=False, **merged)
    except (ConfigError, TypeError) as exc:
        problems.append(f"{where}: {exc}")
        return None


def _space(where: str, merged: Mapping[str, Any], size: int, seeds: Any, problems: list[str]) -> SweepSpace | None:
    try:
        return parse_space({**merged, "layers": [size], "seeds": 1 if seeds is None else seeds}, where)
    except SweepSpaceError as exc:
        problems.append(str(exc))
        return None


def _cases(top: _Layer, entry: Mapping[str, Any], layer: _Layer, flags: Mapping[str, Any], out: str,
           workers: int, ray: str | None, save_models: str, problems: list[str]) -> list[StudyCase]:
    """The cases of one store: its sizes, each with the merged settings."""
    name, path = str(entry["name"]), str(entry.get("path", ""))
    sizes = flags.get("sizes") or layer.sizes or top.sizes or (2,)
    seeds = flags.get("seeds") if flags.get("seeds") is not None else (
        layer.seeds if layer.seeds is not None else top.seeds)
    space_in = {**top.space, **layer.space, **flags.get("space", {})}
    cases = []
    for size in sizes:
        epochs = {**top.epochs, **layer.epochs}
        train_in = {**top.train, **({"epochs": epochs[size]} if size in epochs else {}), **layer.train}
        if size in layer.epochs:  # the store's own [epochs] beats its [train].epochs
            train_in["epochs"] = layer.epochs[size]
        train_in.update(flags.get("train", {}))  # flags beat the whole file, [epochs] tables included
        folder = os.path.join(out, name, f"L{size}")
        template = _train_config(f"store {name!r}, size {size}", train_in, path, folder, size, problems)
        space = _space(f"store {name!r}, size {size}", space_in, size, seeds, problems)
        if template is not None and space is not None:
            sweep = SweepConfig(path, folder, "greedy", space, None if ray else workers, template, save_models, ray=ray)
            cases.append(StudyCase(name, path, size, sweep))
    return cases


def parse_study(data: Mapping[str, Any], flags: Mapping[str, Any] | None = None, source: str = "flags",
                check_stores: bool = True) -> StudyConfig:
    """A StudyConfig from the file's table ``data`` and ``flags`` (keys: stores (list of
    PATH or NAME=PATH), out, sizes, seeds, workers, ray, parallel_cases, save_models, space (dict), train (dict);
    None values are ignored). Raises StudyError listing every problem."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    problems = _unknown("the study file", data, TOP_KEYS) + _unknown("the --space file", flags.get("space", {}),
                                                                     SPACE_TABLE_KEYS)
    top = _layer("", data, problems)
    if "sizes" in flags:
        flags["sizes"] = _sizes("--sizes", flags["sizes"], problems)
    out = str(flags.get("out", data.get("out", "runs/study")))
    workers, save_models = flags.get("workers", data.get("workers", 1)), flags.get("save_models",
                                                                                  data.get("save_models", "best"))
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        problems.append(f"workers must be an integer >= 1. Got {workers!r} instead")
        workers = 1
    ray = flags.get("ray", data.get("ray"))
    if ray is not None and (not isinstance(ray, str) or not ray):
        problems.append(f"ray must be 'local', 'auto' or a cluster address (HOST:PORT). Got {ray!r} instead")
        ray = None
    elif ray is not None and workers != 1:
        problems.append(f"workers = {workers} sets the local process pool; with ray the cluster's free CPUs decide "
                        "how many runs train at once: drop workers (or drop ray)")
    parallel = _parallel_cases(flags.get("parallel_cases", data.get("parallel_cases", 1)), workers, ray, problems)
    if save_models not in SAVE_MODELS:
        problems.append(f"save_models must be one of {', '.join(SAVE_MODELS)}. Got {save_models!r} instead")
        save_models = "best"
    cases: list[StudyCase] = []
    for i, entry in enumerate(_store_entries(data, list(flags.get("stores", [])), problems)):
        layer = _layer(f"stores.{entry.get('name', i + 1)}.", {k: v for k, v in entry.items()
                                                                if k not in ("name", "path")}, problems)
        missing = _missing_store(str(entry["name"]), str(entry.get("path", ""))) if check_stores else None
        problems += [missing] if missing else []
        cases += _cases(top, entry, layer, flags, out, workers, ray, save_models, problems)
    if parallel > 1 and len({c.sweep.template.threads for c in cases}) > 1:
        problems.append(f"parallel_cases = {parallel} trains every case's runs on one shared pool, with one number "
                        "of threads per run, and the stores ask for different threads: set threads once (top-level "
                        "[train] or --threads)")
    if problems:
        raise StudyError(f"invalid study ({source}): " + "; ".join(dict.fromkeys(problems)), problems)
    return StudyConfig(out, tuple(cases), workers, ray, parallel)


def _parallel_cases(value: Any, workers: int, ray: str | None, problems: list[str]) -> int:
    """``parallel_cases`` checked: an integer >= 1, above 1 only with runs to share (workers > 1 or ray)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        problems.append(f"parallel_cases must be an integer >= 1. Got {value!r} instead")
        return 1
    if value > 1 and workers == 1 and ray is None:
        problems.append(f"parallel_cases = {value} shares the runs of {value} cases among the workers, and workers "
                        "= 1 trains one run at a time: raise workers (or use ray), or drop parallel_cases")
    return value


def load_study(path: str | os.PathLike[str] | None, flags: Mapping[str, Any] | None = None,
               check_stores: bool = True) -> StudyConfig:
    """The study of the TOML file ``path`` (None: flags only) with ``flags`` on top."""
    from students.sweep.space import _read_toml

    if path is not None and Path(path).is_dir():  # _read_toml would tell the user to pass --space FILE.toml
        raise StudyError(f"study file {path} is a folder; pass a study TOML file (docs/study.md)")
    try:
        data = _read_toml(path) if path is not None else {}
    except SweepSpaceError as exc:  # its messages say "sweep space file"; a study file is meant here
        raise StudyError(str(exc).replace("sweep space file", "study file").replace("--space FILE.toml",
                                                                                     "a study TOML file")) from exc
    return parse_study(data, flags, "flags" if path is None else str(path), check_stores)

