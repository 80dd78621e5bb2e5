"""`students study`: the numbers of the study report against hand-computed values, the study
file's settings and one-line errors, and (tests/test_students_study_real.py) a real tiny
two-store study end to end with a kill -9 resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from students.cli import main
from students.study import (gap_closed, load_study, relative_gain, run_study, share, study_numbers,
                            summarize, within_spread, write_study_report)
from students.study.numbers import Score
from students.sweep import RunOutcome, run_key
from students.train import TrainConfig

BASE = {"a": 0.6, "b": 0.7}  # each fake store's no-KD metric
TLL = {"a": 0.02, "b": -0.04}  # tll helps on store a, hurts on b


def fake_val(store: str, c: TrainConfig) -> float:
    """A deterministic metric (docstring of the test below has the numbers it gives)."""
    noisy = store == "b" and c.teacher == "tll"  # store b's tll runs vary a lot by seed
    return (BASE[store] + (TLL[store] if c.teacher == "tll" else 0.0) + 0.01 * (c.student_temperature == "1")
            - 0.05 * (c.distance == "mse") - 0.01 * abs(c.temperature - 2) + 0.04 * c.alpha
            + (0.06 if noisy else 0.001) * c.seed)


def fake_run(config: TrainConfig) -> RunOutcome:
    store = Path(config.store).stem
    val = fake_val(store, config)
    return RunOutcome("accuracy", val, val, config.teacher, 1.0, 3, 3)


def _study_toml(tmp_path: Path, extra: str = "") -> Path:
    text = f"""
out = "{tmp_path / 'study'}"
sizes = [1]
seeds = 2

[space]
distance = ["ce", "mse"]
temperature = [2, 4]
student_temperature = ["teacher", 1]
alpha = [0.5, 0.9]
teacher = ["ths", "tll"]

[train]
epochs = 3
batch_size = 8

[epochs]
2 = 5

[[stores]]
name = "a"
path = "{tmp_path / 'a.zarr'}"
sizes = [1, 2]

