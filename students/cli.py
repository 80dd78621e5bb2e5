"""`students` command line. Parses flags, builds a config, calls one library function.

    students train --store logits.zarr --distance ce --temperature 2 --alpha 0.5 --teacher tll --layers 2 --out runs/s
    students sweep --store logits.zarr --strategy greedy --seeds 3 --out runs/sweep
    students report runs/sweep
    students study study.toml --out runs/study        (then: students report runs/study)

Errors of either package's hierarchy (logitstore.errors.LogitStoreError,
students.errors.StudentsError) print as one line (``error: ...``) with exit code 2;
--debug shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import get_args, get_type_hints

from logitstore.errors import LogitStoreError, run_cli
from students.config import (DISTANCES, MODES, ONLINE_KINDS, SCHEDULES, STUDENT_TEMPERATURES, TAILS, TrainConfig,
                             default_threads)
from students.errors import StudentsError
from students.sweep.space import SPACE_KEYS, SweepSpace
from students.sweep.recipe import SAVE_MODELS
from students.sweep.strategies import STRATEGIES

USER_ERRORS = (LogitStoreError, StudentsError)


@dataclass(frozen=True)
class Option:
    """The `--flag` of one TrainConfig field. Its default and type come from TrainConfig;
    ``help`` gets "(default: X)" appended unless the default is None or a switch."""

    field: str
    help: str
    group: str  # its group in `students train --help`
    train_only: bool = False  # else `students sweep` has it too, for every run
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


_HINTS = get_type_hints(TrainConfig)

#: Every training flag, once: `students train` has them all, `students sweep` those not train_only.
OPTIONS = (
    Option("distance", "teacher-student distance: ce = KL between softened distributions (logged as KL, 0 at a "
           "match), mse = mean squared error between scaled logits; causal-LM stores also fkl (= ce), rkl (reverse KL), "
           "gjsd (generalized JSD, --beta), tvd (total variation)", "distillation", True, choices=DISTANCES),
    Option("tail", "causal-LM stores: the teacher's mass outside its top-k: bucket = one extra class on both sides "
           "(needs the store's lse at tau_t), renormalize = both restricted to the kept ids", "distillation", True,
           choices=TAILS),
    Option("beta", "causal-LM stores: beta of the generalized JSD (0 < beta < 1)", "distillation", True),
    Option("temperature", "teacher temperature tau_t", "distillation", True, metavar="TAU_T"),
    Option("student_temperature", "student temperature tau_s: 1 (only the teacher is softened) or teacher "
           "(tau_s = tau_t, Hinton et al.)", "distillation", True, choices=STUDENT_TEMPERATURES),
    Option("alpha", "weight of the distillation term; 0 = fine-tuning on labels only, 1 = no labels",
           "distillation", True),
    Option("teacher", "teacher checkpoint: ths = highest validation score, tll = lowest validation loss, or a "
           "checkpoint name from `logitstore info`", "distillation", True, metavar="ths|tll|NAME"),
    Option("online", "run the teacher on every step (PyTorch from its checkpoint folder, or its exported ONNX "
           "model) instead of reading the cached logits: the baseline the cache is measured against",
           "distillation", True, choices=ONLINE_KINDS),
    Option("layers", "student layers; layer j is initialised from teacher layer floor((j+1)*N/K)-1", "student",
           True, metavar="K"),
    Option("init", "initialise from this transformers model folder (safetensors weights) instead of the teacher "
           "checkpoint (same vocabulary as the store; more layers than K are skipped the same way)", "student",
           metavar="PATH"),
    Option("epochs", "training epochs", "optimisation", metavar="N"),
    Option("max_steps", "stop after this many steps (replaces --epochs)", "optimisation", metavar="N"),
    Option("batch_size", "training batch size", "optimisation", metavar="N"),
    Option("eval_batch_size", "evaluation batch size", "optimisation", metavar="N"),
    Option("lr", "peak learning rate of AdamW", "optimisation"),
    Option("schedule", "learning rate after the warm-up: linear = decay to 0 at the last step, constant = stay",
           "optimisation", choices=SCHEDULES),
    Option("warmup_ratio", "fraction of the steps over which the learning rate rises linearly from 0",
           "optimisation", metavar="R"),
    Option("weight_decay", "AdamW weight decay (not on biases and LayerNorm weights)", "optimisation", metavar="W"),
    Option("max_grad_norm", "gradient clipping norm", "optimisation", metavar="NORM"),
    Option("group_by_length", "batch training rows of similar length together (sorted within windows of 4 "
           "batches, batches shuffled): much less padding, so faster steps; off by default", "optimisation"),
    Option("seed", "seed of initialisation, dropout and batch order", "optimisation", True, metavar="N"),
    Option("eval_every", "evaluate on validation every N steps (default: at the end of each epoch)",
           "optimisation", metavar="N"),
    Option("patience", "early stopping: stop after N evaluations on validation (see --eval-every) without a "
           "better task metric, keeping the best student (default: train the whole run)", "optimisation",
           metavar="N"),
    Option("device", "cpu, cuda, cuda:N, mps or auto (cuda when torch sees a GPU, else cpu)", "runtime",
           metavar="NAME"),
    Option("threads", "CPU threads of torch and of an online ONNX teacher; a sweep with --workers N gives each "
           f"run THREADS // N, one with --ray asks the cluster for THREADS CPUs per run (default 1 there; "
           f"else the CPUs this process may use, capped by OMP_NUM_THREADS: {default_threads()} here)",
           "runtime", metavar="N"),
    Option("memory_budget_mb", "logits of a split larger than this are streamed by chunks instead of read into "
           "RAM", "runtime", metavar="MB"),
    Option("loader", "ram = read the logits into RAM, stream = read them chunk by chunk, auto = by "
           "--memory-budget-mb", "runtime", choices=MODES),
    Option("progress", "do not draw the progress bar", "runtime", True),
    Option("save_checkpoints", "also save the model at every evaluation as OUT/checkpoint-<step> (e.g. when "
           "fine-tuning a teacher with --alpha 0 and --layers N, whose checkpoints then go into "
           "`logitstore build`)", "runtime", True),
)

#: `students sweep` space flags: entry -> (metavar, help); defaults in brackets come from SweepSpace.
SPACE_FLAGS = {
    "distance": ("LIST", "distances: ce, mse"),
    "temperature": ("LIST", "teacher temperatures tau_t"),
    "student_temperature": ("LIST", "student temperature modes: teacher (tau_s = tau_t), 1"),
    "alpha": ("LIST", "KD weights alpha in [0, 1]"),
    "teacher": ("LIST", "teacher checkpoints: ths, tll or names from `logitstore info`"),
    "layers": ("LIST", "student sizes in layers; greedy runs per size"),
    "seeds": ("N|LIST", "N = seeds 0..N-1, or a comma-separated list of seeds; every configuration runs each"),
    "base_temperature": ("TAU_T", "the Hinton configuration's tau_t: greedy start and baselines"),
    "base_alpha": ("ALPHA", "the Hinton configuration's alpha, in (0, 1): greedy start and baselines"),
}


def _fmt(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(map(_fmt, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _add_option(group: argparse._ArgumentGroup, o: Option) -> None:
    """``o`` as a flag of ``group``: --field-name (a switch for a bool field; --no-field-name
    for one that is on by default), its default and type from TrainConfig."""
    default = TrainConfig.__dataclass_fields__[o.field].default
    kind = [t for t in get_args(_HINTS[o.field]) if t is not type(None)] or [_HINTS[o.field]]
    flag = "--" + o.field.replace("_", "-")
    if kind[0] is bool:
        group.add_argument("--no-" + flag[2:] if default else flag, dest=o.field, default=default, help=o.help,
                           action="store_false" if default else "store_true")
        return
    shown = "" if default is None else f" (default: {_fmt(default)})"
    group.add_argument(flag, dest=o.field, type=kind[0], default=default, choices=o.choices, metavar=o.metavar,
                       help=o.help + shown)


def _add_options(parser: argparse.ArgumentParser, command: str, group_title: str | None = None) -> None:
    """The OPTIONS of ``command``: in their own groups, or all in one group titled ``group_title``."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for o in OPTIONS:
        if command == "train" or not o.train_only:
            title = group_title or o.group
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            _add_option(groups[title], o)


