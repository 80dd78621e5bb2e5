"""The sweep report and what a user of `students sweep` meets: the paired t-test over seeds
(against tabulated values), a real CLI sweep on a one-checkpoint store (ths = tll: the
teacher reward is not testable and copies are not listed; its progress line, threads and
kept models), the teacher's reference line, and plots whose labels never overlap."""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
from pathlib import Path

import pytest

from logitstore.build import BuildConfig, build_store
from logitstore.store import open_store
from students.cli import main
from students.stats import paired_t_test, t_pvalue
from students.sweep import RunOutcome, SweepConfig, SweepSpace, run_sweep
from students.train import TrainConfig


# ---------------------------------------------------------------------------- the test
@pytest.mark.parametrize("t,df", [(12.7062, 1), (4.3027, 2), (2.7764, 4), (2.2281, 10)])
def test_the_t_pvalue_matches_the_tables(t, df):
    assert t_pvalue(t, df) == pytest.approx(0.05, abs=2e-5)  # two-sided 5% critical values
    assert t_pvalue(-t, df) == t_pvalue(t, df) and t_pvalue(0.0, df) == 1.0


def test_the_paired_test_and_its_words():
    test = paired_t_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])  # d = 1, 2, 3: t = 2 / (1 / sqrt(3)), df 2
    assert test.t == pytest.approx(3.4641016) and test.p == pytest.approx(0.0741799, abs=1e-6)
    assert test.verdict() == "not significant (paired t-test over 3 seeds, p = 0.074)"
    assert paired_t_test([0.8, 0.9, 0.7], [0.5, 0.58, 0.41]).verdict().startswith("significant (paired t-test")
    assert paired_t_test([0.7], [0.6]).verdict() == "one seed: no test possible"
    assert paired_t_test([0.7, 0.8], [0.7, 0.8]).verdict() == "no difference at any seed"
    assert paired_t_test([0.7, 0.8], [0.6, 0.7]).p is None  # the same difference twice: no variance to test
    with pytest.raises(ValueError, match="Got 2 and 1 values instead"):
        paired_t_test([0.1, 0.2], [0.1])


# ---------------------------------------------------------------------------- a real sweep, ths = tll
SWEEP = ["--strategy", "greedy", "--layers", "1", "--distance", "ce", "--temperature", "2", "--alpha", "0.5",
         "--student-temperature", "teacher", "--teacher", "ths,tll", "--seeds", "2", "--max-steps", "4",
         "--batch-size", "16", "--lr", "1e-3", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def one_checkpoint_store(_env, tmp_path_factory, tiny_teachers, tiny_data) -> Path:
    """A store of one teacher checkpoint: ths and tll are both checkpoint-10."""
    out = tmp_path_factory.mktemp("stores") / "one.zarr"
    build_store(BuildConfig(teachers=(tiny_teachers / "checkpoint-10",), data=str(tiny_data), out=out,
                            encoding="fp32", chunk_rows=16))
    return out


@pytest.fixture(scope="module")
def cli_sweep(one_checkpoint_store, tmp_path_factory, _one_thread) -> tuple[Path, str]:
    """`students sweep` and `students report` as a user runs them; the folder and what they printed."""
    out = tmp_path_factory.mktemp("cli-sweep") / "sweep"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["sweep", "--store", str(one_checkpoint_store), "--out", str(out), *SWEEP]) == 0
        assert main(["report", str(out)]) == 0
    return out, printed.getvalue()


def test_the_sweep_shows_one_progress_line_per_stage_with_an_eta(cli_sweep):
    _, printed = cli_sweep
    note = "(greedy: each stage's runs are known when it starts)"
    assert re.search(r"L1 stage baselines \(hinton, recommended, no KD\): 1/6 runs, ETA \d+:\d\d:\d\d for this "
                     + re.escape(f"stage {note}"), printed)
    assert f"L1 stage baselines (hinton, recommended, no KD): 6/6 runs, done {note}" in printed
    assert f"L1 stage teacher: 4/4 runs, done {note}" in printed  # the tll runs: copies, done at once


def test_sweep_runs_record_their_threads_and_keep_only_the_wanted_models(cli_sweep):
    out, printed = cli_sweep
    folders = sorted((out / "runs").iterdir())
    assert len(folders) == 6  # hinton, recommended, no KD x 2 seeds; the tll copies train nothing
    assert {json.loads((f / "run_config.json").read_text())["threads"] for f in folders} == {1}
    assert all((f / "summary.json").exists() and (f / "metrics.jsonl").exists() for f in folders)
    with_model = {f.name for f in folders if (f / "model.safetensors").exists()}
    kept = json.loads((out / "sweep.json").read_text())["models_kept"]
    assert with_model == set(kept) and len(kept) == 3  # the best seed of winner (= Hinton), recommended, no KD
    assert "kept the student models of 3 run(s)" in printed and "deleted those of 3 other run(s)" in printed


