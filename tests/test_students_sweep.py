"""Sweeps: the greedy order and keep rule (with a fake metric), rewards, resume after a kill,
parallel vs sequential runs on a real tiny store, one-line errors for bad sweep spaces, and
the report's files."""
from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from logitstore.build import BuildConfig, build_store
from students.cli import main
from students.report import load_report, write_report
from students.sweep import (RESULTS, Point, RunOutcome, SweepConfig, SweepSpace, load_results, parse_space,
                            run_sweep)
from students.train import TrainConfig

CALLS: list[tuple] = []  # (distance, tau_t, tau_s mode, alpha, teacher, seed) of every fake run, in order


def fake_val(distance: str, temperature: float, student_temperature: str, alpha: float, teacher: str,
             seed: int) -> float:
    """A deterministic metric: best tau_t is 4, higher alpha helps, mse hurts, tll helps,
    the student temperature changes nothing (a tie), each seed adds 0.001."""
    return (0.5 - 0.01 * abs(temperature - 4) + 0.1 * alpha + (-0.05 if distance == "mse" else 0.0)
            + (0.02 if teacher == "tll" else 0.0) + 0.001 * seed)


def fake_run(config: TrainConfig) -> RunOutcome:
    c = config
    CALLS.append((c.distance, c.temperature, c.student_temperature, c.alpha, c.teacher, c.seed))
    val = fake_val(c.distance, c.temperature, c.student_temperature, c.alpha, c.teacher, c.seed)
    return RunOutcome("accuracy", val, val - 0.1, c.teacher, train_seconds=1.5, steps=3, best_step=3)


class Killed(Exception):
    pass


def killed_after(n: int):
    def run(config: TrainConfig) -> RunOutcome:
        if len(CALLS) >= n:
            raise Killed
        return fake_run(config)
    return run


SPACE = SweepSpace(distance=("ce", "mse"), temperature=(1.0, 2.0, 4.0), student_temperature=("teacher", "1"),
                   alpha=(0.5, 0.9), teacher=("ths", "tll"), layers=(2,), seeds=(0, 1))


def fake_run_with_files(config: TrainConfig) -> RunOutcome:
    """fake_run, and the files `train` writes: the student model and the run's metrics."""
    out = Path(config.out)
    out.mkdir(parents=True)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "summary.json", "metrics.jsonl",
                 "run_config.json"):
        (out / name).write_text("{}")
    return fake_run(config)


def _fake_sweep(out: Path, run_fn=fake_run, strategy: str = "greedy", save_models: str = "best"):
    CALLS.clear()
    cfg = SweepConfig(store="fake.zarr", out=str(out), strategy=strategy, space=SPACE, save_models=save_models)
    return run_sweep(cfg, run_fn=run_fn, check_store=False)


def got_value(name: str, text: str):
    return float(text) if name in ("temperature", "alpha") else text


