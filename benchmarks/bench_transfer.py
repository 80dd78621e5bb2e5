"""Transfer (unlabelled) data on real data (issue 14): Rotten Tomatoes with labels kept for a
fraction of train and the rest given to `logitstore build --transfer` as texts only.

    python benchmarks/bench_transfer.py [--examples 3000] [--labelled 0.1] [--seeds 0,1]

1. the pinned corpus (demo/assets.py) cut into seeded train/validation/test CSVs
   (demo/splits.py); train cut again (seed 0): ``--labelled`` of it keeps its labels, the
   rest goes to transfer.csv with its text column only;
2. the teacher: MiniLM-L6 + a 3-label head (the demo's), fine-tuned on the labelled rows only
   (`students train --alpha 0 --layers 6 --save-checkpoints`, as scripts/demo.sh does);
3. one store from its checkpoints with ``--transfer transfer.csv``;
4. 1-layer students, each seed: no KD on the labelled rows; KD (tll, CE, tau_t 2, tau_s 1,
   alpha 0.5) on the labelled rows for the same epochs; KD with ``--transfer`` (train +
   transfer rows shuffled together); and the same KD on the labelled rows for as many steps
   as the transfer run takes (more epochs: is it the data or the steps?).
Prints a markdown table (mean ± sample std over seeds, each seed's values, and the paired
t-test of transfer against the step-matched run) and writes benchmarks/results/transfer.json.
Everything goes under --work (default runs/bench-transfer); finished stages are reused.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from demo.assets import ASSETS, RT_LABELS, fetch, minilm_classifier
from demo.splits import rotten_tomatoes_splits
from logitstore.build import BuildConfig, build_store
from logitstore.store import open_store
from students.stats import paired_t_test
from students.train import TrainConfig, train

QUIET = Console(quiet=True)


def labelled_and_transfer(data: Path, out: Path, fraction: float, seed: int = 0) -> tuple[Path, Path]:
    """out/labelled/{train,validation,test}.csv (train: ``fraction`` of the rows, seeded) and
    out/transfer.csv (the other train rows, text only)."""
    rows = list(csv.DictReader(open(data / "train.csv", encoding="utf-8")))
    keep = np.zeros(len(rows), bool)
    keep[np.random.default_rng(seed).permutation(len(rows))[:round(fraction * len(rows))]] = True
    (out / "labelled").mkdir(parents=True, exist_ok=True)
    with open(out / "labelled" / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(r for r, k in zip(rows, keep) if k)
    with open(out / "transfer.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text"])
        w.writeheader()
        w.writerows({"text": r["text"]} for r, k in zip(rows, keep) if not k)
    for split in ("validation", "test"):
        (out / "labelled" / f"{split}.csv").write_text((data / f"{split}.csv").read_text(encoding="utf-8"),
                                                       encoding="utf-8")
    return out / "labelled", out / "transfer.csv"


def teacher_store(args: argparse.Namespace, work: Path) -> tuple[Path, dict]:
    """Fine-tune the teacher on the labelled rows and build the store with the transfer split."""
    model_dir = fetch(ASSETS["minilm"], args.cache)
    data = rotten_tomatoes_splits(fetch(ASSETS["rotten-tomatoes"], args.cache), work / "rt", limit=args.examples)
    labelled, transfer = labelled_and_transfer(data, work, args.labelled)
    init = minilm_classifier(model_dir, args.cache / "minilm-l6-rt3", RT_LABELS)
    ids, store, teacher = work / "ids.zarr", work / "logits.zarr", work / "teacher"
    common = dict(data=str(labelled), labels=tuple(RT_LABELS), max_length=args.max_length)
    times = {}
    if not (ids / "zarr.json").exists():
        build_store(BuildConfig(teachers=(), tokenizer=init, out=ids, **common))
    if not (teacher / "summary.json").exists():
        t0 = time.perf_counter()
        steps = -(-open_store(ids).split_meta("train").rows // 32) * args.teacher_epochs
        train(TrainConfig(store=str(ids), out=str(teacher), alpha=0.0, layers=6, init=str(init),
                          epochs=args.teacher_epochs, lr=args.teacher_lr, eval_every=-(-steps // 2),
                          save_checkpoints=True, group_by_length=True, progress=False, threads=args.threads), QUIET)
        times["teacher_fine_tune_s"] = round(time.perf_counter() - t0, 1)
    if not (work / ".store-complete").exists():
        t0 = time.perf_counter()
        build_store(BuildConfig(teachers=(teacher,), transfer=str(transfer), out=store, threads=args.threads,
                                **common))
        (work / ".store-complete").touch()
        times["store_build_s"] = round(time.perf_counter() - t0, 1)
    return store, times


def runs(args: argparse.Namespace, store: Path) -> dict[str, dict]:
    """The student configurations (name -> TrainConfig keyword arguments)."""
    s = open_store(store)
    n_train, n_all = s.split_meta("train").rows, s.split_meta("train").rows + s.split_meta("transfer").rows
    kd = dict(alpha=0.5, teacher="tll", distance="ce", temperature=2.0, student_temperature="1")
    matched = -(-n_all // 32) * args.student_epochs  # the transfer run's steps
    configs = {"no KD (labelled)": dict(alpha=0.0, epochs=args.student_epochs),
               "KD (labelled)": dict(kd, epochs=args.student_epochs),
               f"KD + transfer ({n_all - n_train} rows)": dict(kd, epochs=args.student_epochs, transfer=True)}
    if args.matched:
        configs[f"KD (labelled, {matched} steps)"] = dict(kd, max_steps=matched)
    return configs


def student(store: Path, out: Path, seed: int, threads: int, **kw) -> dict:
    summary = out / "summary.json"
    if not summary.exists():
        train(TrainConfig(store=str(store), out=str(out), layers=1, seed=seed, group_by_length=True,
                          progress=False, threads=threads, device="cpu", **kw), QUIET)
    s = json.loads(summary.read_text())
    return {"val_accuracy": s["best_validation"]["accuracy"], "test_accuracy": s["test"]["accuracy"],
            "test_ece": s["test"].get("ece"), "steps": s["steps"], "train_seconds": s["train_seconds"]}


def _pm(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.4f}"


def table(results: dict[str, dict[int, dict]], teacher: dict) -> str:
    lines = ["| student (1 layer) | steps | val accuracy | test accuracy | test ECE | test accuracy per seed |",
             "|---|---|---|---|---|---|"]
    for name, by_seed in results.items():
        rs = [by_seed[s] for s in sorted(by_seed)]
        lines.append(f"| {name} | {rs[0]['steps']} | {_pm([r['val_accuracy'] for r in rs])} | "
                     f"{_pm([r['test_accuracy'] for r in rs])} | {_pm([r['test_ece'] for r in rs])} | "
                     + ", ".join(f"{r['test_accuracy']:.4f}" for r in rs) + " |")
    lines.append(f"| teacher ({teacher['checkpoint']}, tll) | - | {teacher['val_accuracy']:.4f} | "
                 f"{teacher['test_accuracy']:.4f} | {teacher['test_ece']:.4f} | - |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=3000, help="reviews taken from the corpus, split 80/10/10")
    p.add_argument("--labelled", type=float, default=0.1, help="fraction of train that keeps its labels")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--teacher-lr", type=float, default=2e-4)
    p.add_argument("--student-epochs", type=int, default=2)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-matched", dest="matched", action="store_false",
                   help="skip the step-matched KD control (the longest runs)")
    p.add_argument("--cache", type=Path, default=Path(".cache/assets"))
    p.add_argument("--work", type=Path, default=Path("runs/bench-transfer"))
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/transfer.json"))
    args = p.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    t0 = time.perf_counter()
    store, times = teacher_store(args, args.work)
    s = open_store(store)
    tll = s.select("tll")
    teacher = {"checkpoint": tll.name, "val_accuracy": tll.val_score, "test_accuracy": tll.split_scores["test"]["accuracy"],
               "test_ece": tll.split_scores["test"]["ece"]}
    seeds = [int(x) for x in args.seeds.split(",")]
    results: dict[str, dict[int, dict]] = {}
    for i, (name, kw) in enumerate(runs(args, store).items()):
        results[name] = {seed: student(store, args.work / "students" / f"c{i}-s{seed}", seed, args.threads, **kw)
                         for seed in seeds}
    names = list(results)
    with_t, ref = results[names[2]], results[names[-1] if args.matched else names[1]]
    test = paired_t_test([with_t[s]["test_accuracy"] for s in seeds], [ref[s]["test_accuracy"] for s in seeds])
    rows = {k: s.split_meta(k).rows for k in s.split_names()}
    md = table(results, teacher)
    print(f"splits: {rows}")
    print(md)
    print(f"KD + transfer vs {names[-1] if args.matched else names[1]}, test accuracy: {test.verdict()}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items() if k not in ("cache", "work")},
                                     "splits": rows, "teacher": teacher, "results": results, "times": times,
                                     f"transfer_vs_{'matched' if args.matched else 'kd'}_test": test.verdict(), "table": md,
                                     "total_seconds": round(time.perf_counter() - t0)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
