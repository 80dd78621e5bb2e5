"""Read a study folder into CaseNumbers (students/study/numbers.py): each case's sweep report
(students.report.load_report), its baselines, winner and rewards, and the teacher's score
and calibration on the same split from the store's checkpoint metadata."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from students.report import SweepReport, load_report, paired_test
from students.study.numbers import CALIBRATION, CaseNumbers, Score, read_study, reward_key, score_of, within_spread


def _teachers(path: str, report: SweepReport, split: str, metric: str) -> dict[str, Score]:
    """Teacher value (ths, tll, ...) -> its checkpoint's Score on ``split``, from the store's
    split_scores; when the store no longer opens, the runs' recorded validation scores."""
    try:
        from logitstore.store import open_store

        store = open_store(path)
        name = split if split == "test" else store.meta.validation_split
        out = {}
        for value in report.teachers or {"ths": None}:
            ckpt = store.select(value)
            got = ckpt.split_scores.get(name) or ({metric: ckpt.val_score} if split == "validation" else {})
            if got.get(metric) is not None:
                out[value] = Score(f"teacher {value} ({ckpt.name})", float(got[metric]), None, 0,
                                   *(got.get(k) for k in CALIBRATION))
        return out
    except Exception:  # the store is gone or unreadable: validation scores the runs recorded, if that is the split
        if split != "validation":
            return {}
        return {v: Score(f"teacher {v} ({c})", s, None, 0) for c, (s, names) in report.teacher_scores.items()
                for v in names.split(", ") if v}


def _split(report: SweepReport, rows: dict[str, Any]) -> str:
    """test when every role's runs have a test score, else validation."""
    return "test" if all(r is not None and r.stats.test_mean is not None for r in rows.values()) else "validation"


def case_numbers(case: dict[str, Any], study_dir: Path) -> CaseNumbers | None:
    """The numbers of one study.json case; None when its sweep has not started (no sweep.json)."""
    folder = study_dir / case["folder"]
    if not (folder / "sweep.json").exists():
        return None
    report = load_report(folder)
    if not report.outcomes:  # the sweep started but has not finished a size yet
        return CaseNumbers(case["store"], case["size"], case["folder"], report.metric, "validation", False, {}, None)
    o = report.outcomes[0]
    rows = {"no_kd": report.row(o.no_kd), "hinton": report.row(o.hinton), "recommended": report.row(o.recommended),
            "winner": report.row(o.winner)}
    split = _split(report, rows)
    key = "test" if split == "test" else "val"
    labels = {"no_kd": "no KD", "hinton": "Hinton", "recommended": "recommended", "winner": "greedy winner"}
    scores = {role: score_of(labels[role] + ": " + getattr(o, role).label(), row.records if row else [], key)
              for role, row in rows.items()}
    teachers = _teachers(case["path"], report, split, report.metric)
    rewards = []
    for r in report.rewards:
        untestable = report.untestable(r)
        rewards.append({"key": reward_key(r.parameter, r.default, r.alternative), "parameter": r.parameter,
                        "default": r.default, "alternative": r.alternative, "r": None if untestable else r.r,
                        "spread": r.spread, "within_seed_spread": None if untestable else within_spread(r.r, r.spread),
                        "untestable": untestable, "kept": r.kept, "test": report.reward_note(r, short=True)})
    numbers = CaseNumbers(case["store"], case["size"], case["folder"], report.metric, split, report.complete, scores,
                          teachers.get("ths"), teachers, rewards)
    for a, b in (("recommended", "hinton"), ("recommended", "no_kd"), ("winner", "hinton")):
        if rows[a] is not None and rows[b] is not None and rows[a] is not rows[b]:
            t = paired_test(rows[a], rows[b], key)
            numbers.paired[f"{a}_vs_{b}"] = {"n": t.n, "mean_diff": t.mean_diff, "p": t.p, "verdict": t.verdict()}
    return numbers


def collect(study_dir: str | Path) -> tuple[dict[str, Any], list[CaseNumbers], list[dict[str, Any]]]:
    """(study.json, the numbers of every case that has started, the cases that have not)."""
    d = Path(study_dir)
    manifest = read_study(d)
    got, missing = [], []
    for case in manifest["cases"]:
        numbers = case_numbers(case, d)
        (got.append(numbers) if numbers is not None else missing.append(case))
    return manifest, got, missing