# ---------------------------------------------------------------------------- greedy
def test_greedy_visits_the_documented_configurations_in_order_and_keeps_only_improvements(tmp_path):
    result = _fake_sweep(tmp_path / "sweep")
    seeds = lambda *p: [(*p, 0), (*p, 1)]  # noqa: E731
    expected = (
        # baselines: Hinton (the start), recommended (tll, ce, tau_s = 1), no KD (alpha 0, canonical form)
        seeds("ce", 2.0, "teacher", 0.5, "ths") + seeds("ce", 2.0, "1", 0.5, "tll") + seeds("ce", 1.0, "1", 0.0, "ths")
        # tau_t over its grid (2 is the current one, already run): 4 wins
        + seeds("ce", 1.0, "teacher", 0.5, "ths") + seeds("ce", 4.0, "teacher", 0.5, "ths")
        # alpha: 0.9 wins
        + seeds("ce", 4.0, "teacher", 0.9, "ths")
        # distance: mse is worse, not kept
        + seeds("mse", 4.0, "teacher", 0.9, "ths")
        # teacher: tll is better, kept
        + seeds("ce", 4.0, "teacher", 0.9, "tll")
        # student temperature: 1 ties, not kept
        + seeds("ce", 4.0, "1", 0.9, "tll")
    )
    assert CALLS == expected
    (outcome,) = result.outcomes
    assert outcome.winner == Point("ce", 4.0, "teacher", 0.9, "tll", 2)
    assert [s["parameter"] for s in outcome.stages] == ["temperature", "alpha", "distance", "teacher",
                                                        "student_temperature"]

    mean = lambda *p: (fake_val(*p, 0) + fake_val(*p, 1)) / 2  # noqa: E731
    rewards = {r.parameter: r for r in outcome.rewards}
    want = {
        "temperature": ("2", "4", mean("ce", 4, "teacher", .5, "ths") - mean("ce", 2, "teacher", .5, "ths"), True),
        "alpha": ("0.5", "0.9", mean("ce", 4, "teacher", .9, "ths") - mean("ce", 4, "teacher", .5, "ths"), True),
        "distance": ("ce", "mse", mean("mse", 4, "teacher", .9, "ths") - mean("ce", 4, "teacher", .9, "ths"), False),
        "teacher": ("ths", "tll", mean("ce", 4, "teacher", .9, "tll") - mean("ce", 4, "teacher", .9, "ths"), True),
        "student_temperature": ("teacher", "1", 0.0, False),
    }
    assert rewards.keys() == want.keys()
    for name, (default, alt, r, kept) in want.items():
        got = rewards[name]
        assert (got.default, got.alternative, got.kept) == (default, alt, kept), name
        assert got.r == pytest.approx(r, abs=1e-12), name
        # seeds 0 and 1 differ by 0.001 everywhere: the spread is the std of that pair
        assert got.spread == pytest.approx(0.001 / 2 ** 0.5)
        assert Point.from_dict(got.alternative_point) == replace(Point.from_dict(got.default_point),
                                                                 **{name: got_value(name, alt)})
    # a second greedy pass finds every run done
    CALLS.clear()
    assert run_sweep(SweepConfig("fake.zarr", str(tmp_path / "sweep"), "greedy", SPACE), fake_run,
                     check_store=False).ran == 0 and CALLS == []


def test_grid_runs_the_product_and_the_baselines_once_each(tmp_path):
    result = _fake_sweep(tmp_path / "grid", strategy="grid")
    points = {c[:5] for c in CALLS}
    assert len(CALLS) == len(points) * 2  # each configuration once per seed: no duplicates
    assert len(points) == 2 * 3 * 2 * 2 * 2 + 1  # the product (holds Hinton and recommended) + no KD
    (outcome,) = result.outcomes
    assert outcome.winner == Point("ce", 4.0, "teacher", 0.9, "tll", 2)  # first of the tied tau_s values
    assert {r.parameter for r in outcome.rewards} == {"temperature", "alpha", "distance", "teacher",
                                                      "student_temperature"}


# ---------------------------------------------------------------------------- progress line
def test_a_grid_counts_every_run_of_the_sweep_up_front(tmp_path, capsys):
    _fake_sweep(tmp_path / "grid", strategy="grid")
    total = len(CALLS)
    out = capsys.readouterr().out
    assert re.search(f"grid sweep: 1/{total} runs, ETA \\d+:\\d\\d:\\d\\d\n", out)
    assert f"grid sweep: {total}/{total} runs, done\n" in out
    assert "stage" not in out.split("grid sweep:", 1)[1]  # one line for the whole grid


