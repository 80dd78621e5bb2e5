"""Sweeps on a real local Ray cluster (2 CPUs, started once for the module): a Ray sweep
records what a serial sweep records; a greedy Ray sweep sends its stages in order and
chooses as a serial one; a run whose worker dies is retried once, one that always dies is
recorded as failed and the sweep goes on; a killed driver resumes with only the missing
runs; a dying worker of the local pool stops the sweep with one line; bad --ray input (no
Ray, an unreachable address, --workers, a run larger than the cluster) is one line; nothing
imports Ray without --ray."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import ray

from logitstore.build import BuildConfig, build_store
from students.cli import main
from students.report import load_report, write_report
from students.sweep import (RESULTS, Runner, RunOutcome, Serial, SweepConfig, SweepSpace, greedy, load_results,
                            read_manifest, run_sweep, train_run)
from students.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
#: hinton, recommended and no KD (grid of the Hinton point only) x 2 seeds = 6 runs.
SPACE = SweepSpace(distance=("ce",), temperature=(2.0,), student_temperature=("teacher",), alpha=(0.5,),
                   teacher=("ths",), layers=(1,), seeds=(0, 1))
COMPARED = ("val", "test", "checkpoint", "steps", "best_step", "point", "seed")


def train_options(store: Path) -> TrainConfig:
    return TrainConfig(store=str(store), out="unused", max_steps=3, batch_size=16, lr=1e-3, device="cpu", threads=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_teachers, tiny_data, _env) -> Path:
    out = tmp_path_factory.mktemp("stores") / "ray-sweep.zarr"
    build_store(BuildConfig(teachers=(tiny_teachers,), data=str(tiny_data), out=out, encoding="fp32", chunk_rows=16))
    return out


@pytest.fixture(scope="module")
def cluster(_env):
    """A local Ray cluster with 2 CPUs for the module; its workers import this module (the
    dying run functions below) and the repository, as the driver does. Yields its address."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        yield ray.get_runtime_context().gcs_address
        ray.shutdown()


@pytest.fixture(scope="module")
def serial(store, tmp_path_factory, _one_thread) -> dict:
    """The records of the sweep trained in this process, one run after another."""
    out = tmp_path_factory.mktemp("serial") / "sweep"
    return run_sweep(SweepConfig(str(store), str(out), "grid", SPACE, 1, train_options(store))).records


def assert_same_runs(got: dict, want: dict) -> None:
    for key, rec in got.items():
        for name in COMPARED:
            assert rec[name] == want[key][name], (key, name)
        for split in ("val_eval", "test_eval"):
            assert rec[split] == pytest.approx(want[key][split], abs=1e-6)


@dataclass(frozen=True)
class Dies:
    """A run function whose worker process dies (os._exit) on the runs it picks: ``once``
    (the first attempt only) or ``always``. Each attempt appends a line to
    ``log_dir``/<run key> first, so the test counts attempts."""

    log_dir: str
    once: tuple[float, ...] = ()  # alphas of the runs that die on their first attempt
    always: tuple[str, ...] = ()  # teachers of the runs that always die

    def __call__(self, config: TrainConfig):
        log = Path(self.log_dir) / Path(config.out).name
        attempts = log.read_text().count("\n") if log.exists() else 0
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        if config.teacher in self.always or (config.alpha in self.once and attempts == 0):
            os._exit(3)
        return train_run(config)


def fake_run(config: TrainConfig) -> RunOutcome:
    """A deterministic metric (no training): best tau_t 4, alpha helps, mse hurts, tll helps."""
    val = (0.5 - 0.01 * abs(config.temperature - 4) + 0.1 * config.alpha - 0.05 * (config.distance == "mse")
           + 0.02 * (config.teacher == "tll") + 0.001 * config.seed)
    return RunOutcome("accuracy", val, val - 0.1, config.teacher, train_seconds=0.0, steps=1, best_step=1)


