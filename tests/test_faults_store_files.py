"""Fault suite (issue 10), the store's own files: tokenizer integrity, no rewrite of a
complete store, only known tokenizer names and never through a link, links planted inside a
store, and a deleted checkpoint entry that ths/tll must not silently replace."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import make_teacher, run_cli, assert_one_line_error
from logitstore import open_store
from logitstore.build import BuildConfig, build_store
from logitstore.errors import CheckpointError, NoCheckpointError, StoreCorruptError


def _build(teachers: Path, data: Path, out: Path) -> None:
    build_store(BuildConfig(teachers=(teachers,), data=str(data), out=out, chunk_rows=64))


@pytest.fixture(scope="module")
def built(tiny_teachers, tiny_data, tmp_path_factory, _env) -> Path:
    out = tmp_path_factory.mktemp("faults") / "store.zarr"
    _build(tiny_teachers, tiny_data, out)
    return out


@pytest.fixture
def store_copy(built, tmp_path) -> Path:
    dst = tmp_path / "copy.zarr"
    shutil.copytree(built, dst)
    return dst


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_rerun_on_a_complete_store_writes_nothing(store_copy, tiny_teachers, tiny_data):
    before = _files(store_copy)
    _build(tiny_teachers, tiny_data, store_copy)
    assert _files(store_copy) == before  # not one file rewritten, the tokenizer's included


def test_a_missing_tokenizer_chunk_is_an_error_not_nul_bytes_and_a_rerun_repairs_it(
        store_copy, tiny_teachers, tiny_data, tmp_path):
    good = (open_store(store_copy).save_tokenizer(tmp_path / "good") / "tokenizer.json").read_bytes()
    chunk = store_copy / "tokenizer" / "tokenizer.json" / "c" / "0"
    assert chunk.is_file()
    chunk.unlink()  # the array's fill value 0 would read back as NUL bytes
    with pytest.raises(StoreCorruptError, match="tokenizer .* tokenizer.json is damaged or missing"):
        open_store(store_copy).save_tokenizer(tmp_path / "bad")
    _build(tiny_teachers, tiny_data, store_copy)
    assert (open_store(store_copy).save_tokenizer(tmp_path / "again") / "tokenizer.json").read_bytes() == good


def test_a_store_entry_named_like_a_model_file_is_refused_and_removed_by_a_rerun(
        store_copy, tiny_teachers, tiny_data, tmp_path):
    import numpy as np
    import zarr

    g = zarr.open_group(store_copy / "tokenizer", mode="r+")
    g.create_array("config.json", shape=(2,), dtype="uint8")[:] = np.frombuffer(b"{}", dtype=np.uint8)
    student = tmp_path / "student"
    student.mkdir()
    (student / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(StoreCorruptError, match=r"not tokenizer files \(config.json\)"):
        open_store(store_copy).save_tokenizer(student)
    assert (student / "config.json").read_text() == '{"model_type": "bert"}'  # not overwritten
    _build(tiny_teachers, tiny_data, store_copy)  # the rerun rewrites the tokenizer without it
    files = open_store(store_copy).tokenizer_files()
    assert "config.json" not in files and "tokenizer.json" in files


def test_tokenizer_files_that_are_links_are_refused(tmp_path, tiny_data, _env):
    teacher = make_teacher(tmp_path / "teacher", seed=3)
    real = teacher / "tokenizer.json"
    moved = tmp_path / "tokenizer-real.json"
    real.rename(moved)
    os.symlink(moved, real)
    with pytest.raises(CheckpointError, match="tokenizer.json in .* symbolic links"):
        _build(teacher, tiny_data, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()  # refused before anything was written


def test_a_link_planted_inside_a_store_is_never_written_through(store_copy, tiny_teachers, tiny_data, tmp_path,
                                                                capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    target = store_copy / "checkpoints" / "checkpoint-20" / "validation"
    shutil.rmtree(target)
    os.symlink(outside, target)
    code, line = run_cli(capsys, "build", "--teacher", str(tiny_teachers), "--data", str(tiny_data),
                         "--out", str(store_copy), "--chunk-rows", "64")
    assert_one_line_error(code, line, "is a link", "remove it")
    assert [p.name for p in outside.iterdir()] == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep me"


def test_a_deleted_checkpoint_does_not_silently_move_ths_and_tll(store_copy):
    store = open_store(store_copy)
    assert store.checkpoints_held() == ["checkpoint-10", "checkpoint-20"]
    kept = {w: store.select(w).name for w in ("ths", "tll")}
    gone = "checkpoint-20" if "checkpoint-20" in kept.values() else "checkpoint-10"
    shutil.rmtree(store_copy / "checkpoints" / gone)
    store = open_store(store_copy)
    for which in ("ths", "tll"):
        with pytest.raises(NoCheckpointError, match=f"checkpoint {gone} of store .* is gone"):
            store.select(which)
    other = ({"checkpoint-10", "checkpoint-20"} - {gone}).pop()
    assert store.select(other).name == other  # naming a checkpoint still works


def test_a_rerun_restores_a_deleted_checkpoint(store_copy, tiny_teachers, tiny_data):
    shutil.rmtree(store_copy / "checkpoints" / "checkpoint-10")
    _build(tiny_teachers, tiny_data, store_copy)
    store = open_store(store_copy)
    assert store.checkpoint_names() == ["checkpoint-10", "checkpoint-20"]
    assert store.select("ths").name in ("checkpoint-10", "checkpoint-20")


def test_a_missing_int8_logits_chunk_is_an_error_not_zero_logits(tiny_teachers, tiny_data, tmp_path, _env):
    out = tmp_path / "int8.zarr"
    build_store(BuildConfig(teachers=(tiny_teachers,), data=str(tiny_data), out=out, chunk_rows=32,
                            encoding="int8"))
    (out / "checkpoints" / "checkpoint-10" / "train" / "logits" / "c" / "1" / "0").unlink()  # fill value 0
    with pytest.raises(StoreCorruptError, match="missing chunk"):
        open_store(out).read_logits("checkpoint-10", "train", 0, 32)  # even a range of whole chunks
