"""Tables, plots and a markdown summary of a sweep folder: the recipe behind `students report`.

    SWEEP_DIR/sweep.json + results.jsonl -> rows (configuration, metric mean ± std over
    seeds, cost) and rewards, each comparison with a paired t-test over seeds
    (students/stats.py) -> rich table on the console, rewards.png, metrics.png
    (students/plots.py) and report.md (in SWEEP_DIR or --out)

Only the runs of the sweep that sweep.json describes count (records are matched by their
run key, so results of an earlier sweep with other training options in the same folder
are left out). A configuration that is another one under a second name of the same teacher
checkpoint (ths = tll: its runs are recorded ``same_run_as``) is not listed as a run of its
own, and a reward between two names of one checkpoint says "not testable here". The report
reads files (and, for runs recorded before the teacher's score was, the store's metadata):
it can run while a sweep is still going, and then says the sweep is incomplete.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from students.config import TrainConfig
from students.stats import LEVEL, PairedTest, paired_t_test
from students.sweep import (MANIFEST, RESULTS, LayersOutcome, Point, PointStats, ResultsFileError, Reward,
                            load_results, point_stats, read_manifest, run_config, run_key)


@dataclass
class Row:
    """One configuration of the report: its stats, its runs (one record per seed), the roles
    it plays, and ``copies``: configurations that are this one under another teacher name
    (ths and tll resolving to the same checkpoint; recorded ``same_run_as``), not listed apart."""

    stats: PointStats
    records: list[dict[str, Any]]
    roles: list[str] = field(default_factory=list)
    copies: list[Point] = field(default_factory=list)

    @property
    def point(self) -> Point:
        return self.stats.point

    def label(self) -> str:
        same = sorted({c.teacher for c in self.copies} - {self.point.teacher})
        return self.point.label() + (f" (= {', '.join(same)}: same checkpoint)" if same else "")

    def values(self, split: str) -> dict[int, float]:
        """Seed -> metric on ``split`` ("val" or "test")."""
        return {r["seed"]: r[split] for r in self.records if r.get(split) is not None}


@dataclass
class SweepReport:
    """Everything the report shows; ``rows`` by student size, best validation first.
    ``teachers``: teacher value -> checkpoint (from the store when the sweep ran; may be
    empty); ``teacher_scores``: checkpoint -> (validation score, the values naming it)."""

    sweep_dir: Path
    strategy: str
    store: str
    metric: str
    complete: bool
    rows: dict[int, list[Row]]
    outcomes: list[LayersOutcome]
    ignored: int  # records in results.jsonl that belong to no run of this sweep
    teachers: dict[str, str] = field(default_factory=dict)
    teacher_scores: dict[str, tuple[float, str]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def rewards(self) -> list[Reward]:
        return [r for o in self.outcomes for r in o.rewards]

    def row(self, p: Point | dict[str, Any] | None) -> Row | None:
        """The row of configuration ``p``, also when ``p`` is a copy listed under another row."""
        p = Point.from_dict(p) if isinstance(p, dict) else p
        return None if p is None else next((r for r in self.rows.get(p.layers, []) if p == r.point or p in r.copies),
                                           None)

    def untestable(self, r: Reward) -> bool:
        """The two values of ``r`` name the same teacher checkpoint (or the same runs)."""
        ckpt_a, ckpt_b = self.teachers.get(r.default), self.teachers.get(r.alternative)
        if r.parameter == "teacher" and ckpt_a is not None and ckpt_a == ckpt_b:
            return True
        a, b = self.row(r.default_point), self.row(r.alternative_point)
        return a is not None and a is b

    def reward_test(self, r: Reward) -> PairedTest | None:
        """The paired t-test over seeds of the reward's validation metrics (None: its
        configurations were not recorded, a sweep.json written before the report paired them)."""
        a, b = self.row(r.alternative_point), self.row(r.default_point)
        return None if a is None or b is None else paired_test(a, b, "val")

    def reward_note(self, r: Reward, short: bool = False) -> str:
        """What can be said of ``r``: not testable (ths = tll), else its test's verdict."""
        if self.untestable(r):
            return f"not testable here ({r.default} = {r.alternative})"
        test = self.reward_test(r)
        if test is None:
            return "no test: rerun the sweep to record its pairs"
        return test.short() if short else test.verdict()


def paired_test(a: Row, b: Row, split: str) -> PairedTest:
    """The paired t-test over the seeds both rows ran, of a - b on ``split``."""
    va, vb = a.values(split), b.values(split)
    seeds = sorted(va.keys() & vb.keys())
    return paired_t_test([va[s] for s in seeds], [vb[s] for s in seeds])


def _groups(d: Path, manifest: dict[str, Any], records: dict[str, dict[str, Any]]) -> dict[Point, list[dict]]:
    """The records of the sweep ``manifest`` describes, by configuration."""
    template = TrainConfig(store=manifest["store"], out=str(d), **manifest["train_options"])
    seeds = set(manifest["space"]["seeds"])
    groups: dict[Point, list[dict[str, Any]]] = {}
    for key, rec in records.items():
        p = Point.from_dict(rec["point"])
        if rec["seed"] in seeds and run_key(run_config(template, p, rec["seed"], d)) == key:
            groups.setdefault(p, []).append(rec)
    return groups