# ---------------------------------------------------------------------------- bad input (no cluster needed)
def test_ray_with_workers_is_a_one_line_error(capsys):
    code = main(["sweep", "--store", "s.zarr", "--ray", "--workers", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "drop --workers" in err[0]


def test_ray_not_installed_is_a_one_line_error_naming_the_extra(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    code = main(["sweep", "--store", str(store), "--out", str(tmp_path / "s"), "--ray", "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "logitstore[ray]" in err[-1]


def test_an_unreachable_address_is_a_one_line_error_within_seconds(store, tmp_path, capsys):
    started = time.monotonic()
    code = main(["sweep", "--store", str(store), "--out", str(tmp_path / "s"), "--ray", "127.0.0.1:9", "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "cannot reach a Ray cluster at 127.0.0.1:9" in err[-1] and "ray start --head" in err[-1]
    assert time.monotonic() - started < 30


def test_nothing_imports_ray_without_the_flag():
    code = ("import sys, students, students.cli, students.sweep, students.sweep.recipe; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


# ---------------------------------------------------------------------------- on the cluster
def test_a_ray_sweep_records_what_a_serial_sweep_records(store, serial, cluster, tmp_path):
    result = run_sweep(SweepConfig(str(store), str(tmp_path / "ray"), "grid", SPACE, None, train_options(store),
                                   ray=cluster))
    assert result.ran == len(serial) == 6
    assert result.records.keys() == serial.keys()
    assert_same_runs(result.records, serial)
    configs = (tmp_path / "ray" / "runs").glob("*/run_config.json")
    assert {json.loads(c.read_text())["threads"] for c in configs} == {1}  # one CPU per task


class CountingSerial(Serial):
    """The serial executor, noting how many runs each batch (greedy stage) had."""

    def __init__(self) -> None:
        super().__init__(fake_run, 1)
        self.batches: list[int] = []

    def run(self, jobs):
        self.batches.append(len(jobs))
        yield from super().run(jobs)


def test_a_greedy_ray_sweep_runs_its_stages_in_order_and_chooses_as_a_serial_one(cluster, tmp_path):
    """Each stage's runs go to the cluster together; the next stage is sent only when they are
    all recorded: results.jsonl holds the same batches, in the same order, as a serial sweep."""
    space = SweepSpace(distance=("ce", "mse"), temperature=(1.0, 2.0, 4.0), student_temperature=("teacher", "1"),
                       alpha=(0.5, 0.9), teacher=("ths", "tll"), layers=(2,), seeds=(0, 1))
    cfg = SweepConfig("fake.zarr", str(tmp_path / "ray"), "greedy", space, None, ray=cluster)
    ray_outcome = run_sweep(cfg, run_fn=fake_run, check_store=False).outcomes[0]
    serial = CountingSerial()
    (tmp_path / "serial").mkdir()
    outcome = greedy(space, 2, Runner(tmp_path / "serial", cfg.template, space.seeds, serial).run_points)
    assert ray_outcome.to_dict() == outcome.to_dict()
    want = [json.loads(x)["key"] for x in (tmp_path / "serial" / RESULTS).read_text().splitlines()]
    got = [json.loads(x)["key"] for x in (tmp_path / "ray" / RESULTS).read_text().splitlines()]
    assert len(got) == len(want) == sum(serial.batches) and len([n for n in serial.batches if n]) == 6
    start = 0
    for n in serial.batches:  # baselines, then one batch per stage of GREEDY_ORDER
        assert set(got[start:start + n]) == set(want[start:start + n])
        start += n


def test_a_dying_worker_is_retried_once_and_one_that_always_dies_is_recorded_failed(store, serial, cluster,
                                                                                       tmp_path):
    """No KD (alpha 0) dies on its first attempt and then trains; recommended (teacher tll)
    dies on both attempts: recorded failed with Ray's reason, and the sweep completes."""
    logs = tmp_path / "attempts"
    logs.mkdir()
    space = replace(SPACE, seeds=(0,))
    cfg = SweepConfig(str(store), str(tmp_path / "sweep"), "grid", space, None, train_options(store), ray=cluster)
    result = run_sweep(cfg, run_fn=Dies(str(logs), once=(0.0,), always=("tll",)))
    attempts = {p.name: p.read_text().count("\n") for p in logs.iterdir()}
    lines = [json.loads(x) for x in (tmp_path / "sweep" / RESULTS).read_text().splitlines()]
    failed = [r for r in lines if "failed" in r]
    assert len(failed) == 1 and failed[0]["point"]["teacher"] == "tll"
    assert "WorkerCrashedError after 2 attempts" in failed[0]["failed"]
    by_alpha = {r["point"]["alpha"]: r for r in lines if "failed" not in r}
    assert attempts == {failed[0]["key"]: 2, by_alpha[0.0]["key"]: 2, by_alpha[0.5]["key"]: 1}
    assert result.ran == 2 and set(result.records) == {r["key"] for r in by_alpha.values()}
    assert_same_runs({r["key"]: r for r in by_alpha.values()}, serial)  # the retried run trained as if never killed
    manifest = read_manifest(tmp_path / "sweep")
    assert manifest["status"] == "complete" and list(manifest["failed"]) == [failed[0]["key"]]
    write_report(tmp_path / "sweep")  # the failed run has no metrics: the report shows the others
    report = load_report(tmp_path / "sweep")
    assert report.complete and sum(len(r.records) for rows in report.rows.values() for r in rows) == 2
    # a rerun trains only the failed run, now without dying
    again = run_sweep(cfg)
    assert again.ran == 1 and read_manifest(tmp_path / "sweep")["failed"] == {}
    assert_same_runs(load_results(tmp_path / "sweep"), serial)


def test_a_run_larger_than_the_cluster_is_refused_before_anything_runs(store, cluster, tmp_path):
    from students.errors import ClusterError

    cfg = SweepConfig(str(store), str(tmp_path / "sweep"), "grid", SPACE, None,
                      replace(train_options(store), threads=4), ray=cluster)
    with pytest.raises(ClusterError, match=r"each run asks for 4 CPU\(s\) \(--threads\) but the Ray cluster has 2"):
        run_sweep(cfg)
    assert not (tmp_path / "sweep" / RESULTS).exists()


def test_a_killed_driver_resumes_with_only_the_missing_runs(store, serial, cluster, tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "students.cli", "sweep", "--store", str(store), "--out", str(out),
           "--strategy", "grid", "--distance", "ce", "--temperature", "2", "--student-temperature", "teacher",
           "--alpha", "0.5", "--teacher", "ths", "--layers", "1", "--seeds", "2", "--max-steps", "3",
           "--batch-size", "16", "--lr", "1e-3", "--device", "cpu", "--threads", "1", "--ray", cluster]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    deadline = time.monotonic() + 300
    while not ((out / RESULTS).exists() and (out / RESULTS).read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = load_results(out, repair=True)
    assert 1 <= len(before) < 6
    result = run_sweep(SweepConfig(str(store), str(out), "grid", SPACE, None, train_options(store), ray=cluster))
    assert result.ran == 6 - len(before)
    assert_same_runs(result.records, serial)


def test_a_dying_worker_of_the_local_pool_stops_the_sweep_with_one_line(store, tmp_path, capsys):
    """The pool cannot tell which run killed its worker: it stops, naming the fix (the runs
    recorded so far stay; a rerun resumes)."""
    from students.errors import ClusterError

    cfg = SweepConfig(str(store), str(tmp_path / "sweep"), "grid", replace(SPACE, seeds=(0,)), 2,
                      replace(train_options(store), threads=2))
    with pytest.raises(ClusterError, match="rerun the same command to resume, or use --ray"):
        run_sweep(cfg, run_fn=Dies(str(tmp_path), always=("tll",)))


def test_a_study_on_ray_records_what_a_serial_study_records(store, cluster, tmp_path):
    """`students study --ray`: every case's greedy sweep trains on the cluster, and the
    records equal those of the same study trained in this process; the plan records it. With
    --parallel-cases 2 both cases (sizes 1 and 2) submit their runs to the cluster from their
    own threads at once, and record the same."""
    from students.study import parse_study, run_study

    data = {"sizes": [1, 2], "seeds": 1, "stores": [{"name": "a", "path": str(store)}],
            "space": {"distance": ["ce"], "temperature": [2], "student_temperature": ["teacher"], "alpha": [0.5],
                      "teacher": ["ths"]},
            "train": {"max_steps": 3, "batch_size": 16, "lr": 1e-3, "device": "cpu", "threads": 1}}
    results = {}
    for name, flags in (("serial", {}), ("ray", {"ray": cluster}), ("ray-cases", {"ray": cluster, "parallel_cases": 2})):
        out = tmp_path / name
        config = parse_study(data, {"out": str(out), **flags})
        assert [c.sweep.ray for c in config.cases] == [flags.get("ray")] * 2
        run_study(config)
        results[name] = {size: load_results(out / "a" / size) for size in ("L1", "L2")}
        plan = json.loads((out / "study.json").read_text())
        assert (plan["ray"], plan["parallel_cases"]) == (flags.get("ray"), flags.get("parallel_cases", 1))
    for name in ("ray", "ray-cases"):
        for size in ("L1", "L2"):
            assert len(results[name][size]) == len(results["serial"][size]) >= 3  # hinton, recommended, no KD
            assert_same_runs(results[name][size], results["serial"][size])


def test_a_study_with_ray_and_workers_is_a_one_line_error(store):
    from students.study import StudyError, parse_study

    with pytest.raises(StudyError, match="drop workers"):
        parse_study({"stores": [{"name": "a", "path": str(store)}], "workers": 2, "ray": "local"})
    with pytest.raises(StudyError, match="ray must be"):
        parse_study({"stores": [{"name": "a", "path": str(store)}], "ray": 3})
