"""`logitstore build --ray` on a real local Ray cluster of 2 CPUs (issue 13), and the block
records (format 4) that let blocks finish out of order: the store is the same, file for file,
whether one process, one actor or two actors built it; a killed driver (kill -9) or a killed
actor leaves recorded blocks that a rerun keeps, computing only the missing ones; a build
resumes an entry an older version began (its rows_done prefix)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import assert_one_line_error, kill9_when, run_cli, write_csv_splits
from logitstore.build import BuildConfig, build_store
from logitstore.store import open_store

ROOT = Path(__file__).parents[1]
CHUNK = 64
ENTRY = ("checkpoint-10", "train")


@pytest.fixture(scope="module")
def ray_address(_env, s3_endpoint):
    """A local Ray cluster of 2 CPUs for the module; its workers import this checkout and see
    the S3 endpoint (workers take the environment the cluster was started with)."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_csv_splits(tmp_path_factory.mktemp("ray-data"), {"train": 2500, "validation": 150}, seed=21)


def _cfg(teachers: Path, data: Path, out: Path, **kw) -> BuildConfig:
    return BuildConfig(teachers=(teachers,), data=str(data), out=out, chunk_rows=CHUNK, token_budget=256, threads=1,
                       **kw)


@pytest.fixture(scope="module")
def reference(_env, tiny_teachers, data, tmp_path_factory) -> Path:
    """A single-process build of the module's data."""
    out = tmp_path_factory.mktemp("ray-ref") / "ref.zarr"
    build_store(_cfg(tiny_teachers, data, out))
    return out


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_same_store(a: Path, b: Path) -> None:
    """Every file of the two stores: chunk bytes equal, metadata equal but for build_seconds."""
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for rel, path in fa.items():
        if path.name != "zarr.json":
            assert path.read_bytes() == fb[rel].read_bytes(), rel
            continue
        ja, jb = json.loads(path.read_text()), json.loads(fb[rel].read_text())
        for meta in (ja, jb):
            meta.get("attributes", {}).get("logitstore", {}).pop("build_seconds", None)
        assert ja == jb, rel


def _assert_same_arrays(a: Path, b: Path, skip: tuple[str, ...] = ()) -> None:
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    arrays = [k for k, _ in ga.members(max_depth=None) if isinstance(ga[k], zarr.Array) and k not in skip]
    assert len(arrays) > 10
    for key in arrays:
        np.testing.assert_array_equal(ga[key][:], gb[key][:], err_msg=key)
    sa, sb = open_store(a), open_store(b)
    assert sa.checkpoint_names() == sb.checkpoint_names() == ["checkpoint-10", "checkpoint-20"]
    for name in sa.checkpoint_names():
        ma, mb = sa.checkpoint(name), sb.checkpoint(name)
        assert (ma.val_loss, ma.val_score, ma.encode_max_abs_err) == (mb.val_loss, mb.val_score, mb.encode_max_abs_err)


def _recorded(out: Path, ckpt: str = ENTRY[0], split: str = ENTRY[1]) -> dict[int, int]:
    """Recorded blocks of an entry -> mtime_ns of their logits chunk file."""
    folder = out / "checkpoints" / ckpt / split
    records = folder / "blocks" / "c"
    if not records.is_dir():
        return {}
    # a record still being written (NAME.<id>.partial, renamed when done) is not a recorded block yet
    return {int(p.name): (folder / "logits" / "c" / p.name / "0").stat().st_mtime_ns for p in records.iterdir()
            if p.name.isdigit()}


# ---------------------------------------------------------------------------- one store, however built
@pytest.mark.parametrize("actors", [1, 2])
def test_ray_build_equals_the_single_process_build_file_for_file(ray_address, tiny_teachers, data, reference,
                                                                 tmp_path, actors):
    out = tmp_path / f"ray-{actors}.zarr"
    build_store(_cfg(tiny_teachers, data, out, ray=ray_address, actors=actors))
    _assert_same_store(reference, out)
    assert open_store(out).meta.format_version == 4


@pytest.mark.parametrize("task, mode", [("causal-lm", ("--top-k", "8")), ("causal-lm", ("--sample", "8")),
                                        ("causal-lm", ("--sample", "8", "--runtime", "torch")), ("ner", ())])
