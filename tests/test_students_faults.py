"""Faults on the student side (issue 10): bad paths and damaged sweep folders are one-line
errors (exit 2, ``error: ...``, no traceback), and ``--init`` never loads pickle."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import LABELS, WORDS, make_teacher
from logitstore.tasks import get_task
from students.cli import main
from students.errors import StudentInitError
from students.model import build_student
from students.sweep import MANIFEST, SweepConfig, SweepSpace, run_sweep
from test_students_sweep import fake_run

CLS = get_task("sequence-classification")
VOCAB = 5 + len(WORDS) + 2  # conftest's tokenizer
SPACE = SweepSpace(distance=("ce",), temperature=(2.0,), student_temperature=("teacher",), alpha=(0.5,),
                   teacher=("ths",), layers=(1,), seeds=(0,))


def students_cli(capsys, *args: str) -> tuple[int, list[str]]:
    """Run `students` with ``args``; its exit code and the lines of its stderr."""
    code = main(list(args))
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_line(code: int, err: list[str], *needles: str) -> None:
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for n in needles:
        assert n in err[0], err


# ---------------------------------------------------------------------------- output paths
def test_train_out_naming_a_file_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("keep me\n")
    code, err = students_cli(capsys, "train", "--store", str(tmp_path / "none.zarr"), "--out", str(out),
                             "--device", "cpu", "--no-progress")
    assert_one_line(code, err, str(out), "is a file", "--out")
    assert out.read_text() == "keep me\n"


def test_train_out_inside_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = students_cli(capsys, "train", "--store", str(tmp_path / "none.zarr"),
                             "--out", str(tmp_path / "file" / "run"), "--device", "cpu", "--no-progress")
    assert_one_line(code, err, str(tmp_path / "file"), "is a file", "--out")


def test_sweep_out_naming_a_file_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.write_text("x")
    code, err = students_cli(capsys, "sweep", "--store", str(tmp_path / "none.zarr"), "--out", str(out))
    assert_one_line(code, err, str(out), "is a file", "--out")


# ---------------------------------------------------------------------------- --space
def test_space_naming_a_folder_is_a_one_line_error(tmp_path, capsys):
    code, err = students_cli(capsys, "sweep", "--store", str(tmp_path / "none.zarr"), "--out",
                             str(tmp_path / "s"), "--space", str(tmp_path))
    assert_one_line(code, err, str(tmp_path), "is a folder", "--space FILE.toml")
    assert not (tmp_path / "s").exists()


def test_space_naming_a_binary_file_is_a_one_line_error(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01alpha = [0.5]\n")
    code, err = students_cli(capsys, "sweep", "--store", str(tmp_path / "none.zarr"), "--out",
                             str(tmp_path / "s"), "--space", str(space))
    assert_one_line(code, err, str(space), "not UTF-8 text", "TOML")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------- sweep.json
@pytest.mark.parametrize("content", [b'{"version": 1, "store": "fake.zarr", "sta', b"", b"[1, 2]\n", b"\xff\xfe"])
def test_a_damaged_sweep_json_is_a_one_line_error_naming_the_file_and_the_fix(tmp_path, capsys, content):
    out = tmp_path / "s"
    run_sweep(SweepConfig("fake.zarr", str(out), "grid", SPACE), fake_run, check_store=False)
    records = (out / "results.jsonl").read_text()
    (out / MANIFEST).write_bytes(content)
    with pytest.raises(Exception) as info:
        run_sweep(SweepConfig("fake.zarr", str(out), "grid", SPACE), fake_run, check_store=False)
    message = str(info.value)
    assert str(out / MANIFEST) in message and "delete it" in message, message
    assert (out / "results.jsonl").read_text() == records  # the finished runs are untouched
    code, err = students_cli(capsys, "report", str(out))
    assert_one_line(code, err, str(out / MANIFEST), "delete it")


def test_a_damaged_sweep_json_is_a_one_line_error_from_the_cli(tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / MANIFEST).write_text('{"version": 1, "sto')
    code, err = students_cli(capsys, "sweep", "--store", str(tmp_path / "none.zarr"), "--out", str(out))
    assert_one_line(code, err, str(out / MANIFEST), "delete it")


# ---------------------------------------------------------------------------- --init never loads pickle
@pytest.fixture()
def pickled_model(tmp_path):
    """A transformers model folder with config.json and only pytorch_model.bin (pickle)."""
    folder = make_teacher(tmp_path / "pickled", seed=3)
    state = load_file(str(folder / "model.safetensors"))
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_init_refuses_a_folder_with_only_pickle_weights(pickled_model):
    with pytest.raises(StudentInitError) as info:
        build_student(str(pickled_model), 2, LABELS, VOCAB, CLS)
    message = str(info.value)
    assert "pytorch_model.bin" in message and "save_pretrained(safe_serialization=True)" in message, message


def test_init_never_unpickles(pickled_model, monkeypatch):
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    with pytest.raises(StudentInitError):
        build_student(str(pickled_model), 2, LABELS, VOCAB, CLS)
    assert loads == []


def test_init_with_safetensors_still_builds(tmp_path):
    folder = make_teacher(tmp_path / "ok", seed=3)
    student, init = build_student(str(folder), 2, LABELS, VOCAB, CLS)
    assert init.layer_map == (1, 3) and student.config.num_hidden_layers == 2


def test_manifest_reads_back(tmp_path):
    out = tmp_path / "s"
    run_sweep(SweepConfig("fake.zarr", str(out), "grid", SPACE), fake_run, check_store=False)
    assert json.loads((out / MANIFEST).read_text())["status"] == "complete"


def test_a_failed_train_leaves_no_output_folder(tmp_path, capsys):
    code, err = students_cli(capsys, "train", "--store", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "o"),
                             "--device", "cpu", "--no-progress")
    assert_one_line(code, err, "no store at")
    assert not (tmp_path / "o").exists()


def test_a_second_sweep_on_one_folder_fails_at_once_naming_the_first(tmp_path, capsys):
    """Two sweeps on one folder would train every run twice: the second is refused in one line."""
    import os
    import signal
    import subprocess
    import sys

    sweep_dir = tmp_path / "sweep"
    code = ("import time; from logitstore.lock import exclusive\n"
            f"with exclusive({str(sweep_dir)!r}, what='sweep', thing='sweep folder'):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    root = Path(__file__).resolve().parents[1]
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(root)))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert main(["sweep", "--store", str(tmp_path / "any.zarr"), "--out", str(sweep_dir)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another sweep is writing this sweep folder" in err[0], err
        assert f"pid {holder.pid}" in err[0]
        assert not (sweep_dir / "sweep.json").exists()  # nothing written by the refused sweep
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