[[stores]]
path = "{tmp_path / 'b.zarr'}"
{extra}"""
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- definitions
def test_reward_summary_gap_closed_gain_share_and_spread_by_hand():
    s = summarize([0.02, -0.01, 0.03, 0.0])
    assert (s.n, s.wins, s.losses, s.ties) == (4, 2, 1, 1)
    assert s.mean == pytest.approx(0.01) and s.median == pytest.approx(0.01)
    assert s.std == pytest.approx((0.001 / 3) ** 0.5)  # deviations .01 -.02 .02 -.01: squares sum to 1e-3
    assert (s.min, s.max) == (-0.01, 0.03)
    assert summarize([]).mean is None and summarize([0.5]).std is None
    assert gap_closed(0.80, 0.70, 0.90) == pytest.approx(0.5)
    assert gap_closed(0.65, 0.70, 0.90) == pytest.approx(-0.25)  # KD below no KD: a negative share of the gap
    assert gap_closed(0.80, 0.70, 0.70) is None and gap_closed(0.8, None, 0.9) is None  # no gap / no value
    assert relative_gain(0.84, 0.80) == pytest.approx(0.05) and relative_gain(1.0, 0.0) is None
    assert share([True, False, None, True]) == (2, 3, pytest.approx(2 / 3)) and share([None]) == (0, 0, None)
    assert within_spread(0.01, 0.02) is True and within_spread(-0.03, 0.02) is False
    assert within_spread(0.01, None) is None


def test_settings_merge_per_store_and_size_and_flags_win(tmp_path):
    path = _study_toml(tmp_path, "[stores.train]\nlr = 0.001\n[stores.epochs]\n1 = 9\n")
    study = load_study(path, check_stores=False)
    got = {(c.store, c.size): (c.sweep.template.epochs, c.sweep.template.lr, c.sweep.template.layers,
                               c.sweep.space.layers, c.sweep.space.seeds) for c in study.cases}
    assert got == {("a", 1): (3, 5e-4, 1, (1,), (0, 1)), ("a", 2): (5, 5e-4, 2, (2,), (0, 1)),
                   ("b", 1): (9, 1e-3, 1, (1,), (0, 1))}
    assert [c.sweep.out for c in study.cases] == [str(tmp_path / "study" / f) for f in ("a/L1", "a/L2", "b/L1")]
    flagged = load_study(path, {"train": {"epochs": 1}, "seeds": "3", "sizes": [4]}, check_stores=False)
    assert {(c.store, c.size, c.sweep.template.epochs, c.sweep.space.seeds) for c in flagged.cases} == {
        ("a", 4, 1, (0, 1, 2)), ("b", 4, 1, (0, 1, 2))}
    flags_only = load_study(None, {"stores": ["x=" + str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")]},
                            check_stores=False)
    assert [(c.store, c.path, c.size, c.sweep.space.seeds) for c in flags_only.cases] == [
        ("x", str(tmp_path / "a.zarr"), 2, (0,)), ("b", str(tmp_path / "b.zarr"), 2, (0,))]


def test_an_epochs_flag_beats_every_epochs_table(tmp_path):
    """Flags come last in the precedence (docs/study.md): --epochs also beats a store's own
    [stores.epochs], which once overrode it."""
    study = load_study(_study_toml(tmp_path, "[stores.epochs]\n1 = 9\n"), {"train": {"epochs": 2}},
                       check_stores=False)
    assert {(c.store, c.size): c.sweep.template.epochs for c in study.cases} == {
        ("a", 1): 2, ("a", 2): 2, ("b", 1): 2}


def test_whole_numbers_for_float_options_share_run_keys_with_the_flags(tmp_path):
    """`weight_decay = 0` in a file and `--weight-decay 0` (0.0) are one setting: the same run keys, so
    a study resumed with the flag does not train its runs again."""
    path = _study_toml(tmp_path, "[stores.train]\nweight_decay = 0\nwarmup_ratio = 0\n")
    from_file = [c.sweep.template for c in load_study(path, check_stores=False).cases]
    from_flags = [c.sweep.template for c in load_study(path, {"train": {"weight_decay": 0.0, "warmup_ratio": 0.0}},
                                                         check_stores=False).cases]
    assert run_key(from_file[-1]) == run_key(from_flags[-1])  # store b, which sets them
    assert type(from_file[-1].weight_decay) is float and from_file[-1].weight_decay == 0


@pytest.mark.parametrize("extra,message", [
    ("[stores.train]\nepoch = 3\n", "unknown key 'epoch' in [stores.b.train]"),
    ("colour = 1\n", "unknown key 'colour' in [[stores]] entry 2"),
    ("[stores.epochs]\none = 3\n", "maps a student size to its epochs (e.g. `1 = 12`). Got one = 3 instead"),
    ("[stores.space]\nalpha = [2]\n", "alpha values must be numbers in [0, 1]. Got 2.0 instead"),
    ("[stores.train]\nlr = -1\n", "learning rate must be > 0. Got -1.0 instead"),
    ("name = \"a\"\n", "two stores are named 'a'; give each its own `name`"),
    ("name = 3\n", "store name 3 must be letters, digits"),  # was a TypeError traceback (sorting int and str)
    ("[stores.train]\ndevice = 3\n", "[stores.b.train] device must be a string. Got 3 instead"),
    ("[stores.train]\nepochs = \"10\"\n", "[stores.b.train] epochs must be an integer. Got '10' instead"),
    ("[stores.train]\nbatch_size = 2.5\n", "[stores.b.train] batch_size must be an integer. Got 2.5 instead"),
    ("[stores.train]\npatience = true\n", "[stores.b.train] patience must be an integer. Got True instead"),
    ("[stores.train]\nlr = \"fast\"\n", "[stores.b.train] lr must be a number. Got 'fast' instead"),
])
def test_bad_study_files_are_one_line_errors(tmp_path, capsys, extra, message):
    (tmp_path / "a.zarr").mkdir()
    (tmp_path / "b.zarr").mkdir()
    assert main(["study", str(_study_toml(tmp_path, extra))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: invalid study ("), err
    assert message in err[0]
    assert not (tmp_path / "study").exists()


def test_a_missing_store_or_file_names_the_fix(tmp_path, capsys):
    (tmp_path / "a.zarr").mkdir()
    assert main(["study", str(_study_toml(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"store 'b': no store at {tmp_path / 'b.zarr'}; build it with `logitstore build`" in err[0]
    assert main(["study", str(tmp_path / "none.toml")]) == 2
    assert "no study file at" in capsys.readouterr().err
    assert main(["study", str(tmp_path)]) == 2  # a folder: once "--space DIR is a folder; pass --space FILE.toml"
    assert capsys.readouterr().err.strip() == f"error: study file {tmp_path} is a folder; pass a study TOML file " \
                                               "(docs/study.md)"
    assert main(["study", "--out", str(tmp_path / "s")]) == 2
    assert "no stores: add [[stores]] entries to the study file or pass --store PATH" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the report's numbers
@pytest.fixture
def fake_study(tmp_path, monkeypatch):
    """The study of _study_toml with fake runs; each store's ths teacher scores BASE + 0.1."""
    import students.study.collect as collect

    monkeypatch.setattr(collect, "_teachers", lambda path, report, split, metric: {
        "ths": Score("teacher ths", BASE[Path(path).stem] + 0.1, None, 0, 0.05 if Path(path).stem == "a" else None)})
    study = load_study(_study_toml(tmp_path), check_stores=False)
    result = run_study(study, run_fn=fake_run, check_store=False)
    return tmp_path / "study", result