def test_token_layouts_on_two_actors_equal_one_process(ray_address, lm_run, ner_run, tmp_path, task, mode):
    """The causal-LM top-k and sampled layouts and the token layout write chunks that blocks
    share: the Ray build runs them in units that never share one, and gives the same files;
    with --runtime torch each actor runs the model in PyTorch."""
    from conftest import write_lm_splits, write_ner_splits
    from logitstore.cli import main

    if task == "causal-lm":
        data = write_lm_splits(tmp_path / "data", {"train": 40, "validation": 16})
        args = ["--teacher", str(lm_run), *mode, "--max-length", "32"]
    else:
        data = write_ner_splits(tmp_path / "data", {"train": 60, "validation": 20})
        args = ["--teacher", str(ner_run)]
    common = ["build", "--task", task, *args, "--data", str(data), "--chunk-rows", "4", "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "one.zarr")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray.zarr"), "--ray", ray_address, "--actors", "2"]) == 0
    _assert_same_store(tmp_path / "one.zarr", tmp_path / "ray.zarr")


def test_actors_write_straight_to_object_storage(ray_address, s3_endpoint, tiny_teachers, data, reference):
    """2 actors writing to a real S3 endpoint: every object has the bytes of the local
    single-process build's file (metadata equal but for build_seconds)."""
    import fsspec

    url = f"{s3_endpoint}/ray-built.zarr"
    build_store(_cfg(tiny_teachers, data, url, ray=ray_address, actors=2))
    fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)
    root = url.removeprefix("s3://")
    keys = sorted(k[len(root) + 1:] for k in fs.find(root))
    local = _files(reference)
    assert keys == sorted(local)
    for rel in keys:
        got = fs.cat_file(f"{root}/{rel}")
        if rel.endswith("zarr.json"):
            ja, jb = json.loads(local[rel].read_text()), json.loads(got)
            for meta in (ja, jb):
                meta.get("attributes", {}).get("logitstore", {}).pop("build_seconds", None)
            assert ja == jb, rel
        else:
            assert got == local[rel].read_bytes(), rel


