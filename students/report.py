"""Tables, plots and a markdown summary of a sweep folder: the recipe behind `students report`.

    SWEEP_DIR/sweep.json + results.jsonl -> rows (configuration, metric mean ± std over
    seeds, cost) and rewards -> rich table on the console, rewards.png, metrics.png and
    report.md (in SWEEP_DIR or --out)

Only the runs of the sweep that sweep.json describes count (records are matched by their
run key, so results of an earlier sweep with other training options in the same folder
are left out). The report reads files only: it can run while a sweep is still going, and
then says the sweep is incomplete.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from students.config import TrainConfig
from students.sweep import (MANIFEST, RESULTS, LayersOutcome, Point, PointStats, ResultsFileError, Reward,
                            load_results, point_stats, read_manifest, run_config, run_key)

MAX_PLOT_ROWS = 40  # configurations drawn in metrics.png (the marked ones always are)


@dataclass
class Row:
    """One configuration of the report: its stats and the roles it plays."""

    stats: PointStats
    roles: list[str] = field(default_factory=list)

    @property
    def point(self) -> Point:
        return self.stats.point


@dataclass
class SweepReport:
    """Everything the report shows; ``rows`` by student size, best validation first."""

    sweep_dir: Path
    strategy: str
    store: str
    metric: str
    complete: bool
    rows: dict[int, list[Row]]
    outcomes: list[LayersOutcome]
    ignored: int  # records in results.jsonl that belong to no run of this sweep
    files: list[Path] = field(default_factory=list)

    @property
    def rewards(self) -> list[Reward]:
        return [r for o in self.outcomes for r in o.rewards]


def load_report(sweep_dir: str | os.PathLike[str]) -> SweepReport:
    """Read SWEEP_DIR into a SweepReport; raises ResultsFileError when it holds no sweep."""
    d = Path(sweep_dir)
    manifest = read_manifest(d)
    if manifest is None:
        raise ResultsFileError(f"{d} holds no {MANIFEST}; run `students sweep --out {d}` first")
    try:
        template = TrainConfig(store=manifest["store"], out=str(d), **manifest["train_options"])
        seeds = set(manifest["space"]["seeds"])
        outcomes = [LayersOutcome.from_dict(o) for o in manifest["outcomes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ResultsFileError(f"{d / MANIFEST} is not a sweep manifest ({exc}); rerun the sweep to rewrite it") from exc
    records = load_results(d)
    groups: dict[Point, list[dict[str, Any]]] = {}
    for key, rec in records.items():
        p = Point.from_dict(rec["point"])
        if rec["seed"] in seeds and run_key(run_config(template, p, rec["seed"], d)) == key:
            groups.setdefault(p, []).append(rec)
    metric = next((r["metric"] for rs in groups.values() for r in rs), "metric")
    roles: dict[Point, list[str]] = {}
    for o in outcomes:
        winner = f"{manifest['strategy']} winner"
        for name, p in ((winner, o.winner), ("Hinton", o.hinton), ("recommended", o.recommended),
                        ("no KD", o.no_kd)):
            roles.setdefault(p, []).append(name)
    rows: dict[int, list[Row]] = {}
    for p, rs in groups.items():
        rows.setdefault(p.layers, []).append(Row(point_stats(p, rs), roles.get(p, [])))
    for k in rows:
        rows[k].sort(key=lambda r: (-r.stats.val_mean, not r.roles, r.point.label()))  # ties: marked first
    used = sum(len(rs) for rs in groups.values())
    return SweepReport(d, manifest["strategy"], manifest["store"], metric, manifest["status"] == "complete",
                       dict(sorted(rows.items())), outcomes, len(records) - used)


# ---------------------------------------------------------------------------- text
def _pm(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def _exceeds(r: Reward) -> str:
    e = r.exceeds_spread
    return "n/a (1 seed)" if e is None else ("yes" if e else "no")


def _find(report: SweepReport, p: Point) -> PointStats | None:
    return next((r.stats for r in report.rows.get(p.layers, []) if r.point == p), None)


def _compare(report: SweepReport, name_a: str, a: Point, name_b: str, b: Point) -> str | None:
    """One line: test (else validation) difference of a over b, and whether it exceeds the spread."""
    sa, sb = _find(report, a), _find(report, b)
    if sa is None or sb is None:
        return None
    use_test = sa.test_mean is not None and sb.test_mean is not None
    split = "test" if use_test else "validation"
    ma, mb = (sa.test_mean, sb.test_mean) if use_test else (sa.val_mean, sb.val_mean)
    sda, sdb = (sa.test_std, sb.test_std) if use_test else (sa.val_std, sb.val_std)
    diff = ma - mb
    if min(sa.n, sb.n) > 1:
        spread = max(sda, sdb)
        verdict = "exceeds" if abs(diff) > spread else "within"
        tail = f"{verdict} the seed spread ({spread:.4f})"
    else:
        tail = "one seed: spread unknown"
    return f"{name_a} vs {name_b} on {split}: {ma:.4f} vs {mb:.4f} ({diff:+.4f}; {tail})"


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
    return [r.point.label(), ", ".join(r.roles), _pm(s.val_mean, s.val_std, s.n), _pm(s.test_mean, s.test_std, s.n),
            str(s.n), f"{s.train_seconds:.1f}"]


def _reward_cells(r: Reward) -> list[str]:
    spread = "-" if r.spread is None else f"{r.spread:.4f}"
    return [f"L{r.layers}", r.parameter, f"{r.default} -> {r.alternative}", f"{r.r:+.4f}", spread, _exceeds(r),
            "yes" if r.kept else "no"]


HEAD = ["configuration", "role", "val {m} (mean ± std)", "test {m} (mean ± std)", "seeds", "train s"]
REWARD_HEAD = ["size", "parameter", "default -> alternative", "R (val)", "seed spread", "R exceeds spread", "kept"]


def markdown(report: SweepReport) -> str:
    m = report.metric
    parts = [f"# KD sweep: {report.strategy} search", "",
             f"Store `{report.store}`; metric {m}, best-by-validation student per run; "
             f"mean ± sample std over seeds; train s = student-training seconds summed over seeds.", ""]
    if not report.complete:
        parts += ["**The sweep is incomplete**: rerun the same `students sweep` command to resume it.", ""]
    lines = headlines(report)
    if lines:
        parts += ["## Headline", ""] + [f"- {x}" for x in lines] + [""]
    for k, rows in report.rows.items():
        parts += [f"## Configurations, {k}-layer student", "",
                  _md_table([h.format(m=m) for h in HEAD], [_row_cells(r) for r in rows]), ""]
    if report.rewards:
        parts += ["## Rewards", "",
                  "R = mean validation metric with the alternative minus with the default, at the same stage "
                  + ("of the greedy search." if report.strategy == "greedy" else "(one change of the Hinton "
                     "configuration)."), "", _md_table(REWARD_HEAD, [_reward_cells(r) for r in report.rewards]), ""]
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
            t.add_column(h, justify="right" if i in (3, 4) else "left")
        for r in report.rewards:
            t.add_row(*_reward_cells(r))
        console.print(t)
    for line in headlines(report):
        console.print(line)
    if not report.complete:
        console.print("[yellow]the sweep is incomplete: rerun the same `students sweep` command to resume it")


# ---------------------------------------------------------------------------- plots
def plot_rewards(report: SweepReport, path: Path) -> Path:
    """Horizontal bars: one per (size, parameter, alternative), error bar = seed spread."""
    import matplotlib.pyplot as plt

    rs = report.rewards
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.45 * max(1, len(rs))))
    if rs:
        labels = [f"L{r.layers} {r.parameter}: {r.default} → {r.alternative}" for r in rs][::-1]
        values = [r.r for r in rs][::-1]
        errs = [r.spread or 0.0 for r in rs][::-1]
        colors = ["tab:green" if r.kept else ("tab:blue" if r.r > 0 else "tab:red") for r in rs][::-1]
        ax.barh(range(len(rs)), values, xerr=errs, color=colors, capsize=3)
        ax.set_yticks(range(len(rs)), labels)
        ax.axvline(0, color="black", linewidth=0.8)
        from matplotlib.patches import Patch

        kinds = {"tab:green": "kept", "tab:blue": "R > 0, not kept", "tab:red": "R ≤ 0, not kept"}
        ax.legend(handles=[Patch(color=c, label=name) for c, name in kinds.items() if c in colors], loc="best",
                  fontsize=8)
    else:
        ax.text(0.5, 0.5, "no rewards (sweep incomplete or one value per parameter)", ha="center", va="center")
    ax.set_xlabel(f"R = validation {report.metric}: alternative − default")
    ax.set_title(f"Reward per KD parameter ({report.strategy} sweep; error bars: seed spread)")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # nothing cut off at the edges
    plt.close(fig)
    return path


def plot_metrics(report: SweepReport, path: Path) -> Path:
    """Validation and test metric per configuration, mean ± std over seeds."""
    import matplotlib.pyplot as plt

    rows: list[Row] = []
    for k, rs in report.rows.items():
        marked = [r for r in rs if r.roles]
        rest = [r for r in rs if not r.roles][:max(0, MAX_PLOT_ROWS // len(report.rows) - len(marked))]
        rows += sorted(marked + rest, key=lambda r: (-r.stats.val_mean, not r.roles, r.point.label()))
    shown, total = len(rows), sum(len(rs) for rs in report.rows.values())
    fig, ax = plt.subplots(figsize=(10, 1.8 + 0.38 * max(1, shown)))
    y = list(range(shown))[::-1]
    if rows:
        labels = [r.point.label() + (f"  [{', '.join(r.roles)}]" if r.roles else "") for r in rows]
        val = [r.stats.val_mean for r in rows]
        ax.errorbar(val, [v + 0.12 for v in y], xerr=[r.stats.val_std for r in rows], fmt="o", capsize=3,
                    label="validation")
        tests = [(yy - 0.12, r.stats.test_mean, r.stats.test_std) for yy, r in zip(y, rows)
                 if r.stats.test_mean is not None]
        if tests:
            ax.errorbar([t[1] for t in tests], [t[0] for t in tests], xerr=[t[2] for t in tests], fmt="s",
                        capsize=3, label="test")
        ax.set_yticks(y, labels, fontsize=8)
        for tick, r in zip(ax.get_yticklabels(), rows):
            if r.roles:
                tick.set_fontweight("bold")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"{report.metric} (mean ± std over seeds)")
    more = f", best {shown} of {total}" if shown < total else ""
    ax.set_title(f"{report.metric} per configuration ({report.strategy} sweep{more})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # nothing cut off at the edges
    plt.close(fig)
    return path


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
    report.files = [plot_rewards(report, dest / "rewards.png"), plot_metrics(report, dest / "metrics.png")]
    (dest / "report.md").write_text(markdown(report))
    report.files.append(dest / "report.md")
    return report
