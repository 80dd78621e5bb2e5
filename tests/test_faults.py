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
from logitstore.tasks import get_task

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


# ---------------------------------------------------------------------------- verify and repair
def test_verify_a_clean_store(capsys, ref_store):
    code, out = verify_cli(capsys, ref_store)
    assert code == 0 and "no damage found" in out


def test_deleted_logits_chunk_is_reported_and_repaired(capsys, store, ref_store, tiny_teachers, tiny_data):
    from logitstore.verify import scan

    (store / "checkpoints/checkpoint-10/train/logits/c/1/0").unlink()
    code, out = verify_cli(capsys, store)
    assert code == 1 and "damaged" in out
    (bad,) = scan(store).damaged
    assert (bad.kind, bad.name) == ("checkpoint", "checkpoint-10")
    (d,) = bad.damage
    assert (d.node, d.chunk, d.span, d.problem) == ("checkpoints/checkpoint-10/train/logits", 1, (32, 64),
                                                    "chunk missing")
    # info's structural check shows it damaged, not complete
    assert main(["info", str(store)]) == 0
    info = capsys.readouterr().out
    assert "damaged checkpoint checkpoint-10" in info and "chunk 1 (32-64)" in info
    # the student side fails as before
    with pytest.raises(StoreCorruptError, match="missing chunks"):
        open_store(store).read_logits("checkpoint-10", "train")
    # a rerun rewrites exactly that block: the same bytes as the undamaged build
    assert main(build_args(tiny_teachers, tiny_data, store)) == 0
    assert "checkpoint-10: repaired 1 block" in " ".join(capsys.readouterr().err.split())
    assert verify_cli(capsys, store)[0] == 0
    assert_same_store(ref_store, store)


def test_flipped_chunk_bytes_and_a_damaged_split_are_repaired(capsys, store, ref_store, tiny_teachers, tiny_data):
    from logitstore.verify import scan

    chunk = store / "checkpoints/checkpoint-20/validation/logits/c/0/0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    labels = store / "splits/test/labels/c/0"
    labels.write_bytes(labels.read_bytes()[:-5])  # truncated
    report = scan(store)
    problems = {d.node: d.problem for e in report.damaged for d in e.damage}
    assert problems == {"checkpoints/checkpoint-20/validation/logits": "chunk unreadable: checksum mismatch",
                        "splits/test/labels": "chunk unreadable: checksum mismatch"}
    assert scan(store, read=False).clean  # files are all there: only reading finds this
    assert main(build_args(tiny_teachers, tiny_data, store)) == 0
    capsys.readouterr()
    assert verify_cli(capsys, store)[0] == 0
    assert_same_store(ref_store, store)


def test_halved_array_shape_is_one_line_and_repaired(capsys, store, ref_store, tiny_teachers, tiny_data):
    meta_file = store / "checkpoints/checkpoint-10/train/logits/zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["shape"][0] //= 2
    meta_file.write_text(json.dumps(meta))
    # the student side: one error, not an IndexError deep in a batch
    with pytest.raises(StoreCorruptError, match="have 60 rows in their metadata but the entry has 120"):
        open_store(store).read_logits("checkpoint-10", "train")
    code, out = verify_cli(capsys, store)
    assert code == 1 and "disagrees with the metadata" in " ".join(out.split())
    assert main(build_args(tiny_teachers, tiny_data, store)) == 0  # the entry is rebuilt whole
    capsys.readouterr()
    assert_same_store(ref_store, store)


def test_truncated_checkpoint_metadata(capsys, store, ref_store, tiny_teachers, tiny_data):
    meta_file = store / "checkpoints/checkpoint-20/zarr.json"
    meta_file.write_text(meta_file.read_text()[:60])
    # readers: one line naming the store, pointing at verify and the repairing rerun
    with pytest.raises(StoreCorruptError, match="logitstore verify"):
        open_store(store).select("tll")
    assert main(["info", str(store)]) == 0  # info lists it as damaged instead of failing
    assert "damaged checkpoint checkpoint-20" in capsys.readouterr().out
    # a build without that checkpoint cannot rebuild it: one line that says how
    code, line = run_cli(capsys, *build_args(tiny_teachers / "checkpoint-10", tiny_data, store))
    assert_one_line_error(code, line, "checkpoint 'checkpoint-20'", "is damaged", "among --teacher")
    # with it, the entry is rebuilt
    assert main(build_args(tiny_teachers, tiny_data, store)) == 0
    capsys.readouterr()
    assert open_store(store).checkpoint_names() == ["checkpoint-10", "checkpoint-20"]
    assert_same_store(ref_store, store)


