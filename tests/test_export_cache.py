"""The ONNX export cache (issue 15): `logitstore cache` lists and prunes it, `info` and `--help`
say where it is, a prune never runs under a build, and exports of one checkpoint by
concurrent builds never destroy each other's entry."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error, make_teacher, run_cli
from logitstore import export as export_mod
from logitstore.cache import entries, onnx_dir, using_cache
from logitstore.cli import main
from logitstore.export import export_checkpoint


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LOGITSTORE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("t") / "checkpoint-7", seed=4, layers=1)


def _entry_files(path: Path) -> dict[str, int]:
    """Inode of every file of a cache entry: a replaced entry has new ones."""
    return {p.name: p.stat().st_ino for p in path.iterdir()}


# ---------------------------------------------------------------------------- logitstore cache

def test_cache_lists_entries_and_prunes_what_is_asked(cache, teacher, tmp_path, capsys):
    gone = make_teacher(tmp_path / "moved" / "checkpoint-9", seed=5, layers=1)  # other weights: another key
    kept, lost = export_checkpoint(teacher), export_checkpoint(gone)
    assert kept.onnx_path.parent != lost.onnx_path.parent
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"export cache: {cache}" in out and "LOGITSTORE_CACHE" in out
    for r, src in ((kept, teacher), (lost, gone)):
        assert r.onnx_path.parent.name in out and str(src) in out
    assert "gone" not in out.split("ONNX exports")[1]

    shutil.rmtree(gone)  # its source checkpoint is gone; a killed export left a temporary folder
    (onnx_dir(cache) / ".export-killed").mkdir()
    (onnx_dir(cache) / ".export-killed" / "model.onnx").write_bytes(b"x" * 100)
    assert main(["cache"]) == 0
    assert "gone" in capsys.readouterr().out
    assert main(["cache", "--prune"]) == 0
    out = capsys.readouterr().out
    assert f"removed {lost.onnx_path.parent.name}" in out and "source gone" in out and "partial" in out
    assert [e.key for e in entries(onnx_dir(cache))] == [kept.onnx_path.parent.name]
    assert not any(p.name.startswith(".") and p.is_dir() for p in onnx_dir(cache).iterdir())

    assert main(["cache", "--prune", "--older-than", "1"]) == 0  # used just now: stays
    assert kept.onnx_path.is_file()
    old = time.time() - 2 * 86400
    os.utime(kept.onnx_path.parent, (old, old))
    assert main(["cache", "--prune", "--older-than", "1"]) == 0
    assert "unused for 2 d" in capsys.readouterr().out and not kept.onnx_path.parent.exists()


def test_prune_all_and_reuse_marks_last_use(cache, teacher, capsys):
    first = export_checkpoint(teacher)
    old = time.time() - 3 * 86400
    os.utime(first.onnx_path.parent, (old, old))
    again = export_checkpoint(teacher)
    assert again.cached and first.onnx_path.parent.stat().st_mtime > old + 86400  # a reuse counts as a use
    assert_one_line_error(*run_cli(capsys, "cache", "--all"), "--prune")
    assert main(["cache", "--prune", "--all"]) == 0
    assert "--all" in capsys.readouterr().out and entries(onnx_dir(cache)) == []


def test_prune_is_refused_while_a_build_uses_the_cache(cache, teacher, capsys):
    result = export_checkpoint(teacher)
    with using_cache():  # what a running build holds
        assert_one_line_error(*run_cli(capsys, "cache", "--prune", "--all"), "in use by a running build",
                              "nothing was removed")
    assert result.onnx_path.is_file()
    assert main(["cache", "--prune", "--all"]) == 0  # free again
    assert not result.onnx_path.exists()


def test_help_and_info_say_where_the_cache_is(cache, capsys):
    for args in (["--help"], ["cache", "--help"]):
        with pytest.raises(SystemExit):
            main(args)
        assert "LOGITSTORE_CACHE" in " ".join(capsys.readouterr().out.split())
    fixture = Path(__file__).parent / "fixtures" / "store-v2" / "classification"
    assert main(["info", str(fixture)]) == 0
    assert f"export cache: {cache}, 0 exports, 0.0 MB" in capsys.readouterr().out


# ---------------------------------------------------------------------------- concurrent exports

def test_an_entry_that_appears_during_an_export_is_used_not_replaced(cache, teacher, monkeypatch, tmp_path):
    """Another process publishes the same entry while this one exports (simulated): this one
    drops its own export and uses that entry, whose files stay as they are."""
    target = export_checkpoint(teacher).onnx_path.parent
    theirs = shutil.copytree(target, tmp_path / "theirs")
    shutil.rmtree(target)
    real = export_mod.torch.onnx.export
    seen = {}

    def export_then_another_publishes(*args, **kwargs):
        real(*args, **kwargs)
        shutil.copytree(theirs, target)
        seen.update(_entry_files(target))

    monkeypatch.setattr(export_mod.torch.onnx, "export", export_then_another_publishes)
    result = export_checkpoint(teacher)
    assert result.onnx_path == target / "model.onnx" and result.parity_max_abs_err < 1e-4
    assert _entry_files(target) == seen  # not replaced
    assert [p.name for p in target.parent.iterdir() if p.is_dir()] == [target.name]  # no temporary left


@pytest.mark.parametrize("damage", ["truncated graph", "bad export.json"])
def test_a_damaged_entry_is_renamed_away_then_replaced(cache, teacher, monkeypatch, damage):
    target = export_checkpoint(teacher).onnx_path.parent
    if damage == "truncated graph":
        (target / "model.onnx").write_bytes((target / "model.onnx").read_bytes()[:1000])
    else:
        (target / "export.json").write_text("{")
    removed_in_place = []
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if Path(path) == target:
            removed_in_place.append(path)  # a reader of the entry would see it half gone
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(export_mod.shutil, "rmtree", rmtree)
    result = export_checkpoint(teacher)
    assert not result.cached and not removed_in_place
    assert json.loads((target / "export.json").read_text())["onnx_bytes"] == (target / "model.onnx").stat().st_size
    assert export_checkpoint(teacher).cached
    assert [p.name for p in target.parent.iterdir() if p.is_dir()] == [target.name]


_CHILD = """
import json, os, sys, time
from pathlib import Path
from logitstore.export import export_checkpoint
go = Path(sys.argv[2])
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.01)
r = export_checkpoint(Path(sys.argv[1]))
print(json.dumps({"cached": r.cached, "path": str(r.onnx_path)}))
"""


def test_two_processes_exporting_one_checkpoint_at_once(cache, teacher, tmp_path):
    """Two builds export the same checkpoint into an empty cache at the same moment: both
    succeed on the same entry, and the checkpoint is exported once (the other waits, then
    reuses it)."""
    go = tmp_path / "go"
    env = {**os.environ, "LOGITSTORE_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(teacher), str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both start exporting together, once both have imported torch
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["cached"] for r in results) == [False, True]
    assert export_checkpoint(teacher).cached