def config_kwargs(args: argparse.Namespace, command: str) -> dict[str, object]:
    """The TrainConfig keyword arguments of the OPTIONS flags of ``command`` in ``args``."""
    return {o.field: getattr(args, o.field) for o in OPTIONS if command == "train" or not o.train_only}


def _add_train(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    t = sub.add_parser("train", parents=[common], help="train one student from a logit store",
                       description="Distil a K-layer student from a teacher checkpoint's cached logits: "
                                   "L = (1 - alpha) * CE(gold, student) + alpha * tau_s^2 * D(teacher / tau_t, "
                                   "student / tau_s). Writes the best student (by validation), its tokenizer, "
                                   "run_config.json, metrics.jsonl and summary.json to --out.")
    t.add_argument("--store", required=True, metavar="STORE",
                   help="a logit store written by `logitstore build`: a folder or a URL (s3://bucket/key.zarr)")
    t.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files in it are replaced)")
    _add_options(t, "train")


def _add_sweep(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    w = sub.add_parser("sweep", parents=[common], help="train many students over one store (grid or greedy search)",
                       description="Sweep KD parameters over one logit store. grid: every combination of the values "
                                   "given; greedy: the study's search from the Hinton configuration (tune tau_t, then "
                                   "alpha, then try distance, teacher, student temperature in that order, keeping an "
                                   "alternative only when the mean validation metric improves). Both also run the "
                                   "Hinton, recommended (tll, ce, tau_s=1) and no-KD baselines. Value lists are "
                                   "comma-separated; flags override --space FILE.toml. Each finished run is appended "
                                   "to OUT/results.jsonl; rerunning the same command resumes. See docs/sweeps.md.")
    w.add_argument("--store", required=True, metavar="STORE",
                   help="a logit store written by `logitstore build`: a folder or a URL (s3://bucket/key.zarr)")
    w.add_argument("--out", default="runs/sweep", metavar="SWEEP_DIR",
                   help="sweep folder: results.jsonl, sweep.json, runs/<key>/ (default: runs/sweep)")
    w.add_argument("--strategy", default="greedy", choices=STRATEGIES,
                   help="grid = the product of all values; greedy = the study's search (default: greedy)")
    w.add_argument("--space", default=None, metavar="FILE.toml",
                   help="TOML file with the space: top-level keys " + ", ".join(SPACE_KEYS) + " (a value or a list)")
    v = w.add_argument_group("sweep space (comma-separated values; default in brackets)")
    defaults = SweepSpace()
    for key, (metavar, text) in SPACE_FLAGS.items():
        shown = str(len(defaults.seeds)) if key == "seeds" else _fmt(getattr(defaults, key))  # seeds: a count
        v.add_argument("--" + key.replace("_", "-"), default=None, metavar=metavar, help=f"{text} [{shown}]",
                       type=float if key.startswith("base_") else str)
    w.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run N configurations at once in separate processes on this machine, each with "
                        "--threads // N torch threads (default: 1, in this process)")
    w.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="send each run to a Ray cluster as one task with --threads CPUs (default 1): no ADDRESS = "
                        "a local cluster started for the sweep, auto = the cluster `ray start` runs here, "
                        "HOST:PORT = that cluster's head node. Needs the ray extra; see docs/cluster.md")
    w.add_argument("--gpus-per-run", type=float, default=0.0, metavar="G",
                   help="with --ray: GPUs each run asks the cluster for (e.g. 1 with --device cuda; 0.5 puts "
                        "two runs on one GPU) (default: 0)")
    w.add_argument("--save-models", default="best", choices=SAVE_MODELS,
                   help="which runs keep their student model once the sweep completes: best = per student size "
                        "the best seed of the winner and of each baseline (hinton, recommended, no KD); all; none. "
                        "Every run keeps its metrics (default: best)")
    _add_options(w, "sweep", "training options of every run (as in `students train`)")