def test_deleted_split_is_written_again_or_named_missing(capsys, store, ref_store, tiny_teachers, tiny_data,
                                                         tmp_path):
    shutil.rmtree(store / "splits/test")
    other = write_csv_splits(tmp_path / "other", {"train": 120, "validation": 40, "test": 30}, seed=100)
    code, line = run_cli(capsys, *build_args(tiny_teachers, other, store))
    assert_one_line_error(code, line, "split 'test' is missing from store", "rerun with that data")
    assert "built from other data" not in line
    assert main(build_args(tiny_teachers, tiny_data, store)) == 0  # the store's own data: written again
    capsys.readouterr()
    assert_same_store(ref_store, store)


def test_token_layout_damaged_chunk_is_repaired(capsys, tmp_path, ner_run, _env, _one_thread):
    data = write_ner_splits(tmp_path / "ner", {"train": 60, "validation": 20})
    ref, out = tmp_path / "ref.zarr", tmp_path / "out.zarr"
    args = ["--task", "ner", "--chunk-rows", "8", "--threads", "1"]
    assert main(["build", "--teacher", str(ner_run / "checkpoint-1"), "--data", str(data), "--out", str(ref), *args]) == 0
    shutil.copytree(ref, out)
    (out / "checkpoints/checkpoint-1/train/logits/c/0/0").unlink()
    assert main(["build", "--teacher", str(ner_run / "checkpoint-1"), "--data", str(data), "--out", str(out), *args]) == 0
    assert "repaired 8 blocks" in " ".join(capsys.readouterr().err.split())  # 60 rows / 8 per block
    assert_same_store(ref, out)


def test_block_ranges_of_a_token_chunk():
    from logitstore.repair import block_ranges

    offsets = np.array([0, 5, 9, 20, 22, 30, 31])  # 6 rows
    assert block_ranges((0, 10), 2, 6, offsets) == [(0, 2), (2, 4)]  # tokens 0-9: rows 0-2
    assert block_ranges((20, 30), 2, 6, offsets) == [(2, 4), (4, 6)]  # rows 3-4
    assert block_ranges((30, 31), 4, 6, offsets) == [(4, 6)]
    assert block_ranges((32, 64), 32, 120, None) == [(32, 64)]