def test_the_study_numbers_match_the_hand_computed_ones(fake_study):
    """Seeds 0 and 1. Store a: no KD 0.6005, Hinton (tau 2, alpha .5) 0.6205, recommended (+tll .02,
    +tau_s=1 .01) 0.6505, T 0.7. Store b: no KD 0.7005, Hinton 0.7205, recommended 0.7 + .02 + .01
    - .04 + mean seed term .03 = 0.72 with seed std .06/sqrt(2) = 0.0424 > |0.72 - 0.7205|."""
    folder, result = fake_study
    assert len(result.sweeps) == 3 and result.ran > 0
    n = study_numbers(folder)
    assert n["complete"] and [(c["store"], c["size"]) for c in n["cases"]] == [("a", 1), ("a", 2), ("b", 1)]
    a1, _, b1 = n["cases"]
    for case, want in ((a1, (0.6005, 0.6205, 0.6505)), (b1, (0.7005, 0.7205, 0.72))):
        assert [case["scores"][r]["mean"] for r in ("no_kd", "hinton", "recommended")] == pytest.approx(want)
    assert (a1["beats_both"], a1["within_seed_spread"]) == (True, False)
    assert (b1["beats_both"], b1["within_seed_spread"]) == (False, True)
    assert a1["gap_closed"]["recommended"] == pytest.approx(0.05 / 0.0995)
    assert a1["gap_closed"]["hinton"] == pytest.approx(0.02 / 0.0995)
    assert b1["gap_closed"]["recommended"] == pytest.approx(0.0195 / 0.0995)
    assert a1["relative_gain_over_hinton"] == pytest.approx(0.6505 / 0.6205 - 1)
    assert b1["relative_gain_over_no_kd"] == pytest.approx(0.72 / 0.7005 - 1)
    rec = n["recommended"]
    assert (rec["beats_both"], rec["cases"], rec["share"], rec["beats_both_beyond_seed_spread"]) == (
        2, 3, pytest.approx(2 / 3), 2)
    assert rec["mean_gap_closed"]["recommended"] == pytest.approx((0.05 + 0.05 + 0.0195) / 3 / 0.0995)
    # greedy per case: tau_t 4 loses .02, alpha .9 wins .016, mse loses .05, tll +.02 on a and
    # -.04 + (.03 - .0005) on b, tau_s = 1 wins .01
    r = n["rewards"]
    assert [v["r"] for v in r["teacher: ths -> tll"]["values"]] == pytest.approx([0.02, 0.02, -0.0105])
    assert (r["teacher: ths -> tll"]["wins"], r["teacher: ths -> tll"]["losses"]) == (2, 1)
    assert r["teacher: ths -> tll"]["median"] == pytest.approx(0.02)
    assert r["teacher: ths -> tll"]["within_seed_spread"] == 1  # store b: seed std .0424 > .0105
    assert r["temperature (tuned)"]["mean"] == pytest.approx(-0.02) and r["temperature (tuned)"]["wins"] == 0
    assert r["alpha (tuned)"]["mean"] == pytest.approx(0.016) and r["alpha (tuned)"]["wins"] == 3
    assert r["distance: ce -> mse"]["losses"] == 3 and r["student_temperature: teacher -> 1"]["wins"] == 3
    winners = [c["scores"]["winner"]["label"] for c in n["cases"]]
    assert winners == ["greedy winner: ce tau_t=2 tau_s=1 alpha=0.9 tll L1", "greedy winner: ce tau_t=2 tau_s=1 "
                       "alpha=0.9 tll L2", "greedy winner: ce tau_t=2 tau_s=1 alpha=0.9 ths L1"]


