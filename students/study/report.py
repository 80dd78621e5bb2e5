"""The study report: `students report STUDY_DIR` on a folder written by `students study`.

    OUT/study.json + every case's sweep folder -> CaseNumbers (students/study/collect.py)
    -> aggregates (reward per KD parameter across cases; the recommended configuration against
    both baselines; calibration; greedy winners) -> study_report.md, study_rewards.png and
    study_report.json (every number) in OUT (or --out)

The definitions are in students/study/numbers.py and docs/study.md. A value that a case
cannot give (no ECE recorded, no teacher score on the split) shows as "—" and is null in
the JSON. The report reads files only: it can run while a study is still going.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from students.study.collect import collect
from students.study.numbers import CaseNumbers, share, summarize

DASH = "—"
PAPER_SHARE = 0.40  # Sultan et al.: tll, CE, tau_s = 1 beat both baselines in about 40% of the test cases


def _f(x: float | None, fmt: str = ".4f", sign: bool = False) -> str:
    return DASH if x is None else format(x, ("+" if sign else "") + fmt)


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:+.1f}%"


def _mean(xs: Sequence[float | None]) -> float | None:
    got = [x for x in xs if x is not None]
    return statistics.fmean(got) if got else None


def reward_table(cases: list[CaseNumbers]) -> dict[str, dict[str, Any]]:
    """Reward key -> its RewardSummary (as a dict), the per-case values, and how many cases
    had it within the seed spread or could not measure it (ths = tll)."""
    by_key: dict[str, list[tuple[CaseNumbers, dict[str, Any]]]] = {}
    for c in cases:
        for r in c.rewards:
            by_key.setdefault(r["key"], []).append((c, r))
    out = {}
    for key, items in by_key.items():
        measured = [(c, r) for c, r in items if r["r"] is not None]
        out[key] = {**asdict(summarize([r["r"] for _, r in measured])),
                    "within_seed_spread": sum(bool(r["within_seed_spread"]) for _, r in measured),
                    "untestable": len(items) - len(measured),
                    "values": [{"store": c.store, "size": c.size, "r": r["r"], "spread": r["spread"],
                                "within_seed_spread": r["within_seed_spread"]} for c, r in items]}
    return out


def recommended_summary(cases: list[CaseNumbers]) -> dict[str, Any]:
    """The recommended configuration against both baselines, over the cases."""
    d = [c.derived() for c in cases]
    k, n, ratio = share([x["beats_both"] for x in d])
    clear = sum(bool(x["beats_both"]) and x["within_seed_spread"] is False for x in d)
    return {"beats_both": k, "cases": n, "share": ratio, "beats_both_beyond_seed_spread": clear,
            "paper_share": PAPER_SHARE,
            "mean_gap_closed": {r: _mean([x["gap_closed"][r] for x in d]) for r in ("recommended", "hinton", "winner")},
            "mean_relative_gain_over_hinton": _mean([x["relative_gain_over_hinton"] for x in d]),
            "mean_relative_gain_over_no_kd": _mean([x["relative_gain_over_no_kd"] for x in d])}


def study_numbers(study_dir: str | Path) -> dict[str, Any]:
    """Every number of the report (what study_report.json holds)."""
    manifest, cases, missing = collect(study_dir)
    done = [c for c in cases if c.scores]
    return {"study": str(study_dir), "complete": manifest.get("status") == "complete" and not missing
            and all(c.complete for c in cases), "cases": [c.to_dict() for c in done],
            "not_started": [f"{m['store']}/L{m['size']}" for m in missing],
            "unfinished": [c.folder for c in cases if not c.complete],
            "rewards": reward_table(done), "recommended": recommended_summary(done)}


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _case_rows(numbers: dict[str, Any]) -> list[list[str]]:
    rows = []
    for c in numbers["cases"]:
        s, gap = c["scores"], c["gap_closed"]
        note = {True: "within seed spread", False: "beyond seed spread", None: "1 seed: no spread"}[
            c["within_seed_spread"]]
        rows.append([c["store"], f"L{c['size']}", f"{c['metric']} ({c['split']})",
                     _f((c["teacher"] or {}).get("mean")), *(_f(s[r]["mean"]) for r in ("no_kd", "hinton",
                                                                                         "recommended", "winner")),
                     _f(c["recommended_minus_hinton"], sign=True), _f(c["recommended_minus_no_kd"], sign=True),
                     {True: "yes", False: "no", None: DASH}[c["beats_both"]],
                     f"{_f(gap['recommended'], '.2f')} ({_f(gap['hinton'], '.2f')})",
                     _pct(c["relative_gain_over_hinton"]), _pct(c["relative_gain_over_no_kd"]), note])
    return rows


def _calibration_rows(numbers: dict[str, Any]) -> list[list[str]]:
    rows = []
    for c in numbers["cases"]:
        teach = [_f((c["teachers"].get(t) or {}).get("ece")) for t in ("ths", "tll")]
        rows.append([c["store"], f"L{c['size']}", c["split"], *teach,
                     *(_f(c["scores"][r]["ece"]) for r in ("no_kd", "hinton", "recommended", "winner"))])
    return rows


def _reward_rows(numbers: dict[str, Any]) -> list[list[str]]:
    return [[key, str(r["n"]), _f(r["mean"], sign=True), _f(r["median"], sign=True), _f(r["std"]),
             f"{_f(r['min'], sign=True)} .. {_f(r['max'], sign=True)}", f"{r['wins']}/{r['losses']}/{r['ties']}",
             str(r["within_seed_spread"]), str(r["untestable"])] for key, r in numbers["rewards"].items()]


def _winner_rows(numbers: dict[str, Any]) -> list[list[str]]:
    return [[c["store"], f"L{c['size']}", c["scores"]["winner"]["label"].split(": ", 1)[1],
             _f(c["scores"]["winner"]["mean"]), _f(c["winner_minus_hinton"], sign=True),
             (c["paired"].get("winner_vs_hinton") or {}).get("verdict", "the winner is Hinton")]
            for c in numbers["cases"]]


def markdown(numbers: dict[str, Any]) -> str:
    rec = numbers["recommended"]
    lines = ["# KD study", "", f"Study folder `{numbers['study']}`: {len(numbers['cases'])} (store, size) case(s). "
             "S = a configuration's task metric on the case's split (test where every configuration has one), mean "
             "over seeds; T = the ths teacher checkpoint's on the same split. Definitions: docs/study.md.", ""]
    if not numbers["complete"]:
        lines += ["**The study is incomplete** (" + ", ".join(numbers["not_started"] + numbers["unfinished"])
                  + "): rerun the same `students study` command to resume it.", ""]
    lines += ["## The recommended configuration (tll, CE, tau_s = 1) against both baselines", "",
              f"It beats both Hinton and no KD in {rec['beats_both']} of {rec['cases']} case(s) "
              f"({_pct(rec['share']).lstrip('+')}; the paper: about {PAPER_SHARE:.0%}); "
              f"{rec['beats_both_beyond_seed_spread']} of them by more than the seed spread. Mean gap closed: "
              f"recommended {_f(rec['mean_gap_closed']['recommended'], '.2f')}, Hinton "
              f"{_f(rec['mean_gap_closed']['hinton'], '.2f')}, greedy winner {_f(rec['mean_gap_closed']['winner'], '.2f')}"
              f"; mean relative gain over Hinton {_pct(rec['mean_relative_gain_over_hinton'])}, over no KD "
              f"{_pct(rec['mean_relative_gain_over_no_kd'])}.", ""]
    lines += _md_table(["store", "size", "metric (split)", "T", "no KD", "Hinton", "recommended", "winner",
                        "rec − Hinton", "rec − no KD", "beats both", "gap closed: rec (Hinton)", "rel. vs Hinton",
                        "rel. vs no KD", "seed spread"], _case_rows(numbers))
    lines += ["\"within seed spread\": the larger seed std of the compared configurations exceeds one of the two "
              "differences, so this case does not resolve them.", "", "## Calibration (ECE, same split)", ""]
    lines += _md_table(["store", "size", "split", "teacher ths", "teacher tll", "no KD", "Hinton", "recommended",
                        "winner"], _calibration_rows(numbers))
    lines += [f"{DASH}: not recorded (stores and runs from before calibration was scored).", "",
              "## Reward R per KD parameter across cases", "",
              "R = mean validation metric with the alternative minus with the default at the same greedy stage "
              "(docs/sweeps.md); tuned parameters: the best other value minus the stage's start.", ""]
    lines += _md_table(["parameter", "cases", "mean R", "median R", "std", "range", "wins/losses/ties",
                        "within seed spread", "not testable (ths = tll)"], _reward_rows(numbers))
    lines += ["![reward per KD parameter across cases](study_rewards.png)", "", "## Greedy winners", ""]
    lines += _md_table(["store", "size", "winner", "S", "winner − Hinton", "paired t-test over seeds"],
                       _winner_rows(numbers))
    return "\n".join(lines)


def rewards_figure(numbers: dict[str, Any]) -> Any:
    """A box per KD parameter over the cases' R, each case a point (hollow: within its seed spread)."""
    from students.plots import _figure

    keys = list(numbers["rewards"])[::-1]
    fig, ax = _figure(keys, 9, 1.6)
    for y, key in enumerate(keys):
        vals = [v for v in numbers["rewards"][key]["values"] if v["r"] is not None]
        if len(vals) > 1:
            ax.boxplot([v["r"] for v in vals], positions=[y], vert=False, widths=0.5, showfliers=False)
        for j, v in enumerate(vals):
            jitter = 0.25 * ((j % 5) - 2) / 2  # deterministic spread of the points
            hollow = bool(v["within_seed_spread"])
            ax.scatter(v["r"], y + jitter, s=24, facecolors="none" if hollow else "tab:blue", edgecolors="tab:blue")
    ax.set_yticks(range(len(keys)), keys, fontsize=9)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("R = validation metric: alternative − default (one point per case; hollow: within seed spread)")
    ax.set_title("Reward per KD parameter across (store, size) cases", fontsize=10)
    fig.tight_layout()
    return fig


def write_study_report(study_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write study_report.md, study_rewards.png and study_report.json into ``out`` (default:
    the study folder); returns their paths. Raises StudyFolderError without a study."""
    import matplotlib

    matplotlib.use("Agg")
    from students.plots import save

    numbers = study_numbers(study_dir)
    dest = Path(out) if out is not None else Path(study_dir)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "study_report.json").write_text(json.dumps(numbers, indent=2) + "\n")
    (dest / "study_report.md").write_text(markdown(numbers) + "\n")
    png = save(rewards_figure(numbers), dest / "study_rewards.png")
    return [dest / "study_report.md", png, dest / "study_report.json"]
