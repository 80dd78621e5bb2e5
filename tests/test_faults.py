"""The fault suite (issue 10): concurrent writers, damaged stores and their repair, data
files that used to be misread, a damaged export cache, and OS failures: each fault gets
a one-line error naming the problem and the fix, or is repaired by a rerun of the build."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import assert_one_line_error, make_teacher, run_cli, write_csv_splits, write_ner_splits
from logitstore import open_store
from logitstore.cli import main
from logitstore.errors import DataError, StoreCorruptError

REPO = Path(__file__).parents[1]
CHUNK_ROWS = 32  # 120 train rows -> 4 logits chunks


def build_args(teachers: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--teacher", str(teachers), "--data", str(data), "--out", str(out),
            "--chunk-rows", str(CHUNK_ROWS), "--threads", "1", *extra]


def chunk_files(store: Path) -> dict[str, bytes]:
    """Every chunk file of a store, by path inside it (the bytes a repair must restore)."""
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*")
            if p.is_file() and "c" in p.relative_to(store).parts}


def assert_same_store(ref: Path, out: Path) -> None:
    """Array for array and chunk file for chunk file, ``out`` equals ``ref``."""
    ga, gb = zarr.open_group(ref, mode="r"), zarr.open_group(out, mode="r")
    keys = sorted(k for k, _ in ga.members(max_depth=None) if isinstance(ga[k], zarr.Array))
    assert keys == sorted(k for k, _ in gb.members(max_depth=None) if isinstance(gb[k], zarr.Array))
    for k in keys:
        np.testing.assert_array_equal(ga[k][:], gb[k][:], err_msg=k)
    a, b = chunk_files(ref), chunk_files(out)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []


@pytest.fixture(scope="module")
def ref_store(tmp_path_factory, tiny_teachers, tiny_data, _env, _one_thread) -> Path:
    """A complete store of both tiny checkpoints, never modified (tests damage copies)."""
    out = tmp_path_factory.mktemp("faults") / "ref.zarr"
    assert main(build_args(tiny_teachers, tiny_data, out)) == 0
    return out


@pytest.fixture
def store(ref_store, tmp_path) -> Path:
    out = tmp_path / "s.zarr"
    shutil.copytree(ref_store, out)
    return out


def verify_cli(capsys, store: Path) -> tuple[int, str]:
    code = main(["verify", str(store)])
    return code, capsys.readouterr().out


# ---------------------------------------------------------------------------- concurrent writers
def _hold_lock(path: Path) -> subprocess.Popen:
    """A second process that takes the build lock of ``path`` and keeps it."""
    code = ("import sys, time; from logitstore.lock import exclusive\n"
            f"with exclusive({str(path)!r}, what='build'):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_build_fails_at_once_and_a_killed_holder_leaves_no_stale_lock(
        capsys, tiny_teachers, tiny_data, tmp_path, _env, _one_thread):
    out = tmp_path / "s.zarr"
    holder = _hold_lock(out)
    try:
        t0 = time.monotonic()
        code, line = run_cli(capsys, *build_args(tiny_teachers, tiny_data, out))
        assert_one_line_error(code, line, "another build is writing this store", f"(pid {holder.pid}",
                              "wait for it")
        assert time.monotonic() - t0 < 10  # refused before any data is read
        assert not out.exists()  # and nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # kill -9 released the OS lock: the rerun builds (the holder's stale owner file is ignored)
    assert run_cli(capsys, *build_args(tiny_teachers, tiny_data, out))[0] == 0
    assert open_store(out).checkpoint_names() == ["checkpoint-10", "checkpoint-20"]


def test_lock_lives_beside_the_store_and_readers_work_while_it_is_held(capsys, store):
    from logitstore.lock import lock_path

    assert lock_path(store) == store.parent / "s.zarr.lock"
    holder = _hold_lock(store)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # zarr warns about foreign files inside a group
            g = zarr.open_group(store, mode="r")
            assert len(list(g.members(max_depth=None))) > 10
        assert main(["info", str(store)]) == 0
        assert "complete" in capsys.readouterr().out
        assert sorted(p.name for p in store.iterdir()) == ["checkpoints", "splits", "tokenizer", "zarr.json"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
