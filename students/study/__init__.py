"""Studies: the greedy KD search with its baselines over many (store, size) cases, and the
report that reads them the way the paper does: the recipe behind `students study`.

    study TOML / flags -> StudyConfig (config) -> one sweep per (store, size) in
    OUT/<store>/L<size> (run; students/sweep/ does the runs) -> OUT/study.json
    -> `students report OUT`: study_report.md, study_rewards.png, study_report.json (report)

* ``config``: StudyConfig, StudyCase, load_study, parse_study (StudyError).
* ``run``: run_study (resumable: every run is recorded by its sweep as it finishes).
* ``numbers``: the definitions (R across cases, gap closed, relative gain, share of cases).
* ``collect``: a study folder -> CaseNumbers.
* ``report``: the markdown, the figure and the JSON.
* ``cli``: the `students study` flags.
"""
from __future__ import annotations

from students.study.config import StudyCase, StudyConfig, StudyError, load_study, parse_study
from students.study.numbers import (RewardSummary, StudyFolderError, gap_closed, relative_gain, share, summarize,
                                    within_spread)
from students.study.report import study_numbers, write_study_report
from students.study.run import STUDY_FILE, StudyResult, run_study

__all__ = ["STUDY_FILE", "RewardSummary", "StudyCase", "StudyConfig", "StudyError", "StudyFolderError",
           "StudyResult", "gap_closed", "load_study", "parse_study", "relative_gain", "run_study", "share",
           "study_numbers", "summarize", "within_spread", "write_study_report"]
