"""`students study --parallel-cases K`: K (store, size) cases at once, their runs sharing one
process pool. Checked with the fake runs of tests/test_students_study.py on a real 2-process
pool: the cases really overlap (a run of one case waits until another case has started a run,
which cases run in order never do), the records and outcomes equal those of the cases run one
after another, each case's lines carry its folder, a failing case stops the study and a rerun
ends as an uninterrupted study does, and the settings that cannot work are one-line errors."""
from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from students.cli import main
from students.study import load_study, run_study
from students.sweep import RunOutcome
from students.train import TrainConfig
from test_students_study import _study_toml, fake_run

WAIT_S = 180  # generous: the pool's spawned workers import torch first, on a shared machine


def _case(config: TrainConfig) -> str:
    """The case of a run: its out is STUDY/<store>/L<size>/runs/<key>."""
    return "/".join(Path(config.out).parts[-4:-2])


def waits_for_another_case(config: TrainConfig) -> RunOutcome:
    """fake_run, but each run leaves a mark, and the first run of case a/L1 to start waits until
    a run of another case has left one: it would wait forever if the cases ran one by one."""
    marks = Path(config.out).parents[3] / "marks"
    marks.mkdir(exist_ok=True)
    (marks / f"{_case(config).replace('/', '-')}-{Path(config.out).name}").touch()
    if _case(config) == "a/L1":
        try:
            os.close(os.open(marks / "waiter", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return fake_run(config)
        deadline = time.monotonic() + WAIT_S
        while not any(m.name.startswith(("a-L2-", "b-L1-")) for m in marks.iterdir()):
            if time.monotonic() > deadline:
                raise RuntimeError("no run of another case started while a run of case a/L1 was training")
            time.sleep(0.05)
    return fake_run(config)


def slow_and_fails_in_case_b(config: TrainConfig) -> RunOutcome:
    """Every run leaves a mark (its case) as it starts and takes a second; the runs of case
    b/L1's second greedy stage (distance: MSE) fail. The pool hands out runs in submission
    order, so when one of them starts, the first-stage runs of the other cases submitted
    before it have started, and their later runs are queued or training."""
    marks = Path(config.out).parents[3] / "marks"
    marks.mkdir(exist_ok=True)
    (marks / Path(config.out).name).write_text(_case(config))
    if _case(config) == "b/L1" and config.distance == "mse":
        raise RuntimeError("case b/L1 fails")
    time.sleep(1.0)
    return fake_run(config)


def _records(study: Path) -> dict[str, list]:
    """Each case's finished runs as (point, seed, val, test), sorted, and its sweep outcomes."""
    out = {}
    for case in ("a/L1", "a/L2", "b/L1"):
        lines = [json.loads(x) for x in (study / case / "results.jsonl").read_text().splitlines()]
        out[case] = sorted((json.dumps(r["point"], sort_keys=True), r["seed"], r["val"], r["test"]) for r in lines
                           if "failed" not in r)
        out[case + " outcomes"] = json.loads((study / case / "sweep.json").read_text())["outcomes"]
    return out


@pytest.fixture(scope="module")
def in_order(tmp_path_factory) -> dict[str, list]:
    """The fake study with its cases one after another, in this process."""
    tmp = tmp_path_factory.mktemp("in-order")
    run_study(load_study(_study_toml(tmp), check_stores=False), run_fn=fake_run, check_store=False,
              console=Console(file=io.StringIO()))
    return _records(tmp / "study")


def test_cases_at_once_overlap_and_record_what_the_cases_in_order_record(tmp_path, in_order):
    study = load_study(_study_toml(tmp_path), {"workers": 2, "parallel_cases": 2}, check_stores=False)
    assert study.parallel_cases == 2
    log = io.StringIO()
    result = run_study(study, run_fn=waits_for_another_case, check_store=False, console=Console(file=log, width=200))
    assert (tmp_path / "study" / "marks" / "waiter").exists()  # the waiting run ran, and was released
    assert _records(tmp_path / "study") == in_order
    assert [(c.store, c.size) for c, _ in result.sweeps] == [("a", 1), ("a", 2), ("b", 1)]
    assert json.loads((tmp_path / "study" / "study.json").read_text())["parallel_cases"] == 2
    runs = [line for line in log.getvalue().splitlines() if " seed " in line and ": val " in line]
    assert runs and all(line.startswith(("[a/L1] ", "[a/L2] ", "[b/L1] ")) for line in runs)
    assert {line.split("]")[0] for line in runs} == {"[a/L1", "[a/L2", "[b/L1"}


def test_a_failing_case_stops_the_study_and_a_rerun_ends_as_the_cases_in_order(tmp_path, in_order):
    """Case b/L1 fails in its second stage while the other two cases have runs training and
    queued: the study ends
    (within the time limit: a queued run dropped by the pool must not leave its case waiting)
    with b/L1's error; every run that started, but b/L1's, finished and is recorded; a rerun
    trains the rest and ends with the records of the cases in order."""
    study = load_study(_study_toml(tmp_path), {"workers": 2, "parallel_cases": 3}, check_stores=False)
    raised: list[BaseException] = []

    def go() -> None:
        try:
            run_study(study, run_fn=slow_and_fails_in_case_b, check_store=False, console=Console(file=io.StringIO()))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            raised.append(exc)

    driver = threading.Thread(target=go, daemon=True)
    driver.start()
    driver.join(WAIT_S)
    assert not driver.is_alive(), f"the study did not stop within {WAIT_S} s after case b/L1 failed"
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError) and "case b/L1 fails" in str(raised[0])
    assert json.loads((tmp_path / "study" / "study.json").read_text())["status"] == "running"
    started = {m.name: m.read_text() for m in (tmp_path / "study" / "marks").iterdir()}
    files = [tmp_path / "study" / case / "results.jsonl" for case in ("a/L1", "a/L2")]
    recorded = {json.loads(line)["key"] for f in files if f.exists() for line in f.read_text().splitlines()}
    others = {key for key, case in started.items() if case != "b/L1"}
    assert others and others <= recorded  # runs that were training when the study stopped were recorded
    resumed = run_study(study, run_fn=fake_run, check_store=False, console=Console(file=io.StringIO()))
    assert _records(tmp_path / "study") == in_order
    assert resumed.sweeps[2][1].ran > 0  # case b/L1 trained on the rerun


@pytest.mark.parametrize("flags, top, tail, message", [
    (["--parallel-cases", "2"], "", "", "parallel_cases = 2 shares the runs of 2 cases among the workers, and "
                                        "workers = 1 trains one run at a time: raise workers (or use ray)"),
    ([], "parallel_cases = 0", "", "parallel_cases must be an integer >= 1. Got 0 instead"),
    (["--workers", "2", "--parallel-cases", "2"], "", "[stores.train]\nthreads = 2",  # store b's own threads
     "the stores ask for different threads: set threads once"),
])
def test_parallel_cases_that_cannot_work_are_one_line_errors(tmp_path, capsys, flags, top, tail, message):
    toml = _study_toml(tmp_path, extra=tail)
    if top:  # a top-level key: before the tables
        toml.write_text(top + "\n" + toml.read_text())
    assert main(["study", str(toml), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err
    assert not (tmp_path / "study").exists()