def _rows(groups: dict[Point, list[dict]], records: dict[str, dict], roles: dict[Point, list[str]]
          ) -> dict[int, list[Row]]:
    """One row per configuration that trained; a configuration whose every run is a copy
    (same_run_as) joins the row of the runs it copies, with its roles."""
    original = {p: Point.from_dict(records[rs[0]["same_run_as"]]["point"]) for p, rs in groups.items()
                if all("same_run_as" in r and r["same_run_as"] in records for r in rs)}
    original = {p: o for p, o in original.items() if o in groups and o not in original}
    by_point = {p: Row(point_stats(p, rs), sorted(rs, key=lambda r: r["seed"]), list(roles.get(p, [])))
                for p, rs in groups.items() if p not in original}
    for p, o in original.items():
        by_point[o].copies.append(p)
        by_point[o].roles += [x for x in roles.get(p, []) if x not in by_point[o].roles]
    rows: dict[int, list[Row]] = {}
    for row in by_point.values():
        rows.setdefault(row.point.layers, []).append(row)
    for k in rows:
        rows[k].sort(key=lambda r: (-r.stats.val_mean, not r.roles, r.label()))  # ties: marked first
    return dict(sorted(rows.items()))


def _teacher_scores(store: str, groups: dict[Point, list[dict]], teachers: dict[str, str]
                    ) -> dict[str, tuple[float, str]]:
    """Checkpoint -> (its validation score, the teacher values naming it), from the run
    records, else (records written before they held it) from the store when it still opens."""
    scores = {r["checkpoint"]: r.get("teacher_score") for rs in groups.values() for r in rs if r.get("checkpoint")}
    if any(v is None for v in scores.values()):
        try:
            from logitstore.store import open_store

            opened = open_store(store)
            scores.update({c: opened.select(c).val_score for c, v in scores.items() if v is None})
        except Exception:  # no store any more: no reference line for those checkpoints
            pass
    names = {c: ", ".join(t for t, x in teachers.items() if x == c) for c in scores}
    return {c: (float(v), names[c]) for c, v in sorted(scores.items()) if v is not None}