def test_the_report_says_ths_equals_tll_is_not_testable_and_lists_no_copy(cli_sweep):
    out, printed = cli_sweep
    md = (out / "report.md").read_text()
    assert "| L1 | teacher | ths -> tll | not testable here (ths = tll) | - |" in md
    table = md.split("## Configurations, 1-layer student")[1].split("##")[0]
    rows = [x for x in table.splitlines() if x.startswith("| ce") or x.startswith("| no KD")]
    assert len(rows) == 3  # Hinton (= its tll copy), recommended, no KD
    assert "alpha=0.5 ths L1 (= tll: same checkpoint) | greedy winner, Hinton |" in table
    assert "not testable" in printed  # the console table too (wrapped at 80 columns here)


def test_the_report_states_its_test_and_does_not_claim_the_spread(cli_sweep, one_checkpoint_store):
    out, _ = cli_sweep
    md = (out / "report.md").read_text()
    assert "seed spread" not in md and "exceeds" not in md
    assert "- L1: the greedy winner is Hinton" in md  # the teacher stage kept ths: no change, nothing to test
    assert "paired t-test over seeds" in md and "not significant" in md  # explained, and used
    line = next(x for x in md.splitlines() if x.startswith("- L1: Hinton vs no KD on test"))
    assert re.search(r"\((significant|not significant) \(paired t-test over 2 seeds, p = [\d.e-]+\)|t-test undefined"
                     r"|no difference at any seed", line), line
    score = open_store(one_checkpoint_store).select("ths").val_score
    assert f"Teacher checkpoint-10 (ths, tll): validation accuracy {score:.4f}" in md


def test_the_report_shows_student_ece_and_the_teachers_ths_vs_tll(cli_sweep, one_checkpoint_store):
    """Calibration (issue 14): each configuration's ECE is the mean ± std over seeds of its
    runs' test ECE (summary.json), and the teacher table holds the store's ths / tll."""
    import statistics

    from students.report import load_report

    out, printed = cli_sweep
    md = (out / "report.md").read_text()
    report = load_report(out)
    checked = 0
    for row in (r for rows in report.rows.values() for r in rows):
        eces = [json.loads((out / "runs" / rec["key"] / "summary.json").read_text())["test"]["ece"]
                for rec in row.records if "same_run_as" not in rec]
        if len(eces) == 2:
            assert row.calibration("ece") == ("test", pytest.approx(eces))
            assert f"{statistics.fmean(eces):.4f} ± {statistics.stdev(eces):.4f} (test)" in md
            checked += 1
    assert checked == 3  # Hinton, recommended, no KD
    c = open_store(one_checkpoint_store).select("tll")
    assert f"| tll | {c.name} | {c.val_loss:.4f} | {c.val_score:.4f} | {c.val_scores['ece']:.4f} |" in md
    assert "ths vs tll" in printed


def test_metrics_png_has_the_teacher_line(cli_sweep, one_checkpoint_store):
    from students.plots import metrics_figure
    from students.report import load_report

    report = load_report(cli_sweep[0])
    score = open_store(one_checkpoint_store).select("tll").val_score
    assert report.teacher_scores == {"checkpoint-10": (pytest.approx(score), "ths, tll")}
    fig = metrics_figure(report)
    lines = [x for x in fig.axes[0].get_lines() if x.get_label().startswith("teacher checkpoint-10 (ths, tll)")]
    assert len(lines) == 1 and lines[0].get_xdata()[0] == pytest.approx(score)


# ---------------------------------------------------------------------------- plots
LONG = "checkpoint-1160-of-a-teacher-fine-tuned-with-the-transformers-trainer-on-a-dataset-never-seen-before"


def fake_run(config: TrainConfig) -> RunOutcome:
    val = 0.5 + 0.1 * config.alpha - 0.01 * config.temperature + (0.03 if config.teacher == LONG else 0) \
        + 0.007 * ((config.seed * 7) % 3)
    return RunOutcome("accuracy", val, val - 0.05, config.teacher, 1.0, 3, 3, teacher_score=0.8)


def _assert_no_text_overlaps(fig) -> None:
    """Tick labels, title and axis label: no two boxes intersect, none leaves the figure or
    enters the plotting area, and the plotting area keeps at least 3 inches of width."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    ticks = [t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_text()]
    boxes = ticks + [t.get_window_extent(renderer) for t in (ax.title, ax.xaxis.label)]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    area = ax.get_window_extent(renderer)
    assert all(b.x0 >= 0 and b.x1 <= fig.bbox.x1 and b.y0 >= 0 and b.y1 <= fig.bbox.y1 for b in boxes)
    assert all(b.x1 <= area.x0 for b in ticks)
    assert area.width >= 3 * fig.dpi


def test_plot_labels_never_overlap_however_long_the_names(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from students.plots import metrics_figure, rewards_figure
    from students.report import load_report

    space = SweepSpace(distance=("ce", "mse"), temperature=(1.0, 2.0, 4.0), student_temperature=("teacher", "1"),
                       alpha=(0.25, 0.5, 0.75), teacher=("ths", "tll", LONG), layers=(1, 2), seeds=(0, 1, 2))
    run_sweep(SweepConfig("fake.zarr", str(tmp_path / "s"), "greedy", space), fake_run, check_store=False)
    report = load_report(tmp_path / "s")
    assert any(LONG in r.label() for rows in report.rows.values() for r in rows)
    for make in (rewards_figure, metrics_figure):
        _assert_no_text_overlaps(make(report))
