"""The ONNX export cache (`logitstore cache`): where it is, what it holds, and pruning it.

Location: ``$LOGITSTORE_CACHE`` (default ``~/.cache/logitstore``). Each export is a folder
``onnx/<key>/`` holding ``model.onnx`` and ``export.json`` (input names, parity error,
source checkpoint folder, weights sha256, the graph's size and sha256); the key hashes the
checkpoint's weights and config, the task and the exporter settings (logitstore/export.py),
and a build that reuses an entry touches its folder (its "last used" time). Folders named
``.export-*`` are exports in progress (or left by a killed one); ``.<key>.lock`` files let
one process at a time export a given key.

Locks: a build (and ``logitstore export``) holds the cache lock ``onnx.lock`` *shared* for
as long as it runs; a prune takes it exclusively and is refused while any build holds it,
so it never removes a graph a build is about to load. A prune renames each entry away
(``.pruned-*``) before deleting it, so an entry is either whole or absent.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitstore.errors import StoreLockedError
from logitstore.lock import exclusive, shared

ENV = "LOGITSTORE_CACHE"
#: Entry folders that are not (yet, or no longer) entries: exports in progress or killed,
#: damaged entries renamed away, prunes interrupted.
_PARTIAL = (".export-", ".damaged-", ".pruned-")


def cache_root() -> Path:
    """``$LOGITSTORE_CACHE``, default ``~/.cache/logitstore``."""
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "logitstore")


def onnx_dir(root: Path | None = None) -> Path:
    """The folder of the ONNX exports inside the cache ``root`` (default: cache_root())."""
    return (root or cache_root()) / "onnx"


@contextlib.contextmanager
def using_cache(onnx: Path | None = None) -> Iterator[None]:
    """Hold the cache lock shared (no prune meanwhile); ``onnx`` default: onnx_dir()."""
    with shared(onnx or onnx_dir(), thing="export cache"):
        yield


def read_info(entry: Path) -> dict[str, Any] | None:
    """``export.json`` of the cache entry folder ``entry`` when the entry looks whole (the
    fields a build needs, and ``model.onnx`` of the recorded size), else None. The graph is
    not hashed here (export.py does that before reusing it)."""
    try:
        info = json.loads((entry / "export.json").read_text())
        size = (entry / "model.onnx").stat().st_size
    except (OSError, ValueError):
        return None
    if not (isinstance(info, dict) and isinstance(info.get("input_names"), list)
            and isinstance(info.get("parity_max_abs_err"), (int, float))):
        return None
    return info if info.get("onnx_bytes", size) == size else None


@dataclass(frozen=True)
class Entry:
    """One folder of the export cache."""

    key: str
    path: Path
    source: str | None  # the checkpoint folder it was exported from (None when unknown)
    source_exists: bool
    nbytes: int
    last_used: float  # seconds since the epoch: the folder's modification time
    status: str  # "ok", "damaged" or "partial" (an export in progress or killed)


def _nbytes(path: Path) -> int:
    """Bytes of the files under ``path`` (files that vanish meanwhile count 0)."""
    total = 0
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        with contextlib.suppress(OSError):
            total += p.stat().st_size if p.is_file() and not p.is_symlink() else 0
    return total


def entries(onnx: Path | None = None) -> list[Entry]:
    """Every entry of the cache, least recently used first."""
    onnx = onnx or onnx_dir()
    out = []
    for path in sorted(onnx.iterdir()) if onnx.is_dir() else []:
        if not path.is_dir() or path.is_symlink():
            continue  # lock files
        info = None if path.name.startswith(_PARTIAL) else read_info(path)
        status = "partial" if path.name.startswith(_PARTIAL) else "ok" if info is not None else "damaged"
        source = (info or {}).get("source")
        out.append(Entry(path.name, path, source, bool(source) and (Path(source) / "config.json").is_file(),
                         _nbytes(path), path.stat().st_mtime, status))
    return sorted(out, key=lambda e: (e.last_used, e.key))


def total_bytes(root: Path | None = None) -> int:
    """Bytes of every file in the cache ``root`` (default: cache_root())."""
    root = root or cache_root()
    return _nbytes(root)


def why_prune(e: Entry, older_than_days: float | None, everything: bool, now: float) -> str | None:
    """Why ``--prune`` removes entry ``e`` (None: it stays)."""
    if e.status != "ok":
        return e.status
    if not e.source_exists:
        return "source gone"
    if older_than_days is not None and now - e.last_used > older_than_days * 86400:
        return f"unused for {_age(now - e.last_used)}"
    return "--all" if everything else None


def prune(older_than_days: float | None = None, everything: bool = False, onnx: Path | None = None,
          now: float | None = None) -> list[tuple[Entry, str]]:
    """Remove the entries :func:`why_prune` names (each renamed away first, then deleted) and
    the per-key lock files; returns the removed entries with the reason. Raises
    StoreLockedError, removing nothing, while a build or export holds the cache."""
    onnx = onnx or onnx_dir()
    now = time.time() if now is None else now
    if not onnx.is_dir():
        return []
    try:
        with exclusive(onnx, what="prune", thing="export cache"):
            removed = []
            for e in entries(onnx):
                reason = why_prune(e, older_than_days, everything, now)
                if reason:
                    _remove(e.path)
                    removed.append((e, reason))
            for lock in onnx.glob(".*.lock"):  # no export runs: nobody holds them
                lock.unlink(missing_ok=True)
            return removed
    except StoreLockedError:
        raise StoreLockedError(f"the export cache {onnx} is in use by a running build or export (or another prune); "
                               "prune when it has finished (nothing was removed)") from None


def _remove(path: Path) -> None:
    aside = path if path.name.startswith(_PARTIAL) else path.with_name(f".pruned-{path.name}-{os.getpid()}")
    if aside != path:
        os.rename(path, aside)  # atomic: the entry is gone before any of its files is
    shutil.rmtree(aside)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{max(0.0, seconds):.0f} s"


def location_line() -> str:
    """Where the cache is and how to move it."""
    default = os.environ.get(ENV) is None
    return f"export cache: {cache_root()} ({'default; ' if default else ''}set {ENV} to move it)"


def summary_line() -> str:
    """One line for `logitstore info`: the cache's place, entries and total size."""
    try:
        found = entries()
    except OSError as exc:  # e.g. a folder it may not read: info still shows the store
        return f"export cache: {cache_root()} cannot be read ({exc.strerror or exc})"
    return (f"export cache: {cache_root()}, {len(found)} export{'s' * (len(found) != 1)}, "
            f"{total_bytes() / 1e6:,.1f} MB (`logitstore cache` lists them, `logitstore cache --prune` removes them)")


def print_cache(console: Any, removed: list[tuple[Entry, str]] | None = None) -> None:
    """Print the cache's entries as a table (after a prune: what it removed, then what stays)."""
    from rich.table import Table

    now = time.time()
    console.print(location_line())
    if removed is not None:
        for e, reason in removed:
            console.print(f"removed {e.key} ({e.nbytes / 1e6:,.1f} MB, {reason}): {e.source or 'source unknown'}")
        console.print(f"pruned {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, "
                      f"{sum(e.nbytes for e, _ in removed) / 1e6:,.1f} MB freed")
    table = Table("key", "source checkpoint", "source", "MB", "last used", "status", title="ONNX exports")
    for e in entries():
        table.add_row(e.key, e.source or "", "exists" if e.source_exists else "[red]gone[/]",
                      f"{e.nbytes / 1e6:,.1f}", f"{_age(now - e.last_used)} ago",
                      e.status if e.status == "ok" else f"[red]{e.status}[/]")
    console.print(table)
    console.print(f"total {total_bytes() / 1e6:,.1f} MB")