def test_the_report_files_show_every_number_and_dashes_for_missing_calibration(fake_study, capsys):
    folder, _ = fake_study
    assert main(["report", str(folder)]) == 0
    assert "study_report.md" in capsys.readouterr().out
    md = (folder / "study_report.md").read_text()
    assert "It beats both Hinton and no KD in 2 of 3 case(s) (66.7%; the paper: about 40%)" in md
    assert "| a | L1 | accuracy (test) | 0.7000 | 0.6005 | 0.6205 | 0.6505 |" in md
    assert "| b | L1 |" in md and "within seed spread |" in md
    assert "| a | L1 | test | 0.0500 | — | — | — | — | — |" in md  # teacher ths ECE only; no student recorded one
    assert "| teacher: ths -> tll | 3 | +0.0098 | +0.0200 |" in md
    assert (folder / "study_rewards.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((folder / "study_report.json").read_text())
    assert data["cases"][0]["scores"]["recommended"]["ece"] is None and data["recommended"]["cases"] == 3


def test_an_unfinished_study_reports_what_it_has_and_says_so(tmp_path, monkeypatch):
    study = load_study(_study_toml(tmp_path), check_stores=False)
    calls = []

    def dies_in_case_two(config: TrainConfig) -> RunOutcome:
        if Path(config.out).parts[-3] == "L2":  # .../a/L2/runs/<key>
            raise KeyboardInterrupt
        calls.append(config)
        return fake_run(config)

    with pytest.raises(KeyboardInterrupt):
        run_study(study, run_fn=dies_in_case_two, check_store=False)
    paths = write_study_report(tmp_path / "study")
    md = paths[0].read_text()
    assert "**The study is incomplete** (b/L1, a/L2)" in md
    first = len(calls)
    resumed = run_study(study, run_fn=fake_run, check_store=False)
    assert [r.ran for _, r in resumed.sweeps] == [0, first, first]  # case a/L1 was done; the others run in full


def test_the_shipped_study_file_plans_five_stores_three_sizes():
    """examples/study.toml (what scripts/study.sh runs) is valid and plans what docs/results.md reports."""
    root = Path(__file__).resolve().parents[1]
    study = load_study(root / "examples" / "study.toml", check_stores=False)
    assert [(c.store, c.size) for c in study.cases] == [
        (s, k) for s in ("rotten_tomatoes", "trec", "sms_spam", "r8", "wnut16") for k in (1, 2, 3)]
    epochs = {(c.store, c.size): c.sweep.train.epochs for c in study.cases}
    assert epochs[("trec", 1)] == 15 and epochs[("trec", 3)] == 10 and epochs[("wnut16", 1)] == 25
    assert {c.sweep.train.patience for c in study.cases} == {2}
    assert {c.sweep.space.seeds for c in study.cases} == {(0, 1, 2)}
    assert {c.sweep.save_models for c in study.cases} == {"none"}
