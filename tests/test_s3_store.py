"""Stores on object storage (issue 13): every command against a real S3 endpoint on
127.0.0.1 (moto's server, the ``s3_endpoint`` fixture), compared with the same commands on
a local folder: the same chunk bytes, the same students, a kill -9 resumed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import assert_one_line_error, kill9_when, run_cli, write_csv_splits
from logitstore import open_store
from logitstore.build import BuildConfig, build_store
from logitstore.storage import zarr_store
from students.cli import main as students_main
from students.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("_one_thread")
CHUNK = 32
ROOT = Path(__file__).parents[1]


def _build_args(teachers: Path, data: Path, out: str, *extra: str) -> list[str]:
    return ["build", "--teacher", str(teachers), "--data", str(data), "--out", out, "--chunk-rows", str(CHUNK),
            "--dtype", "fp32", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def stores(_env, s3_endpoint, tiny_teachers, tiny_data, tmp_path_factory) -> tuple[Path, str]:
    """The same build twice: into a local folder (API) and into s3:// (the CLI)."""
    local = tmp_path_factory.mktemp("local") / "ref.zarr"
    build_store(BuildConfig(teachers=(tiny_teachers,), data=str(tiny_data), out=local, encoding="fp32",
                            chunk_rows=CHUNK, threads=1))
    url = f"{s3_endpoint}/stores/s.zarr"
    from logitstore.cli import main

    assert main(_build_args(tiny_teachers, tiny_data, url)) == 0
    return local, url


def _keys(store) -> dict[str, bytes]:
    """Every object of a zarr store by key, with its bytes."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    async def read() -> dict[str, bytes]:
        out = {}
        async for key in store.list():
            out[key] = (await store.get(key, default_buffer_prototype())).to_bytes()
        return out
    return sync(read())


def _chunk_bytes_equal(local: Path, url: str) -> int:
    """Assert every chunk object of ``url`` has the bytes of the local store's file; return how many."""
    a, b = _keys(zarr_store(local)), _keys(zarr_store(url))
    assert a.keys() == b.keys()
    chunks = [k for k in a if not k.endswith("zarr.json")]  # metadata holds times and paths: compared below
    for k in chunks:
        assert a[k] == b[k], k
    return len(chunks)


def test_build_on_s3_writes_the_bytes_of_a_local_build(stores):
    local, url = stores
    assert _chunk_bytes_equal(local, url) > 20
    ga, gb = zarr.open_group(zarr_store(local), mode="r"), zarr.open_group(zarr_store(url), mode="r")
    for key, arr in ga.members(max_depth=None):
        if isinstance(arr, zarr.Array):
            np.testing.assert_array_equal(arr[:], gb[key][:], err_msg=key)
    a, b = open_store(local), open_store(url)
    assert a.checkpoint_names() == b.checkpoint_names() == ["checkpoint-10", "checkpoint-20"]
    assert [(c.val_loss, c.val_score) for c in a.checkpoints()] == [(c.val_loss, c.val_score) for c in b.checkpoints()]
    assert b.tokenizer_files() == a.tokenizer_files()
    assert 0 < b.nbytes_on_disk("checkpoints") and abs(b.nbytes_on_disk() - a.nbytes_on_disk()) < 2000


def test_rerun_on_complete_s3_store_skips_and_info_verify_read_it(stores, tiny_teachers, tiny_data, capsys):
    local, url = stores
    from logitstore.cli import main

    assert main(_build_args(tiny_teachers, tiny_data, url)) == 0
    assert "complete, skipped" in capsys.readouterr().err
    assert main(["info", url]) == 0
    text = capsys.readouterr().out
    assert "checkpoint-10" in text and "complete" in text and "damaged" not in text
    mb = float(text.split("on disk: ")[1].split(" MB")[0])
    assert mb > 0
    assert main(["verify", url]) == 0
    assert "damaged" not in capsys.readouterr().out
    assert main(["info", "file://" + str(local)]) == 0  # file:// URLs are local folders


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


@pytest.mark.parametrize("loader", ["ram", "stream"])
def test_students_train_from_s3_equals_training_from_the_local_store(stores, loader, tmp_path):
    local, url = stores
    common = dict(teacher="checkpoint-10", layers=1, max_steps=6, batch_size=16, lr=1e-3, seed=3, device="cpu",
                  progress=False, loader=loader, buffer_chunks=2)
    a = train(TrainConfig(store=str(local), out=str(tmp_path / "local"), **common))
    b = train(TrainConfig(store=url, out=str(tmp_path / "s3"), **common))
    assert a.losses == b.losses
    wa, wb = _weights(tmp_path / "local"), _weights(tmp_path / "s3")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    run = json.loads((tmp_path / "s3" / "run_config.json").read_text())
    assert run["store"] == url and run["streamed"] == (loader == "stream")


