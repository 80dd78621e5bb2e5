"""The files of a sweep folder: ``results.jsonl`` (one record per finished run, appended
and fsynced as runs finish; a truncated last line from a kill is ignored) and ``sweep.json``
(the manifest: store and its identity, strategy, space, training options, status, outcomes;
rewritten atomically). Any other damage is a ResultsFileError naming the file and the fix."""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from students.errors import StudentsError
from students.sweep.points import RUNS_DIR

RESULTS, MANIFEST = "results.jsonl", "sweep.json"
RECORD_VERSION = 1
RUN_RECORDS = ("run_config.json", "metrics.jsonl", "summary.json")  # what a run folder keeps without its model


class ResultsFileError(StudentsError, ValueError):
    """SWEEP_DIR's results.jsonl or sweep.json cannot be used (corrupt line, other store)."""


def load_results(sweep_dir: str | os.PathLike[str], repair: bool = False) -> dict[str, dict[str, Any]]:
    """The records of SWEEP_DIR/results.jsonl by key. A truncated last line is ignored (and,
    with ``repair``, cut off so appends start on a fresh line); any other unreadable line
    raises ResultsFileError."""
    path = Path(sweep_dir) / RESULTS
    if not path.exists():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records: dict[str, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            records[rec["key"]] = rec
        except (ValueError, KeyError, TypeError) as exc:
            if i == len(lines) - 1:  # no newline after it: a write cut short by a kill
                if repair:
                    with open(path, "r+b") as f:
                        f.truncate(len(raw) - len(line))
                break
            raise ResultsFileError(f"line {i + 1} of {path} is not a results record ({exc}); delete that line "
                                   "(its run is redone on the next sweep) or the file") from exc
    return records


def append_record(sweep_dir: Path, record: Mapping[str, Any]) -> None:
    """Append one line to results.jsonl and make it durable before returning."""
    with open(sweep_dir / RESULTS, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_manifest(sweep_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """SWEEP_DIR/sweep.json, or None when the folder has none. Raises ResultsFileError,
    naming the file and the fix, when it is not a JSON object (cut short, edited, binary)."""
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_bytes())
        if not isinstance(manifest, dict):
            raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ResultsFileError(f"{path} is not a sweep manifest ({type(exc).__name__}: {exc}); delete it and rerun "
                               f"the same `students sweep` command, which writes it again (the finished runs in "
                               f"{RESULTS} are kept)") from exc
    return manifest


def write_manifest(sweep_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Write SWEEP_DIR/sweep.json atomically (a temporary file, then a rename)."""
    path = sweep_dir / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def check_same_store(sweep_dir: Path, old: Mapping[str, Any] | None, identity: Mapping[str, Any]) -> None:
    """Refuse to continue a sweep folder whose manifest ``old`` recorded another store (other
    data) or other teacher choices (ths, tll resolving to other checkpoints)."""
    old_id = (old or {}).get("store_identity")
    if not isinstance(old_id, Mapping):
        return
    if old_id.get("dataset_fingerprint") != identity["dataset_fingerprint"]:
        raise ResultsFileError(f"{sweep_dir} holds a sweep of another store (dataset fingerprint "
                               f"{str(old_id.get('dataset_fingerprint'))[:12]}, this store "
                               f"{identity['dataset_fingerprint'][:12]}); pass a new --out folder")
    teachers = old_id.get("teachers") or {}
    moved = {t: (teachers[t], c) for t, c in identity["teachers"].items() if teachers.get(t, c) != c}
    if moved:
        raise ResultsFileError(f"the store's teacher choice changed since {sweep_dir} was swept ("
                               + ", ".join(f"{t}: {a} -> {b}" for t, (a, b) in moved.items())
                               + "); pass a new --out folder")


def prune_models(sweep_dir: Path, keys: Iterable[str]) -> int:
    """Delete the student model (weights, model config, tokenizer, checkpoint folders) of the
    runs ``keys`` under SWEEP_DIR/runs/, keeping RUN_RECORDS; returns how many folders lost files."""
    pruned = 0
    for key in sorted(keys):
        folder = sweep_dir / RUNS_DIR / key
        extra = [p for p in folder.iterdir() if p.name not in RUN_RECORDS] if folder.is_dir() else []
        for p in extra:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        pruned += bool(extra)
    return pruned