def test_greedy_counts_runs_per_stage_and_says_so(tmp_path, capsys):
    _fake_sweep(tmp_path / "greedy")
    lines = [x for x in capsys.readouterr().out.splitlines() if " runs, " in x]
    note = "(greedy: each stage's runs are known when it starts)"
    assert all(x.endswith(note) for x in lines)
    assert re.match(r"L2 stage baselines \(hinton, recommended, no KD\): 1/6 runs, ETA \d+:\d\d:\d\d for this stage",
                    lines[0])
    # the alpha stage: the current point (2 seeds, already run) and 0.9 (2 seeds to run)
    assert [x.split(", ")[0] for x in lines if x.startswith("L2 stage alpha")] == [
        "L2 stage alpha: 2/4 runs", "L2 stage alpha: 3/4 runs", "L2 stage alpha: 4/4 runs"]


def test_the_eta_is_the_mean_time_of_the_runs_trained_so_far(monkeypatch):
    from rich.console import Console

    import students.sweep.progress as progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    p = progress.SweepProgress(Console(file=io.StringIO()), total=6)
    with p:
        assert p.line() == "grid sweep: 0/6 runs, ETA after the first run"
        p.advance(1)  # found in results.jsonl: done, but no time measured
        now[0] = 10.0
        p.advance(2, trained=True)  # two runs in 10 s: 5 s a run, 3 runs left
        assert p.line() == "grid sweep: 3/6 runs, ETA 0:00:15"


# ---------------------------------------------------------------------------- disk
@pytest.mark.parametrize("save_models", ["best", "all", "none"])
def test_only_the_runs_a_user_wants_keep_their_model(tmp_path, save_models):
    result = _fake_sweep(tmp_path / "s", run_fn=fake_run_with_files, save_models=save_models)
    folders = sorted((tmp_path / "s" / "runs").iterdir())
    assert len(folders) == result.ran == len(CALLS)
    assert all({"summary.json", "metrics.jsonl", "run_config.json"} <= {p.name for p in f.iterdir()} for f in folders)
    with_model = {f.name for f in folders if (f / "model.safetensors").exists()}
    assert all({p.name for p in f.iterdir()} == {"summary.json", "metrics.jsonl", "run_config.json"}
               for f in folders if f.name not in with_model)
    kept = json.loads((tmp_path / "s" / "sweep.json").read_text())["models_kept"]
    assert with_model == set(kept)
    if save_models == "best":  # winner, Hinton, recommended, no KD: each its best seed (seed 1 in fake_val)
        (o,) = result.outcomes
        assert len(with_model) == 4
        assert {(r["point"]["alpha"], r["point"]["teacher"], r["seed"]) for k, r in result.records.items()
                if k in with_model} == {(p.alpha, p.teacher, 1) for p in (o.winner, o.hinton, o.recommended, o.no_kd)}
    else:
        assert len(with_model) == (len(folders) if save_models == "all" else 0)


# ---------------------------------------------------------------------------- resume
def test_resume_skips_finished_runs_and_reports_like_an_uninterrupted_sweep(tmp_path):
    full = _fake_sweep(tmp_path / "full")
    total = len(CALLS)
    with pytest.raises(Killed):
        _fake_sweep(tmp_path / "killed", run_fn=killed_after(5))
    with open(tmp_path / "killed" / RESULTS, "a") as f:  # a kill in the middle of the 6th write
        f.write('{"version": 1, "key": "abc", "val')
    assert len(load_results(tmp_path / "killed")) == 5  # the truncated line is ignored
    write_report(tmp_path / "killed")  # a report of an incomplete sweep works and says so
    assert "incomplete" in (tmp_path / "killed" / "report.md").read_text()

    resumed = _fake_sweep(tmp_path / "killed")
    assert len(CALLS) == resumed.ran == total - 5
    assert {k: v["val"] for k, v in resumed.records.items()} == {k: v["val"] for k, v in full.records.items()}
    lines = (tmp_path / "killed" / RESULTS).read_text().splitlines()
    assert len(lines) == total and all(json.loads(x) for x in lines)  # the partial line was cut off
    write_report(tmp_path / "full")
    write_report(tmp_path / "killed")
    assert (tmp_path / "killed" / "report.md").read_text() == (tmp_path / "full" / "report.md").read_text()