def test_students_sweep_and_report_on_an_s3_store(stores, tmp_path, capsys):
    _, url = stores
    sweep = tmp_path / "sweep"
    args = ["sweep", "--store", url, "--out", str(sweep), "--strategy", "grid", "--distance", "ce",
            "--temperature", "2", "--student-temperature", "teacher", "--alpha", "0.5", "--teacher", "ths",
            "--layers", "1", "--seeds", "1", "--max-steps", "2", "--batch-size", "16", "--device", "cpu"]
    assert students_main(args) == 0, capsys.readouterr().err
    manifest = json.loads((sweep / "sweep.json").read_text())
    assert manifest["store"] == url and manifest["status"] == "complete"
    assert students_main(["report", str(sweep)]) == 0, capsys.readouterr().err
    assert (sweep / "report.md").is_file() and url in (sweep / "report.md").read_text()


# ---------------------------------------------------------------------------- kill -9 on S3
def _rows_done(url: str, ckpt: str, split: str) -> int:
    import fsspec

    fs = fsspec.filesystem("s3")
    try:
        meta = json.loads(fs.cat_file(f"{url[5:]}/checkpoints/{ckpt}/{split}/zarr.json"))
        return int(meta["attributes"]["logitstore"]["rows_done"])
    except (OSError, ValueError, KeyError):
        return 0


def test_kill9_mid_build_on_s3_then_resume_equals_a_local_build(s3_endpoint, tiny_teachers, tmp_path):
    data = write_csv_splits(tmp_path / "data", {"train": 2000, "validation": 100}, seed=12)
    teacher = tiny_teachers / "checkpoint-10"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    local = tmp_path / "ref.zarr"
    cmd = [sys.executable, "-m", "logitstore.cli"]
    subprocess.run(cmd + _build_args(teacher, data, str(local)), check=True, env=env, capture_output=True)
    url = f"{s3_endpoint}/stores/killed.zarr"
    done = kill9_when(cmd + _build_args(teacher, data, url), env, lambda: _rows_done(url, "checkpoint-10", "train"),
                      CHUNK * 3)
    assert 0 < done < 2000, f"kill landed outside the build of the train split ({done} rows done)"
    partial = open_store(url)  # a reader sees the finished splits and no complete checkpoint
    assert partial.checkpoint_names() == [] and partial.split_names() == ["train", "validation"]

    rerun = subprocess.run(cmd + _build_args(teacher, data, url), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert open_store(url).checkpoint_names() == ["checkpoint-10"]
    assert _chunk_bytes_equal(local, url) > 50

    # a lost chunk object: verify names it, a rerun of the build rewrites it (repair on S3)
    import fsspec

    fsspec.filesystem("s3").rm_file(f"{url[5:]}/checkpoints/checkpoint-10/train/logits/c/5/0")
    from logitstore.cli import main

    assert main(["verify", url]) == 1
    assert main(_build_args(teacher, data, url)) == 0
    assert main(["verify", url]) == 0
    assert _chunk_bytes_equal(local, url) > 50


# ---------------------------------------------------------------------------- set-up errors
def test_storage_options_from_the_environment(stores, monkeypatch, capsys):
    _, url = stores
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    from s3fs import S3FileSystem

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("LOGITSTORE_STORAGE_OPTIONS", json.dumps({"endpoint_url": endpoint}))
    assert open_store(url).checkpoint_names() == ["checkpoint-10", "checkpoint-20"]
    monkeypatch.delenv("LOGITSTORE_STORAGE_OPTIONS")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)  # botocore's per-service endpoint variable
    S3FileSystem.clear_instance_cache()  # fsspec reuses a client made under the old environment otherwise
    assert open_store(url).checkpoint_names() == ["checkpoint-10", "checkpoint-20"]
    S3FileSystem.clear_instance_cache()
    monkeypatch.setenv("LOGITSTORE_STORAGE_OPTIONS", "{endpoint")
    code, line = run_cli(capsys, "info", url)
    assert_one_line_error(code, line, "LOGITSTORE_STORAGE_OPTIONS", "JSON")
    monkeypatch.setenv("LOGITSTORE_STORAGE_OPTIONS", json.dumps({"endpoint_url": endpoint}))
    code, line = run_cli(capsys, "info", url.replace("s.zarr", "none.zarr"))
    assert_one_line_error(code, line, "no store at", "logitstore build --out")
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("LOGITSTORE_STORAGE_OPTIONS", json.dumps({"config_kwargs": {"retries": {"max_attempts": 1}}}))
    code, line = run_cli(capsys, "info", url)
    assert_one_line_error(code, line, "cannot reach store", "AWS_ENDPOINT_URL")


def test_a_url_without_its_backend_is_one_line_and_local_use_imports_no_cloud_client():
    code = ("import sys; sys.modules['s3fs'] = None\n"
            "import logitstore, logitstore.build, logitstore.cli, students.cli, students.train, students.data\n"
            "assert sys.modules['s3fs'] is None and 'aiobotocore' not in sys.modules, 'a cloud client was imported'\n"
            "sys.exit(logitstore.cli.main(['info', 's3://bucket/s.zarr']))")
    res = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and "pip install 'logitstore[s3]'" in line, line