def _add_report(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser("report", parents=[common], help="tables, plots and a markdown summary of a sweep folder",
                       description="Read SWEEP_DIR/results.jsonl and sweep.json; print the configurations (metric "
                                   "mean ± std over seeds, cost) and rewards; write rewards.png, metrics.png and "
                                   "report.md.")
    r.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a folder written by `students sweep`")
    r.add_argument("--out", default=None, metavar="DIR", help="write the plots and report.md here (default: SWEEP_DIR)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="students", description=
                                "Train small transformer students from a logit store (knowledge distillation).")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    common = argparse.ArgumentParser(add_help=False)  # --debug also accepted after the subcommand
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub, common)
    _add_sweep(sub, common)
    _add_report(sub, common)
    from students.study.cli import add_study

    add_study(sub, common, _add_options, _SWEEP_FIELDS)
    return p


_SWEEP_FIELDS = [o.field for o in OPTIONS if not o.train_only]  # the training flags of sweep and study


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from students.train import train

        train(TrainConfig(store=args.store, out=args.out, **config_kwargs(args, "train")))
        return 0
    if args.command == "sweep":
        from students.sweep import SweepConfig, load_space, run_sweep

        space = load_space(args.space, {k: getattr(args, k) for k in SPACE_KEYS})
        template = TrainConfig(store=args.store, out=args.out, progress=False, **config_kwargs(args, "sweep"))
        run_sweep(SweepConfig(args.store, args.out, args.strategy, space, args.workers, template,
                              args.save_models, args.ray, args.gpus_per_run))
        return 0
    if args.command == "study":
        from students.study.cli import run_study_command

        return run_study_command(args, _SWEEP_FIELDS)
    if args.command == "report":
        from students.report import write_report
        from students.study import STUDY_FILE, write_study_report

        if os.path.exists(os.path.join(args.sweep_dir, STUDY_FILE)):  # a study folder: the study report
            print("wrote " + ", ".join(str(p) for p in write_study_report(args.sweep_dir, args.out)))
            return 0
        report = write_report(args.sweep_dir, args.out)
        print("wrote " + ", ".join(str(p) for p in report.files))
        return 0
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown commands


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bars would interleave with ours
    return run_cli(_run, args, USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