def load_report(sweep_dir: str | os.PathLike[str]) -> SweepReport:
    """Read SWEEP_DIR into a SweepReport; raises ResultsFileError when it holds no sweep."""
    d = Path(sweep_dir)
    manifest = read_manifest(d)
    if manifest is None:
        raise ResultsFileError(f"{d} holds no {MANIFEST}; run `students sweep --out {d}` first")
    records = {k: r for k, r in load_results(d).items() if "failed" not in r}  # failed runs have no metrics
    try:
        groups = _groups(d, manifest, records)
        outcomes = [LayersOutcome.from_dict(o) for o in manifest["outcomes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ResultsFileError(f"{d / MANIFEST} is not a sweep manifest ({exc}); rerun the sweep to rewrite it") from exc
    metric = next((r["metric"] for rs in groups.values() for r in rs), "metric")
    roles: dict[Point, list[str]] = {}
    for o in outcomes:
        winner = f"{manifest['strategy']} winner"
        for name, p in ((winner, o.winner), ("Hinton", o.hinton), ("recommended", o.recommended),
                        ("no KD", o.no_kd)):
            roles.setdefault(p, []).append(name)
    teachers = dict((manifest.get("store_identity") or {}).get("teachers") or {})
    used = sum(len(rs) for rs in groups.values())
    return SweepReport(d, manifest["strategy"], manifest["store"], metric, manifest["status"] == "complete",
                       _rows(groups, records, roles), outcomes, len(records) - used, teachers,
                       _teacher_scores(manifest["store"], groups, teachers))


# ---------------------------------------------------------------------------- text
def _pm(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def _compare(report: SweepReport, name_a: str, a: Point, name_b: str, b: Point) -> str | None:
    """One line: the test (else validation) difference of a over b and its paired t-test over seeds."""
    ra, rb = report.row(a), report.row(b)
    if ra is None or rb is None:
        return None
    if a == b:
        return f"the {name_a} is {name_b}"
    if ra is rb:
        return f"{name_a} and {name_b} are the same runs here (ths = tll)"
    use_test = ra.stats.test_mean is not None and rb.stats.test_mean is not None
    split = "test" if use_test else "validation"
    ma, mb = (ra.stats.test_mean, rb.stats.test_mean) if use_test else (ra.stats.val_mean, rb.stats.val_mean)
    test = paired_test(ra, rb, "test" if use_test else "val")
    return f"{name_a} vs {name_b} on {split}: {ma:.4f} vs {mb:.4f} ({ma - mb:+.4f}; {test.verdict()})"


def headlines(report: SweepReport) -> list[str]:
    """The comparisons a reader wants first: did tuning pay, does the recommended config, does KD."""
    lines = []
    for o in report.outcomes:
        pairs = ((f"{report.strategy} winner", o.winner, "Hinton", o.hinton),
                 ("recommended", o.recommended, "Hinton", o.hinton), ("Hinton", o.hinton, "no KD", o.no_kd))
        for a_name, a, b_name, b in pairs:
            line = _compare(report, a_name, a, b_name, b)
            if line is not None:
                lines.append(f"L{o.layers}: {line}")
    return lines


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _row_cells(r: Row) -> list[str]:
    s = r.stats
    return [r.label(), ", ".join(r.roles), _pm(s.val_mean, s.val_std, s.n), _pm(s.test_mean, s.test_std, s.n),
            str(s.n), f"{s.train_seconds:.1f}"]


def _reward_cells(report: SweepReport, r: Reward) -> list[str]:
    untestable = report.untestable(r)
    return [f"L{r.layers}", r.parameter, f"{r.default} -> {r.alternative}",
            report.reward_note(r) if untestable else f"{r.r:+.4f}", "-" if untestable else report.reward_note(r),
            "yes" if r.kept else "no"]


HEAD = ["configuration", "role", "val {m} (mean ± std)", "test {m} (mean ± std)", "seeds", "train s"]
REWARD_HEAD = ["size", "parameter", "default -> alternative", "R (val)", "paired t-test over seeds (val)", "kept"]
TESTS = (f"Each comparison is a paired t-test over seeds (both configurations trained with the same seeds; "
         f"two-sided; significant when p < {LEVEL:g}). It sees seed-to-seed variation only, not the sampling of the "
         "test examples, and with 2 or 3 seeds it has little power: \"not significant\" means no evidence either way, "
         "not that the two are equal. With one seed there is no test.")


def markdown(report: SweepReport) -> str:
    m = report.metric
    parts = [f"# KD sweep: {report.strategy} search", "",
             f"Store `{report.store}`; metric {m}, best-by-validation student per run; "
             f"mean ± sample std over seeds; train s = student-training seconds summed over seeds.", ""]
    parts += [f"Teacher {name}{f' ({picks})' if picks else ''}: validation {m} {score:.4f} (the dashed line in "
              "metrics.png)." for name, (score, picks) in report.teacher_scores.items()] + [""] * bool(report.teacher_scores)
    if not report.complete:
        parts += ["**The sweep is incomplete**: rerun the same `students sweep` command to resume it.", ""]
    lines = headlines(report)
    if lines:
        parts += ["## Headline", ""] + [f"- {x}" for x in lines] + ["", TESTS, ""]
    for k, rows in report.rows.items():
        parts += [f"## Configurations, {k}-layer student", "",
                  _md_table([h.format(m=m) for h in HEAD], [_row_cells(r) for r in rows]), ""]
    if report.rewards:
        parts += ["## Rewards", "",
                  "R = mean validation metric with the alternative minus with the default, at the same stage "
                  + ("of the greedy search." if report.strategy == "greedy" else "(one change of the Hinton "
                     "configuration)."), "", _md_table(REWARD_HEAD, [_reward_cells(report, r) for r in report.rewards]), ""]
    parts += ["![reward per parameter](rewards.png)", "", "![metric per configuration](metrics.png)", ""]
    if report.ignored:
        parts += [f"({report.ignored} record(s) in {RESULTS} belong to another sweep in this folder and are left out.)",
                  ""]
    return "\n".join(parts)


def rich_tables(report: SweepReport, console: Console) -> None:
    m = report.metric
    for k, rows in report.rows.items():
        t = Table(title=f"{report.strategy} sweep, {k}-layer student ({m})")
        for i, h in enumerate(HEAD):
            t.add_column(h.format(m=m), justify="left" if i < 2 else "right")
        for r in rows:
            t.add_row(*_row_cells(r), style="bold" if r.roles else None)
        console.print(t)
    if report.rewards:
        t = Table(title="rewards (R = val metric with alternative - with default)")
        for i, h in enumerate(REWARD_HEAD):
            t.add_column(h, justify="right" if i == 3 else "left")
        for r in report.rewards:
            t.add_row(*_reward_cells(report, r))
        console.print(t)
    for line in headlines(report):
        console.print(line)
    if not report.complete:
        console.print("[yellow]the sweep is incomplete: rerun the same `students sweep` command to resume it")


def write_report(sweep_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                 console: Console | None = None) -> SweepReport:
    """Print the tables and write rewards.png, metrics.png and report.md into ``out``
    (default SWEEP_DIR). Raises ResultsFileError for a folder without a sweep."""
    import matplotlib

    matplotlib.use("Agg")
    report = load_report(sweep_dir)
    dest = Path(out) if out is not None else report.sweep_dir
    dest.mkdir(parents=True, exist_ok=True)
    rich_tables(report, console or Console())
    from students.plots import metrics_figure, rewards_figure, save

    report.files = [save(rewards_figure(report), dest / "rewards.png"), save(metrics_figure(report), dest / "metrics.png")]
    (dest / "report.md").write_text(markdown(report))
    report.files.append(dest / "report.md")
    return report
