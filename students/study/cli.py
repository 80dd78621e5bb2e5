"""The `students study` command line: its own flags, plus the training flags of `students
sweep` (students/cli.py's OPTIONS), which here override the study file only when given."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_study(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
              add_options: Callable[[argparse.ArgumentParser, str, str], None], fields: list[str]) -> None:
    """The `study` subparser; ``add_options`` adds the training flags of ``fields``, which
    default to absent (argparse.SUPPRESS) so that only the flags given override the file."""
    s = sub.add_parser("study", parents=[common], help="the greedy KD search with baselines over many stores and "
                       "student sizes (one sweep per store and size)",
                       description="Run the greedy search (with the Hinton, recommended and no-KD baselines) for "
                                   "every (store, student size) of a study, one sweep folder each in "
                                   "OUT/<store>/L<size>. Settings come from STUDY.toml (stores, sizes, seeds, space, "
                                   "training options and epochs per size, per store) and/or flags, which apply to "
                                   "every store. Rerunning the same command resumes. `students report OUT` writes "
                                   "the study report. See docs/study.md.")
    s.add_argument("study_file", nargs="?", default=None, metavar="STUDY.toml", help="the study file (optional)")
    s.add_argument("--store", dest="stores", action="append", default=None, metavar="[NAME=]STORE",
                   help="a store to add (repeatable), with the shared settings; NAME defaults to the store's "
                        "file stem")
    s.add_argument("--out", default=None, metavar="STUDY_DIR", help="study folder (default: the file's `out`, "
                   "else runs/study)")
    s.add_argument("--sizes", default=None, metavar="LIST", help="student sizes in layers, e.g. 1,2 (default: "
                   "the file's, else 2)")
    s.add_argument("--seeds", default=None, metavar="N|LIST", help="N = seeds 0..N-1, or a list (default: the "
                   "file's, else 1)")
    s.add_argument("--space", default=None, metavar="FILE.toml", help="a sweep space file (as `students sweep "
                   "--space`) for every store; without `layers` and `seeds`")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="train N runs at once, in separate processes (default: 1)")
    s.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="train every sweep's runs as Ray tasks (as `students sweep --ray`): on a local Ray cluster, "
                        "or the cluster at ADDRESS (auto, or HOST:PORT of its head); needs the ray extra; "
                        "docs/cluster.md")
    s.add_argument("--parallel-cases", type=int, default=None, metavar="K",
                   help="run K (store, size) cases at once, their runs sharing the --workers pool or the Ray "
                        "cluster, so workers idle at the end of one case's greedy stage take another case's runs "
                        "(default: 1, one case after another)")
    s.add_argument("--save-models", default=None, choices=("best", "all", "none"),
                   help="which runs keep their student model (as `students sweep`; default: best)")
    add_options(s, "sweep", "training options of every run (override the study file)")
    for action in s._actions:  # not set_defaults: that would put the SUPPRESS string itself into args
        if action.dest in fields:
            action.default = argparse.SUPPRESS


def study_flags(args: argparse.Namespace, fields: list[str]) -> dict[str, Any]:
    """The flags of parse_study from ``args``: the training flags given, and the rest."""
    from students.sweep.space import _read_toml

    sizes = None
    if args.sizes is not None:
        try:
            sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
        except ValueError:
            sizes = args.sizes  # parse_study names the problem
    space = _read_toml(args.space) if args.space is not None else {}
    return {"stores": args.stores, "out": args.out, "sizes": sizes, "seeds": args.seeds, "workers": args.workers,
            "ray": args.ray, "parallel_cases": args.parallel_cases,
            "save_models": args.save_models, "space": space,
            "train": {f: getattr(args, f) for f in fields if hasattr(args, f)}}


def run_study_command(args: argparse.Namespace, fields: list[str]) -> int:
    from students.study import load_study, run_study

    run_study(load_study(args.study_file, study_flags(args, fields)))
    return 0