# ---------------------------------------------------------------------------- data files
def _csv(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def _load(path: Path):
    from logitstore.data import DataConfig, load_splits

    return load_splits(DataConfig(str(path), get_task("classification")))


def test_duplicate_csv_column_is_refused(tmp_path):
    f = _csv(tmp_path / "d" / "train.csv", "text,text,label\n" + "good film,bad plot,positive\n" * 20)
    with pytest.raises(DataError, match="names column 'text' twice") as info:
        _load(f)
    assert str(f) in str(info.value) and "\n" not in str(info.value)


def test_na_like_words_are_text(tmp_path):
    words = ["NA", "null", "nan", "None", "N/A", "NULL"]
    rows = "".join(f"{w},positive\n{w} film,negative\n" for w in words * 3)
    splits = _load(_csv(tmp_path / "d" / "train.csv", "text,label\n" + rows))
    texts = [t for ds in splits.values() for t in ds["text"]]
    assert None not in texts and set(words) <= set(texts)


def test_empty_csv_field_is_still_missing(tmp_path):
    f = _csv(tmp_path / "d" / "train.csv", "text,label\n,positive\n" + "good film,negative\n" * 3)
    assert None in [t for ds in _load(f).values() for t in ds["text"]]


def test_non_utf8_csv_is_named(tmp_path):
    f = _csv(tmp_path / "d" / "train.csv", b"text,label\n" + b"good film,positive\n" * 20 + b"caf\xe9 film,negative\n")
    with pytest.raises(DataError) as info:
        _load(f)
    msg = str(info.value)
    assert str(f) in msg and "is not UTF-8" in msg and "0xe9" in msg and "DatasetGenerationError" not in msg


def test_ragged_csv_row_is_named(tmp_path):
    f = _csv(tmp_path / "d" / "train.csv", "text,label\n" + "good film,positive\n" * 20 + "bad,negative,extra,more\n")
    with pytest.raises(DataError) as info:
        _load(f)
    msg = str(info.value)
    assert str(f) in msg and "Expected 2 fields in line 22, saw 4" in msg and "DatasetGenerationError" not in msg


# ---------------------------------------------------------------------------- export cache
def test_export_json_records_the_graph_and_is_written_atomically(tmp_path, _one_thread):
    from logitstore.export import export_checkpoint

    teacher = make_teacher(tmp_path / "t", seed=5, layers=1)
    first = export_checkpoint(teacher, cache_dir=tmp_path / "cache")
    entry = first.onnx_path.parent
    info = json.loads((entry / "export.json").read_text())
    assert info["onnx_bytes"] == first.onnx_path.stat().st_size and len(info["onnx_sha256"]) == 64
    assert sorted(p.name for p in entry.iterdir()) == ["export.json", "model.onnx"]  # no temp file left
    assert export_checkpoint(teacher, cache_dir=tmp_path / "cache").cached


@pytest.mark.parametrize("damage", ["empty export.json", "invalid export.json", "truncated model.onnx"])
def test_damaged_export_cache_entry_is_rebuilt(tmp_path, damage, _one_thread):
    from logitstore.export import export_checkpoint, probe_inputs

    teacher = make_teacher(tmp_path / "t", seed=5, layers=1)
    first = export_checkpoint(teacher, cache_dir=tmp_path / "cache")
    sample = probe_inputs(teacher, first.input_names)  # as a build passes: the graph is run
    entry = first.onnx_path.parent
    if damage == "empty export.json":
        (entry / "export.json").write_text("")
    elif damage == "invalid export.json":
        (entry / "export.json").write_text('{"input_names": 3}')
    else:
        (entry / "model.onnx").write_bytes(first.onnx_path.read_bytes()[:1000])
    again = export_checkpoint(teacher, sample, cache_dir=tmp_path / "cache")
    assert not again.cached and again.parity_max_abs_err < 1e-3
    assert export_checkpoint(teacher, sample, cache_dir=tmp_path / "cache").cached


# ---------------------------------------------------------------------------- one-line errors
def _fail_chunk_writes(monkeypatch, err: OSError) -> None:
    """Make every chunk write of a local zarr store fail with ``err``."""
    from zarr.storage import LocalStore

    real = LocalStore.set

    async def failing(self, key, value):
        if "/c/" in key:
            raise err
        return await real(self, key, value)

    monkeypatch.setattr(LocalStore, "set", failing)


def test_disk_full_during_a_build_is_one_line_and_resumes(capsys, monkeypatch, ref_store, tiny_teachers,
                                                         tiny_data, tmp_path):
    out = tmp_path / "s.zarr"
    _fail_chunk_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    code, line = run_cli(capsys, *build_args(tiny_teachers, tiny_data, out))
    assert_one_line_error(code, line, "disk full writing store", "free space and rerun")
    monkeypatch.undo()
    assert run_cli(capsys, *build_args(tiny_teachers, tiny_data, out))[0] == 0
    assert_same_store(ref_store, out)


def test_read_only_out_folder_is_one_line(capsys, monkeypatch, tiny_teachers, tiny_data, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the lock file creation fail as it would
        import filelock

        def denied(self, *a, **k):
            raise PermissionError(errno.EACCES, "Permission denied", self.lock_file)

        monkeypatch.setattr(filelock.FileLock, "acquire", denied)
    else:
        ro.chmod(0o500)
    try:
        code, line = run_cli(capsys, *build_args(tiny_teachers, tiny_data, ro / "s.zarr"))
    finally:
        ro.chmod(0o700)
    assert_one_line_error(code, line, "cannot write store", "permission denied", "another --out")


def test_rerun_on_a_read_only_store_is_one_line(capsys, monkeypatch, store, tiny_teachers, tiny_data):
    (store / "checkpoints/checkpoint-10/train/logits/c/1/0").unlink()  # something to write
    if os.geteuid() == 0:
        _fail_chunk_writes(monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    else:
        for p in [store, *store.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
    try:
        code, line = run_cli(capsys, *build_args(tiny_teachers, tiny_data, store))
    finally:
        for p in [store, *store.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert_one_line_error(code, line, "cannot write store", "permission denied", "chmod -R u+w")


def test_config_that_needs_custom_code_is_one_line(capsys, tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "custom", seed=6, layers=1)
    cfg = json.loads((teacher / "config.json").read_text())
    cfg |= {"model_type": "my-own-bert", "auto_map": {"AutoConfig": "configuration_x.XConfig",
                                                      "AutoModelForSequenceClassification": "modeling_x.XModel"}}
    (teacher / "config.json").write_text(json.dumps(cfg))
    code, line = run_cli(capsys, *build_args(teacher, tiny_data, tmp_path / "s.zarr"))
    assert_one_line_error(code, line, "needs its own code", "auto_map", "'my-own-bert'", "trust_remote_code")


def test_not_a_logit_store(capsys, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hi")
    code, line = run_cli(capsys, "info", str(plain))
    assert_one_line_error(code, line, "is not a logit store", "logitstore build --out")
    assert "corrupt" not in line and "rerun" not in line
    from students.cli import main as students_main

    assert students_main(["train", "--store", str(plain), "--out", str(tmp_path / "student")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "is not a logit store" in line
