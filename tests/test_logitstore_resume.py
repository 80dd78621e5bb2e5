"""kill -9 in the middle of a real `logitstore build`, rerun it, and compare with an
uninterrupted build array for array."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

from conftest import kill9_when, write_csv_splits
from logitstore import open_store


def _cmd(teachers: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "logitstore.cli", "build", "--teacher", str(teachers), "--data", str(data),
            "--out", str(out), "--chunk-rows", "64", "--token-budget", "256", "--threads", "1"]


def _rows_done(out: Path, ckpt: str, split: str) -> int:
    meta = out / "checkpoints" / ckpt / split / "zarr.json"
    if not meta.exists():
        return 0
    try:
        return int(json.loads(meta.read_text())["attributes"]["logitstore"]["rows_done"])
    except (ValueError, KeyError):
        return 0


def test_kill9_mid_build_then_resume_equals_uninterrupted(tiny_teachers, tmp_path):
    data = write_csv_splits(tmp_path / "data", {"train": 6000, "validation": 200}, seed=11)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    ref = tmp_path / "ref.zarr"
    subprocess.run(_cmd(tiny_teachers, data, ref), check=True, env=env, capture_output=True)

    out = tmp_path / "killed.zarr"
    done = kill9_when(_cmd(tiny_teachers, data, out), env, lambda: _rows_done(out, "checkpoint-10", "train"), 64 * 3)
    assert 0 < done < 6000, f"kill landed outside the build of the train split ({done} rows done)"
    partial = open_store(out)
    assert partial.checkpoint_names() == []  # nothing partial is marked complete
    assert not partial.checkpoint("checkpoint-10").complete

    rerun = subprocess.run(_cmd(tiny_teachers, data, out), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    a, b = open_store(ref), open_store(out)
    assert a.checkpoint_names() == b.checkpoint_names() == ["checkpoint-10", "checkpoint-20"]
    ga, gb = zarr.open_group(ref, mode="r"), zarr.open_group(out, mode="r")
    arrays = [k for k, _ in ga.members(max_depth=None) if isinstance(ga[k], zarr.Array)]
    assert len(arrays) > 10
    for key in arrays:
        np.testing.assert_array_equal(ga[key][:], gb[key][:], err_msg=key)
    for name in a.checkpoint_names():
        ma, mb = a.checkpoint(name), b.checkpoint(name)
        assert (ma.val_loss, ma.val_score, ma.encode_max_abs_err) == (mb.val_loss, mb.val_score, mb.encode_max_abs_err)
