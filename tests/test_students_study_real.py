"""A real tiny two-store study end to end (tiny random teachers, tiny stores, real training
with early stopping and epochs per size), and kill -9 of the study process mid-run: the
rerun trains only the missing runs and ends with the same results as an uninterrupted study."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import kill9_when, write_csv_splits
from logitstore.build import BuildConfig, build_store
from students.cli import main
from students.study import load_study, run_study
from students.sweep import load_results

pytestmark = pytest.mark.usefixtures("_one_thread")


@pytest.fixture(scope="module")
def stores(_env, tmp_path_factory, tiny_teachers, tiny_data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study-stores")
    other = write_csv_splits(root / "data-b", {"train": 48, "validation": 24, "test": 24}, seed=5)
    out = {}
    for name, data in (("a", tiny_data), ("b", other)):
        out[name] = root / f"{name}.zarr"
        build_store(BuildConfig(teachers=(tiny_teachers,), data=str(data), out=out[name], encoding="fp32",
                                chunk_rows=16))
    return out


def _toml(tmp_path: Path, stores: dict[str, Path]) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(f"""
sizes = [1]
seeds = 1

[space]
distance = ["ce"]
temperature = [2]
student_temperature = ["teacher", 1]
alpha = [0.5]
teacher = ["ths", "tll"]

[train]
epochs = 2
batch_size = 16
lr = 0.001
eval_every = 2
patience = 2
device = "cpu"
threads = 1

[[stores]]
name = "a"
path = "{stores['a']}"
[stores.epochs]
1 = 1

[[stores]]
name = "b"
path = "{stores['b']}"
""")
    return path


def _records(study: Path) -> dict[str, dict[str, tuple]]:
    """Case folder -> run key -> (val, test, steps, best_step), every results.jsonl of the study."""
    return {f"{c}/L1": {k: (r["val"], r["test"], r["steps"], r["best_step"]) for k, r in
                        load_results(study / c / "L1").items()} for c in ("a", "b")}


def test_a_tiny_two_store_study_runs_end_to_end(stores, tmp_path, capsys):
    assert main(["study", str(_toml(tmp_path, stores)), "--out", str(tmp_path / "study")]) == 0
    study = tmp_path / "study"
    manifest = json.loads((study / "study.json").read_text())
    assert manifest["status"] == "complete"
    assert [(c["folder"], c["epochs"]) for c in manifest["cases"]] == [("a/L1", 1), ("b/L1", 2)]  # epochs per size
    for case, steps_per_epoch in (("a", 120 // 16 + 1), ("b", 48 // 16)):
        sweep = json.loads((study / case / "L1" / "sweep.json").read_text())
        assert sweep["status"] == "complete" and sweep["train_options"]["patience"] == 2
        runs = [json.loads(p.read_text()) for p in (study / case / "L1" / "runs").glob("*/summary.json")]
        assert runs and all(r["early_stop"]["step"] <= steps_per_epoch * (1 if case == "a" else 2) for r in runs)
    capsys.readouterr()
    assert main(["report", str(study)]) == 0
    numbers = json.loads((study / "study_report.json").read_text())
    assert [(c["store"], c["split"]) for c in numbers["cases"]] == [("a", "test"), ("b", "test")]
    for c in numbers["cases"]:
        s = {r: c["scores"][r]["mean"] for r in ("no_kd", "hinton", "recommended")}
        t = c["teacher"]["mean"]
        assert 0 <= t <= 1 and all(0 <= v <= 1 for v in s.values())
        want = (s["recommended"] - s["no_kd"]) / (t - s["no_kd"]) if t > s["no_kd"] else None
        assert c["gap_closed"]["recommended"] == pytest.approx(want)
        assert c["beats_both"] == (s["recommended"] > s["hinton"] and s["recommended"] > s["no_kd"])
    assert numbers["recommended"]["cases"] == 2
    md = (study / "study_report.md").read_text()
    assert "## Reward R per KD parameter across cases" in md and "student_temperature: teacher -> 1" in md


def test_kill9_mid_study_then_rerun_trains_only_the_missing_runs(stores, tmp_path):
    toml = _toml(tmp_path, stores)
    full = run_study(load_study(toml, {"out": str(tmp_path / "full")}))
    trained = {case.folder: {k for k, r in res.records.items() if "same_run_as" not in r} for case, res in full.sweeps}
    total = sum(map(len, trained.values()))

    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "students.cli", "study", str(toml), "--out", str(killed)]
    count = lambda: sum(len(load_results(killed / c / "L1")) for c in ("a", "b")  # noqa: E731
                        if (killed / c / "L1").exists())
    done = kill9_when(cmd, env, count, 3)
    assert 3 <= done < total, f"the kill landed after the study ({done} of {total} runs)"
    before = {f: {k for k, r in recs.items()} for f, recs in _records(killed).items()}
    before_trained = {k for f in before for k in before[f] if k in trained[f]}

    resumed = run_study(load_study(toml, {"out": str(killed)}))
    assert resumed.ran == total - len(before_trained)  # only the missing runs ran
    assert _records(killed) == _records(tmp_path / "full")  # the same runs, the same results
    for case in ("a", "b"):  # no run recorded twice
        lines = (killed / case / "L1" / "results.jsonl").read_text().splitlines()
        assert len(lines) == len({json.loads(x)["key"] for x in lines})
    assert json.loads((killed / "study.json").read_text())["status"] == "complete"
