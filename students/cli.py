"""`students` command line. Parses flags, builds a config, calls one library function.

    students train --store logits.zarr --distance ce --temperature 2 --alpha 0.5 --teacher tll --layers 2 --out runs/s
    students sweep --store logits.zarr --strategy greedy --seeds 3 --out runs/sweep
    students report runs/sweep

Errors of either package's hierarchy (logitstore.errors.LogitStoreError,
students.errors.StudentsError) print as one line (``error: ...``) with exit code 2;
--debug shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys

from logitstore.errors import LogitStoreError, run_cli
from students.errors import StudentsError

USER_ERRORS = (LogitStoreError, StudentsError)


def _add_optimisation(o: argparse._ArgumentGroup) -> None:
    """The optimisation flags `train` and `sweep` share."""
    o.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    o.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (replaces --epochs)")
    o.add_argument("--batch-size", type=int, default=32, help="training batch size (default: 32)")
    o.add_argument("--eval-batch-size", type=int, default=128, help="evaluation batch size (default: 128)")
    o.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of AdamW (default: 1e-4)")
    o.add_argument("--schedule", default="linear", choices=["linear", "constant"],
                   help="learning-rate schedule after warm-up (default: linear decay to 0)")
    o.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of steps for linear warm-up (default: 0.1)")
    o.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    o.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (default: 1)")
    o.add_argument("--group-by-length", action="store_true",
                   help="batch training rows of similar length together (sorted within windows of 4 batches, "
                        "batches shuffled): much less padding, so faster steps; off by default")


def _add_train(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    t = sub.add_parser("train", parents=[common], help="train one student from a logit store",
                       description="Distil a K-layer student from a teacher checkpoint's cached logits: "
                                   "L = (1 - alpha) * CE(gold, student) + alpha * tau_s^2 * D(teacher / tau_t, "
                                   "student / tau_s). Writes the best student (by validation), its tokenizer, "
                                   "run_config.json, metrics.jsonl and summary.json to --out.")
    t.add_argument("--store", required=True, metavar="STORE", help="a logit store written by `logitstore build`")
    t.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files in it are replaced)")
    k = t.add_argument_group("distillation")
    k.add_argument("--distance", default="ce", choices=["ce", "mse"],
                   help="teacher-student distance: ce = KL between softened distributions (logged as KL, 0 at a "
                        "match), mse = mean squared error between scaled logits (default: ce)")
    k.add_argument("--temperature", type=float, default=2.0, metavar="TAU_T",
                   help="teacher temperature tau_t (default: 2)")
    k.add_argument("--student-temperature", default="teacher", choices=["1", "teacher"],
                   help="student temperature tau_s: 1 (only the teacher is softened) or teacher (tau_s = tau_t, "
                        "Hinton et al.) (default: teacher)")
    k.add_argument("--alpha", type=float, default=0.5,
                   help="weight of the distillation term; 0 = fine-tuning on labels only, 1 = no labels (default: 0.5)")
    k.add_argument("--teacher", default="ths", metavar="ths|tll|NAME",
                   help="teacher checkpoint: ths = highest validation score, tll = lowest validation loss, or a "
                        "checkpoint name from `logitstore info` (default: ths)")
    k.add_argument("--online", default=None, choices=["pytorch", "onnx"],
                   help="run the teacher on every step (PyTorch from its checkpoint folder, or its exported ONNX "
                        "model) instead of reading the cached logits: the baseline the cache is measured against")
    s = t.add_argument_group("student")
    s.add_argument("--layers", type=int, default=2, metavar="K",
                   help="student layers; layer j is initialised from teacher layer floor((j+1)*N/K)-1 (default: 2)")
    s.add_argument("--init", default=None, metavar="PATH",
                   help="initialise from this transformers model folder instead of the teacher checkpoint "
                        "(same vocabulary as the store; more layers than K are skipped the same way)")
    o = t.add_argument_group("optimisation")
    _add_optimisation(o)
    o.add_argument("--seed", type=int, default=0, help="seed of initialisation, dropout and batch order (default: 0)")
    o.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="evaluate on validation every N steps (default: at the end of each epoch)")
    r = t.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    r.add_argument("--memory-budget-mb", type=float, default=1024.0,
                   help="logits of a split larger than this are streamed by chunks instead of read into RAM "
                        "(default: 1024)")
    r.add_argument("--loader", default="auto", choices=["auto", "ram", "stream"],
                   help="force reading the logits into RAM or streaming them (default: auto, by the budget)")
    r.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    r.add_argument("--save-checkpoints", action="store_true",
                   help="also save the model at every evaluation as OUT/checkpoint-<step> (e.g. when fine-tuning a "
                        "teacher with --alpha 0 and --layers N, whose checkpoints then go into `logitstore build`)")


def _add_sweep(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    w = sub.add_parser("sweep", parents=[common], help="train many students over one store (grid or greedy search)",
                       description="Sweep KD parameters over one logit store. grid: every combination of the values "
                                   "given; greedy: the study's search from the Hinton configuration (tune tau_t, then "
                                   "alpha, then try distance, teacher, student temperature in that order, keeping an "
                                   "alternative only when the mean validation metric improves). Both also run the "
                                   "Hinton, recommended (tll, ce, tau_s=1) and no-KD baselines. Value lists are "
                                   "comma-separated; flags override --space FILE.toml. Each finished run is appended "
                                   "to OUT/results.jsonl; rerunning the same command resumes. See docs/sweeps.md.")
    w.add_argument("--store", required=True, metavar="STORE", help="a logit store written by `logitstore build`")
    w.add_argument("--out", default="runs/sweep", metavar="SWEEP_DIR",
                   help="sweep folder: results.jsonl, sweep.json, runs/<key>/ (default: runs/sweep)")
    w.add_argument("--strategy", default="greedy", choices=["grid", "greedy"],
                   help="grid = the product of all values; greedy = the study's search (default: greedy)")
    w.add_argument("--space", default=None, metavar="FILE.toml",
                   help="TOML file with the space: top-level keys distance, temperature, student_temperature, "
                        "alpha, teacher, layers, seeds, base_temperature, base_alpha (a value or a list)")
    v = w.add_argument_group("sweep space (comma-separated values; default in brackets)")
    v.add_argument("--distance", default=None, metavar="LIST", help="distances: ce, mse [ce,mse]")
    v.add_argument("--temperature", default=None, metavar="LIST", help="teacher temperatures tau_t [1,2,4,8]")
    v.add_argument("--student-temperature", default=None, metavar="LIST",
                   help="student temperature modes: teacher (tau_s = tau_t), 1 [teacher,1]")
    v.add_argument("--alpha", default=None, metavar="LIST", help="KD weights alpha in [0, 1] [0.25,0.5,0.75,1]")
    v.add_argument("--teacher", default=None, metavar="LIST",
                   help="teacher checkpoints: ths, tll or names from `logitstore info` [ths,tll]")
    v.add_argument("--layers", default=None, metavar="LIST", help="student sizes in layers; greedy runs per size [2]")
    v.add_argument("--seeds", default=None, metavar="N|LIST",
                   help="N = seeds 0..N-1, or a comma-separated list of seeds; every configuration runs each [1]")
    v.add_argument("--base-temperature", type=float, default=None, metavar="TAU_T",
                   help="the Hinton configuration's tau_t: greedy start and baselines [2]")
    v.add_argument("--base-alpha", type=float, default=None, metavar="ALPHA",
                   help="the Hinton configuration's alpha, in (0, 1): greedy start and baselines [0.5]")
    w.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N configurations at once in separate processes, each with cores/N torch threads "
                        "(default: 1, in this process)")
    o = w.add_argument_group("training options of every run (as in `students train`)")
    _add_optimisation(o)
    o.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="evaluate on validation every N steps (default: at the end of each epoch)")
    o.add_argument("--init", default=None, metavar="PATH",
                   help="initialise students from this transformers model folder instead of the teacher checkpoint")
    o.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    o.add_argument("--memory-budget-mb", type=float, default=1024.0,
                   help="logits of a split larger than this are streamed by chunks (default: 1024)")
    o.add_argument("--loader", default="auto", choices=["auto", "ram", "stream"],
                   help="force reading the logits into RAM or streaming them (default: auto, by the budget)")


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
    return p


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from students.train import TrainConfig, train

        config = TrainConfig(
            store=args.store, out=args.out, distance=args.distance, temperature=args.temperature,
            student_temperature=args.student_temperature, alpha=args.alpha, teacher=args.teacher,
            layers=args.layers, init=args.init, epochs=args.epochs, batch_size=args.batch_size,
            eval_batch_size=args.eval_batch_size, lr=args.lr, schedule=args.schedule,
            warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
            group_by_length=args.group_by_length,
            seed=args.seed, max_steps=args.max_steps, eval_every=args.eval_every, device=args.device,
            online=args.online, memory_budget_mb=args.memory_budget_mb, loader=args.loader,
            progress=not args.no_progress, save_checkpoints=args.save_checkpoints,
        )
        train(config)
        return 0
    if args.command == "sweep":
        from students.sweep import SPACE_KEYS, SweepConfig, load_space, run_sweep
        from students.train import TrainConfig

        space = load_space(args.space, {k: getattr(args, k) for k in SPACE_KEYS})
        template = TrainConfig(
            store=args.store, out=args.out, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
            eval_batch_size=args.eval_batch_size, lr=args.lr, schedule=args.schedule, warmup_ratio=args.warmup_ratio,
            weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
            group_by_length=args.group_by_length, eval_every=args.eval_every,
            init=args.init, device=args.device, memory_budget_mb=args.memory_budget_mb, loader=args.loader,
            progress=False,
        )
        run_sweep(SweepConfig(args.store, args.out, args.strategy, space, args.workers, template))
        return 0
    if args.command == "report":
        from students.report import write_report

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
