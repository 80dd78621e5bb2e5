"""The sweep report's figures: rewards.png (one bar per reward) and metrics.png (the metric
of each configuration, with the teacher's validation score as a reference line).

Both are horizontal, one row per label, and grow with their labels: the width leaves room
for the longest label at its font size and keeps the plotting area itself PLOT_WIDTH inches
wide, the height gives each row ROW_HEIGHT inches, so labels never overlap each other or the
plot however long the configuration names are (tests/test_students_report.py checks the text
boxes). ``*_figure`` build a matplotlib Figure; ``plot_*`` save it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the report imports this module lazily: reading a sweep needs no matplotlib
    from matplotlib.figure import Figure

    from students.report import Row, SweepReport

MAX_PLOT_ROWS = 40  # configurations drawn in metrics.png (the marked ones always are)
PLOT_WIDTH = 5.0  # inches of the plotting area, whatever the labels
ROW_HEIGHT = 0.4  # inches per label row
CHAR_WIDTH = 0.6  # a label character's width, in units of its font size (a generous mean for sans-serif)


def _figure(labels: list[str], fontsize: float, extra_height: float) -> tuple["Figure", object]:
    """A figure whose left margin fits the longest of ``labels`` at ``fontsize`` points."""
    import matplotlib.pyplot as plt

    label_width = CHAR_WIDTH * fontsize / 72 * max((len(x) for x in labels), default=0)
    fig, ax = plt.subplots(figsize=(PLOT_WIDTH + label_width + 0.8, extra_height + ROW_HEIGHT * max(1, len(labels))))
    return fig, ax


def rewards_figure(report: "SweepReport") -> "Figure":
    """Horizontal bars, one per (size, parameter, alternative); the label carries the test's
    verdict, and a reward that cannot be measured (ths = tll) has no bar, only its label."""
    from matplotlib.patches import Patch

    rs = report.rewards[::-1]
    labels = [f"L{r.layers} {r.parameter}: {r.default} → {r.alternative} ({report.reward_note(r, short=True)})" for r in rs]
    fig, ax = _figure(labels, 9, 1.8)
    if rs:
        values = [0.0 if report.untestable(r) else r.r for r in rs]
        colors = ["tab:gray" if report.untestable(r) else "tab:green" if r.kept else
                  ("tab:blue" if r.r > 0 else "tab:red") for r in rs]
        ax.barh(range(len(rs)), values, color=colors)
        ax.set_yticks(range(len(rs)), labels, fontsize=9)
        ax.axvline(0, color="black", linewidth=0.8)
        kinds = {"tab:green": "kept", "tab:blue": "R > 0, not kept", "tab:red": "R ≤ 0, not kept"}
        ax.legend(handles=[Patch(color=c, label=name) for c, name in kinds.items() if c in colors], loc="best",
                  fontsize=8)
    else:
        ax.text(0.5, 0.5, "no rewards (sweep incomplete or one value per parameter)", ha="center", va="center")
    ax.set_xlabel(f"R = validation {report.metric}: alternative − default")
    ax.set_title(f"Reward per KD parameter ({report.strategy} sweep; p: paired t-test over seeds)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _shown_rows(report: "SweepReport") -> list["Row"]:
    rows: list[Row] = []
    for rs in report.rows.values():
        marked = [r for r in rs if r.roles]
        rest = [r for r in rs if not r.roles][:max(0, MAX_PLOT_ROWS // len(report.rows) - len(marked))]
        rows += sorted(marked + rest, key=lambda r: (-r.stats.val_mean, not r.roles, r.label()))
    return rows


def metrics_figure(report: "SweepReport") -> "Figure":
    """Validation and test metric per configuration (mean ± std over seeds) and a dashed
    line per teacher checkpoint at its validation score."""
    rows = _shown_rows(report)
    shown, total = len(rows), sum(len(rs) for rs in report.rows.values())
    labels = [r.label() + (f"  [{', '.join(r.roles)}]" if r.roles else "") for r in rows]
    fig, ax = _figure(labels, 8, 2.0)
    y = list(range(shown))[::-1]
    if rows:
        ax.errorbar([r.stats.val_mean for r in rows], [v + 0.12 for v in y], xerr=[r.stats.val_std for r in rows],
                    fmt="o", capsize=3, label="validation")
        tests = [(yy - 0.12, r.stats.test_mean, r.stats.test_std) for yy, r in zip(y, rows)
                 if r.stats.test_mean is not None]
        if tests:
            ax.errorbar([t[1] for t in tests], [t[0] for t in tests], xerr=[t[2] for t in tests], fmt="s",
                        capsize=3, label="test")
        ax.set_yticks(y, labels, fontsize=8)
        for tick, r in zip(ax.get_yticklabels(), rows):
            if r.roles:
                tick.set_fontweight("bold")
    for i, (name, (score, picks)) in enumerate(report.teacher_scores.items()):
        ax.axvline(score, color="dimgray", linestyle=("--", ":", "-.")[i % 3], linewidth=1.2,
                   label=f"teacher {name}{f' ({picks})' if picks else ''}: validation {score:.4f}")
    if rows or report.teacher_scores:
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"{report.metric} (mean ± std over seeds)")
    more = f", best {shown} of {total}" if shown < total else ""
    ax.set_title(f"{report.metric} per configuration ({report.strategy} sweep{more})", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def save(fig: "Figure", path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120, bbox_inches="tight")  # nothing cut off at the edges
    plt.close(fig)
    return path