def test_a_corrupt_line_in_the_middle_is_a_one_line_error(tmp_path, capsys):
    _fake_sweep(tmp_path / "s")
    path = tmp_path / "s" / RESULTS
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    assert main(["report", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 2 of" in err[0] and "delete that line" in err[0]


# ---------------------------------------------------------------------------- report
def test_report_writes_plots_and_markdown(tmp_path, capsys):
    _fake_sweep(tmp_path / "s")
    assert main(["report", str(tmp_path / "s"), "--out", str(tmp_path / "rep")]) == 0
    for name in ("rewards.png", "metrics.png"):
        assert (tmp_path / "rep" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Rewards" in md and "greedy winner" in md and "Hinton" in md and "no KD" in md
    assert "greedy winner vs Hinton on test" in md and "seed spread" not in md
    # fake_val moves every seed by the same 0.001: no variance of the differences, so no t-test
    assert "(+0.0800; t-test undefined: the same difference at each of 2 seeds)" in md
    assert "| L2 | distance | ce -> mse | -0.0500 |" in md
    out = capsys.readouterr().out
    assert "rewards" in out and "greedy winner" in out
    report = load_report(tmp_path / "s")
    assert report.complete and report.metric == "accuracy" and report.ignored == 0
    winner_row = next(r for r in report.rows[2] if "greedy winner" in r.roles)
    assert winner_row is report.rows[2][0] and winner_row.stats.n == 2 and winner_row.stats.train_seconds == 3.0


# ---------------------------------------------------------------------------- bad spaces
@pytest.mark.parametrize("text,message", [
    ("tau = [1, 2]\n", "unknown parameter 'tau'"),
    ("alpha = []\n", "alpha has no values (empty grid)"),
    ("alpha = [0.5, 2]\n", "alpha values must be numbers in [0, 1]. Got 2.0 instead"),
    ("distance = ['ce', 'kl']\n", "distance values must be one of ce, mse, fkl, rkl, gjsd, tvd. Got 'kl' instead"),
    ("temperature = ['hot']\n", "temperature values must be finite numbers > 0. Got 'hot' instead"),
    ("alpha = [0.5\n", "cannot parse sweep space file"),
])
def test_bad_sweep_files_are_one_line_errors_with_exit_2(tmp_path, capsys, text, message):
    space = tmp_path / "space.toml"
    space.write_text(text)
    assert main(["sweep", "--store", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "s"),
                 "--space", str(space)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0], err
    assert not (tmp_path / "s").exists()


def test_flags_override_the_file_and_every_problem_is_listed(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text("alpha = [0.5, 0.9]\nseeds = 3\nstudent_temperature = [1, 'teacher']\n")
    from students.sweep import load_space

    s = load_space(space, {"alpha": "0.25,1", "distance": None})
    assert s.alpha == (0.25, 1.0) and s.seeds == (0, 1, 2) and s.student_temperature == ("1", "teacher")
    assert main(["sweep", "--store", "x", "--out", str(tmp_path / "s"), "--alpha", "2", "--distance", "kl",
                 "--layers", "0"]) == 2
    err = capsys.readouterr().err
    assert "Got 'kl' instead" in err and "Got 2.0 instead" in err and "Got 0 instead" in err
    with pytest.raises(ValueError, match="base_alpha"):
        parse_space({"base_alpha": 1.0})


# ---------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_teachers, tiny_data) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
        mp.setenv("LOGITSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "logitstore-cache"))
        out = tmp_path_factory.mktemp("stores") / "sweep.zarr"
        build_store(BuildConfig(teachers=(tiny_teachers,), data=str(tiny_data), out=out, encoding="fp32",
                                chunk_rows=16))
    return out


def test_parallel_and_sequential_sweeps_give_the_same_records(store, tmp_path, _one_thread):
    space = SweepSpace(distance=("ce",), temperature=(2.0,), student_temperature=("teacher",), alpha=(0.5,),
                       teacher=("ths", "tll"), layers=(1,), seeds=(0,))
    train = TrainConfig(store=str(store), out="unused", max_steps=3, batch_size=16, lr=1e-3, device="cpu", threads=2)
    results = {}
    for workers in (1, 2):
        cfg = SweepConfig(str(store), str(tmp_path / f"w{workers}"), "grid", space, workers, train)
        results[workers] = run_sweep(cfg)
    seq, par = results[1].records, results[2].records
    from logitstore.store import open_store

    picks = {t: open_store(store).select(t).name for t in ("ths", "tll")}
    same = picks["ths"] == picks["tll"]  # then the tll run is the ths (hinton) run, recorded but not retrained
    assert len(seq) == 4  # hinton, tll, recommended, no KD
    assert results[1].ran == results[2].ran == 4 - same
    assert seq.keys() == par.keys()
    for key in seq:
        for name in ("val", "test", "checkpoint", "steps", "best_step", "point", "seed"):
            assert seq[key][name] == par[key][name], (key, name)
        for split in ("val_eval", "test_eval"):
            assert seq[key][split] == pytest.approx(par[key][split], abs=1e-6)
        assert seq[key]["train_seconds"] > 0
    assert {(r["point"]["teacher"], r["checkpoint"]) for r in seq.values()} == set(picks.items())
    assert (tmp_path / "w1" / "runs" / next(iter(seq)) / "model.safetensors").exists()  # Hinton: kept
    for workers in (1, 2):  # --threads 2: each of 2 workers gets 1
        configs = (tmp_path / f"w{workers}" / "runs").glob("*/run_config.json")
        assert {json.loads(c.read_text())["threads"] for c in configs} == {2 // workers}
    # the same command again trains nothing
    again = run_sweep(SweepConfig(str(store), str(tmp_path / "w1"), "grid", space, 1, train))
    assert again.ran == 0


def test_runs_that_name_the_same_checkpoint_twice_are_run_once(tmp_path):
    """When ths and tll resolve to one checkpoint, a tll run is the ths run: it is recorded
    (marked same_run_as) but not trained again, and its results are the ths run's."""
    from students.sweep import Runner, Serial, greedy

    CALLS.clear()
    template = SweepConfig(store="fake.zarr", out=str(tmp_path), strategy="greedy", space=SPACE).template
    runner = Runner(tmp_path, template, SPACE.seeds, Serial(fake_run, 1),
                    teachers={"ths": "checkpoint-9", "tll": "checkpoint-9"})
    outcome = greedy(SPACE, 2, runner.run_points)
    trained = [(c[0], c[1], c[2], c[3], c[5]) for c in CALLS]  # every run minus the teacher's name
    assert len(set(trained)) == len(trained)  # no run trained twice under the two names
    records = load_results(tmp_path)
    twins = [r for r in records.values() if "same_run_as" in r]
    assert twins and all(r["point"]["teacher"] != records[r["same_run_as"]]["point"]["teacher"] for r in twins)
    assert all(r["val"] == records[r["same_run_as"]]["val"] for r in twins)
    assert runner.ran == len(CALLS) == len(records) - len(twins)
    from students.sweep import point_stats

    twin_point = Point.from_dict(twins[0]["point"])
    assert point_stats(twin_point, [r for r in records.values() if r["point"] == twins[0]["point"]]).train_seconds == 0
    tll = [r for r in outcome.rewards if r.parameter == "teacher"]
    assert tll and tll[0].r == 0.0  # the same runs: no reward either way

    CALLS.clear()  # a resumed runner finds every run, twins included, and trains nothing
    again = Runner(tmp_path, template, SPACE.seeds, Serial(fake_run, 1),
                   teachers={"ths": "checkpoint-9", "tll": "checkpoint-9"})
    greedy(SPACE, 2, again.run_points)
    assert CALLS == [] and again.ran == 0