# ---------------------------------------------------------------------------- kills
def test_kill9_of_the_driver_then_rerun_computes_only_the_missing_blocks(ray_address, tiny_teachers, data, reference,
                                                                         tmp_path):
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "logitstore.cli", "build", "--teacher", str(tiny_teachers), "--data", str(data),
           "--out", str(out), "--chunk-rows", str(CHUNK), "--token-budget", "256", "--threads", "1",
           "--ray", ray_address, "--actors", "2"]
    total = -(-2500 // CHUNK)
    kill9_when(cmd, dict(os.environ), lambda: len(_recorded(out)), 4)
    time.sleep(3)  # the cluster ends the dead driver's actors
    before = _recorded(out)
    assert 4 <= len(before) < total, f"kill landed outside the train split ({len(before)} of {total} blocks)"
    assert not open_store(out).checkpoint("checkpoint-10").complete

    build_store(_cfg(tiny_teachers, data, out, ray=ray_address, actors=2))
    after = _recorded(out)
    assert sorted(after) == list(range(total))
    assert {i: after[i] for i in before} == before  # the recorded blocks were not computed again
    _assert_same_arrays(reference, out)


def test_an_actor_lost_after_its_first_block_then_rerun_computes_only_the_missing_blocks(
        ray_address, tiny_teachers, data, reference, tmp_path, monkeypatch):
    from logitstore.errors import ClusterError
    from logitstore.ray_build import EXIT_AFTER_ENV

    out = tmp_path / "lost-actor.zarr"
    monkeypatch.setenv(EXIT_AFTER_ENV, "1")  # every actor ends its process after writing one block
    with pytest.raises(ClusterError, match="rerun the same command") as info:
        build_store(_cfg(tiny_teachers, data, out, ray=ray_address, actors=2))
    assert "\n" not in str(info.value)
    monkeypatch.delenv(EXIT_AFTER_ENV)
    time.sleep(1)
    before = _recorded(out)
    assert 1 <= len(before) <= 2  # written and recorded by the actors, never heard of by the driver
    assert open_store(out).logits_meta(*ENTRY).rows_done == 0

    build_store(_cfg(tiny_teachers, data, out, ray=ray_address, actors=2))
    after = _recorded(out)
    assert {i: after[i] for i in before} == before
    _assert_same_arrays(reference, out)


# ---------------------------------------------------------------------------- older stores, bad input
def test_an_entry_begun_by_an_older_version_resumes_from_its_rows_done(_env, tiny_teachers, data, reference,
                                                                       tmp_path):
    """A format-2 store killed mid-entry (rows_done prefix, no block records): the rerun keeps
    the prefix, computes the rest, and upgrades the root to version 4."""
    import shutil

    out = tmp_path / "v2.zarr"
    shutil.copytree(reference, out)
    entry = out / "checkpoints" / ENTRY[0] / ENTRY[1]
    shutil.rmtree(entry / "blocks")
    for chunk in (entry / "logits" / "c").iterdir():
        if int(chunk.name) >= 3:
            shutil.rmtree(chunk)
    for node, fields in ((entry, {"rows_done": 3 * CHUNK, "complete": False}), (out, {"format_version": 2}),
                         (out / "checkpoints" / ENTRY[0], {"complete": False})):
        meta = json.loads((node / "zarr.json").read_text())
        meta["attributes"]["logitstore"].update(fields)
        (node / "zarr.json").write_text(json.dumps(meta))
    kept = {i: (entry / "logits" / "c" / str(i) / "0").stat().st_mtime_ns for i in range(3)}
    assert open_store(out).meta.format_version == 2

    build_store(_cfg(tiny_teachers, data, out))
    assert open_store(out).meta.format_version == 4
    assert {i: m for i, m in _recorded(out).items() if i < 3} == kept
    # the kept blocks' records hold the error the old entry had reached (theirs is not known)
    records = zarr.open_array(entry / "blocks", mode="r")[:]
    assert (records[:3] == np.float32(open_store(reference).logits_meta(*ENTRY).max_abs_err)).all()
    _assert_same_arrays(reference, out, skip=("checkpoints/checkpoint-10/train/blocks",))


def test_units_of_the_token_layouts_never_share_a_chunk_within_a_phase():
    from logitstore.blocks import BlockSpec
    from logitstore.ray_build import units
    from logitstore.store import SplitData
    from logitstore.writer import TOKEN_LOGIT_CHUNK

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 400, size=5000)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = SplitData("train", np.zeros(offsets[-1], np.int32), offsets, np.zeros(5000, np.int64), np.arange(5000))
    spec = BlockSpec(chunk_rows=64, token_budget=256, encoding="fp16")
    todo = [i for i in range(-(-5000 // 64)) if i % 7]  # some blocks recorded already
    phases = units(todo, data, spec, row_layout=False)
    assert sorted(i for phase in phases for u in phase for i in u) == todo
    for phase in phases:
        seen: set[int] = set()
        for unit in phase:
            first, last = offsets[unit[0] * 64], offsets[min((unit[-1] + 1) * 64, 5000)]
            chunks = set(range(first // TOKEN_LOGIT_CHUNK, (last - 1) // TOKEN_LOGIT_CHUNK + 1))
            assert not chunks & seen
            seen |= chunks
    assert units(todo, data, spec, row_layout=True) == [[[i] for i in todo]]


def test_bad_ray_input_is_one_line(tiny_teachers, data, tmp_path, capsys, monkeypatch):
    args = ["build", "--teacher", str(tiny_teachers), "--data", str(data), "--out", str(tmp_path / "s.zarr")]
    code, line = run_cli(capsys, *args, "--ray", "127.0.0.1:9")
    assert_one_line_error(code, line, "cannot reach a Ray cluster at '127.0.0.1:9'", "ray start --head")
    code, line = run_cli(capsys, *args, "--actors", "2")
    assert_one_line_error(code, line, "--actors needs --ray")
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    code, line = run_cli(capsys, *args, "--ray")
    assert_one_line_error(code, line, "pip install 'logitstore[ray]'")


def test_the_single_process_build_imports_nothing_from_ray(tiny_teachers, data, tmp_path):
    code = ("import sys; from logitstore.build import BuildConfig, build_store; "
            f"build_store(BuildConfig(teachers=({str(tiny_teachers)!r},), data={str(data)!r}, "
            f"out={str(tmp_path / 's.zarr')!r}, chunk_rows=512, threads=1)); "
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
