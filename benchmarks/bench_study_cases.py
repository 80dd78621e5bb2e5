"""How busy a study keeps its workers: `students study` with its cases one after another
(`--parallel-cases 1`, the default) against K cases at once on the same pool.

What is measured is the scheduling, not training: every run is a synthetic one that sleeps
for a fixed time (UNIT x 0.6, 1.0 or 1.4 by its run key, standing in for runs that stop
early or late) and returns a deterministic validation score, so the greedy search takes the
same stages in every configuration. Each configuration runs the same study (STORES fake
stores x sizes 1, 2; 3 seeds; the shipped study's reduced space: distance, teacher and
tau_s searched) in a fresh folder through the real `run_study`, with a real spawned process
pool of --workers processes. Reported per K: wall seconds, the sum of the runs' own seconds,
the workers' utilisation (sum / (wall x workers)) and the speed-up over K = 1. The pool
start (spawned processes importing torch) is inside the wall time, as a user pays it: once
per case with K = 1 (each sweep makes its own pool), once per study with K > 1.

    python benchmarks/bench_study_cases.py --workers 4 --unit 2 --report benchmarks/results/study-cases.md
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from students.study import load_study, run_study  # noqa: E402
from students.sweep import RunOutcome  # noqa: E402
from students.train import TrainConfig  # noqa: E402

UNIT = float(os.environ.get("BENCH_UNIT", "2.0"))  # seconds of a synthetic run (x 0.6 / 1.0 / 1.4); set by main


def synthetic_run(config: TrainConfig) -> RunOutcome:
    """Sleep UNIT x (0.6, 1.0 or 1.4, by the run key), then a score that prefers CE, tll and tau_s = 1."""
    key = Path(config.out).name
    time.sleep(UNIT * (0.6, 1.0, 1.4)[int(hashlib.sha256(key.encode()).hexdigest(), 16) % 3])
    val = (0.7 + 0.02 * (config.teacher == "tll") + 0.01 * (config.student_temperature == "1")
           - 0.03 * (config.distance == "mse") + 0.01 * config.alpha + 0.001 * config.seed)
    return RunOutcome("accuracy", val, val, config.teacher, UNIT, 1, 1)


def _study_file(folder: Path, stores: int) -> Path:
    entries = "".join(f'\n[[stores]]\nname = "s{i}"\npath = "s{i}.zarr"\n' for i in range(stores))
    text = f"""out = "{folder / 'study'}"
sizes = [1, 2]
seeds = 3
save_models = "none"
[space]
distance = ["ce", "mse"]
teacher = ["ths", "tll"]
student_temperature = ["teacher", 1]
temperature = [2]
alpha = [0.5]
{entries}"""
    path = folder / "study.toml"
    path.write_text(text)
    return path


def one(k: int, workers: int, stores: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-study-cases-") as tmp:
        study = load_study(_study_file(Path(tmp), stores), {"workers": workers, "parallel_cases": k},
                           check_stores=False)
        t = time.perf_counter()
        run_study(study, run_fn=synthetic_run, check_store=False, console=Console(file=io.StringIO()))
        wall = time.perf_counter() - t
        runs = [json.loads(line) for c in study.cases
                for line in (Path(c.sweep.out) / "results.jsonl").read_text().splitlines()]
        trained = [r for r in runs if "same_run_as" not in r]
        busy = sum(r["run_seconds"] for r in trained)
        return {"parallel_cases": k, "cases": len(study.cases), "runs": len(trained), "wall_s": wall,
                "run_s": busy, "utilisation": busy / (wall * workers),
                "outcomes": [json.loads((Path(c.sweep.out) / "sweep.json").read_text())["outcomes"]
                             for c in study.cases]}


def main() -> None:
    global UNIT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--stores", type=int, default=3)
    ap.add_argument("--unit", type=float, default=2.0, help="seconds of a synthetic run (x 0.6 / 1.0 / 1.4)")
    ap.add_argument("--cases", default="1,2,3,6", help="the values of --parallel-cases to compare")
    ap.add_argument("--report", default=None)
    args = ap.parse_args()
    UNIT = args.unit
    os.environ["BENCH_UNIT"] = str(args.unit)  # the spawned workers read it when they import this module
    rows = [one(int(k), args.workers, args.stores) for k in args.cases.split(",")]
    same = all(r["outcomes"] == rows[0]["outcomes"] for r in rows)
    base = rows[0]["wall_s"]
    lines = [f"Study scheduling: {args.stores} stores x 2 sizes, 3 seeds, synthetic runs of {args.unit:g} s x "
             f"(0.6, 1.0, 1.4), --workers {args.workers}; {platform.machine()}, {os.cpu_count()} CPUs, "
             f"load {os.getloadavg()[0]:.2f} at the end. Same greedy outcomes in every row: {same}.", "",
             "| --parallel-cases | cases | runs trained | wall s | sum of run s | worker utilisation | speed-up |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['parallel_cases']} | {r['cases']} | {r['runs']} | {r['wall_s']:.1f} | {r['run_s']:.1f} | "
              f"{r['utilisation']:.0%} | {base / r['wall_s']:.2f}x |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.report:
        Path(args.report).write_text(text)


if __name__ == "__main__":
    main()
