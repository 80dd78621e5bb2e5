"""Sweep benchmark on the real MiniLM-L6 teacher and real Rotten Tomatoes data.

Part ``overhead``, in one run:
  1. a grid sweep of N configurations from the store (`run_sweep`, wall seconds);
  2. the same N runs as bare `train()` calls (cached logits): the sweep machinery's
     per-configuration overhead = (sweep wall - sum of bare wall) / N, as % of training;
  3. the same N runs with online KD (PyTorch teacher on every step): total seconds and the
     online / cached ratio (runs with alpha = 0 need no teacher and are the same both ways).

Part ``executors``: the same N runs as a sweep with the local process pool (`--workers W`,
THREADS // W torch threads each) and as a sweep on a local Ray cluster of W CPUs (`--ray`,
one task of THREADS // W CPUs per run), interleaved over --rounds rounds, each round in fresh
sweep folders; the Ray cluster's start is timed apart (it is paid once per sweep command).

    python benchmarks/bench_sweep.py --examples 1000 --max-steps 30                 # overhead
    python benchmarks/bench_sweep.py --parts executors --rounds 2 --report benchmarks/results/sweep-executors.md

Prints markdown tables and writes them to --report.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: demo/ is not installed

from demo.assets import ASSETS, RT_LABELS, fetch, minilm_classifier  # noqa: E402
from demo.splits import rotten_tomatoes_splits  # noqa: E402
from logitstore.build import BuildConfig, build_store
from students.sweep import SweepConfig, load_space, run_sweep
from students.train import TrainConfig, train


def _space(layers: int):
    return load_space(None, {"distance": "ce,mse", "alpha": "0.5,0.9", "temperature": "2",
                             "student_temperature": "teacher", "teacher": "ths", "layers": str(layers), "seeds": "1"})


def overhead_part(store: Path, tmp: Path, args: argparse.Namespace) -> list[str]:
    """Sweep vs bare train() calls vs online KD (see the module docstring)."""
    space = _space(args.layers)
    template = TrainConfig(store=str(store), out=str(tmp / "unused"), max_steps=args.max_steps, progress=False)
    quiet = Console(quiet=True)
    t = time.perf_counter()
    run_sweep(SweepConfig(str(store), str(tmp / "sweep"), "grid", space, 1, template), console=quiet)
    sweep_wall = time.perf_counter() - t
    records = [json.loads(line) for line in (tmp / "sweep" / "results.jsonl").read_text().splitlines()]
    configs = [json.loads((tmp / "sweep" / "runs" / r["key"] / "run_config.json").read_text()) for r in records]
    fields = set(TrainConfig.__dataclass_fields__)
    n = len(configs)
    bare, online, cached_kd, online_kd = 0.0, 0.0, 0.0, 0.0
    for i, c in enumerate(configs):  # interleaved: bare cached run, then the same run online
        cfg = TrainConfig(**{k: v for k, v in c.items() if k in fields})
        t = time.perf_counter()
        train(replace(cfg, out=str(tmp / f"bare-{i}")), console=quiet)
        dt_cached = time.perf_counter() - t
        bare += dt_cached
        if cfg.alpha > 0:
            t = time.perf_counter()
            train(replace(cfg, out=str(tmp / f"online-{i}"), online="pytorch"), console=quiet)
            dt_online = time.perf_counter() - t
            cached_kd, online_kd, online = cached_kd + dt_cached, online_kd + dt_online, online + dt_online
        else:
            online += dt_cached
    train_s = sum(r["train_seconds"] for r in records)
    overhead = (sweep_wall - bare) / n
    return [
        f"grid of {n} runs (ce/mse x alpha 0.5/0.9 plus the Hinton, recommended and no-KD baselines).",
        "",
        "| what | seconds |",
        "|---|---:|",
        f"| sweep from the store ({n} runs, wall) | {sweep_wall:.1f} |",
        f"| the same {n} runs as bare `train()` calls (wall) | {bare:.1f} |",
        f"| sweep machinery overhead per run | {overhead:+.2f} ({100 * overhead * n / bare:+.1f}% of bare runs; "
        f"target < 5%) |",
        f"| the same {n} runs with online KD (PyTorch teacher each step) | {online:.1f} |",
        f"| online / cached, whole sweep | {online / bare:.2f}x |",
        f"| online / cached, KD runs only | {online_kd / max(cached_kd, 1e-9):.2f}x |",
        "",
        f"Student-training seconds recorded by the sweep (excluding setup and evaluation): {train_s:.1f}.",
    ]


def executors_part(store: Path, tmp: Path, args: argparse.Namespace) -> list[str]:
    """The same sweep with the local pool and on a local Ray cluster, interleaved (module docstring)."""
    import ray

    space, w = _space(args.layers), args.workers
    template = TrainConfig(store=str(store), out=str(tmp / "unused"), max_steps=args.max_steps, progress=False,
                           threads=args.threads)
    quiet = Console(quiet=True)
    root = str(Path(__file__).resolve().parents[1])  # Ray's workers import students/ as this process does
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    t = time.perf_counter()
    ray.init(address="local", num_cpus=w, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_start = time.perf_counter() - t
    walls: dict[str, list[float]] = {"pool": [], "ray": []}
    ran = 0
    for r in range(args.rounds):
        for name in ("pool", "ray") if r % 2 == 0 else ("ray", "pool"):
            cfg = SweepConfig(str(store), str(tmp / f"{name}-{r}"), "grid", space, w if name == "pool" else None,
                              template if name == "pool" else replace(template, threads=args.threads // w),
                              ray="local" if name == "ray" else None)
            t = time.perf_counter()
            ran = run_sweep(cfg, console=quiet).ran
            walls[name].append(time.perf_counter() - t)
    ray.shutdown()
    pool, ray_s = statistics.median(walls["pool"]), statistics.median(walls["ray"])
    return [
        f"The same {ran} runs (grid as above) with {w} at a time, {args.threads // w} torch thread(s) each; "
        f"median of {args.rounds} interleaved rounds (every round, s: pool "
        + ", ".join(f"{x:.1f}" for x in walls["pool"]) + "; Ray " + ", ".join(f"{x:.1f}" for x in walls["ray"])
        + ").",
        "",
        "| executor | sweep wall s | per run s | ratio |",
        "|---|---:|---:|---:|",
        f"| local pool, `--workers {w}` (spawns its processes per sweep) | {pool:.1f} | {pool / ran:.2f} | 1.00 |",
        f"| local Ray cluster of {w} CPUs, `--ray` (cluster already up) | {ray_s:.1f} | {ray_s / ran:.2f} | "
        f"**{ray_s / pool:.2f}x** |",
        f"| starting the local Ray cluster (`ray.init`, once per `--ray` command) | {ray_start:.1f} | | |",
        f"| Ray incl. its start | {ray_s + ray_start:.1f} | {(ray_s + ray_start) / ran:.2f} | "
        f"{(ray_s + ray_start) / pool:.2f}x |",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=1000, help="examples from the corpus (default 1000)")
    p.add_argument("--max-steps", type=int, default=30, help="training steps per run (default 30)")
    p.add_argument("--layers", type=int, default=1, help="student layers (default 1)")
    p.add_argument("--parts", default="overhead", help="comma-separated: overhead, executors (default overhead)")
    p.add_argument("--workers", type=int, default=2, help="executors: runs at a time (pool workers, Ray CPUs)")
    p.add_argument("--threads", type=int, default=2, help="executors: torch threads shared by the runs at a time")
    p.add_argument("--rounds", type=int, default=2, help="executors: interleaved rounds (default 2)")
    p.add_argument("--cache", type=Path, default=Path(".cache/assets"))
    p.add_argument("--report", type=Path, default=Path("benchmarks/results/sweep.md"))
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    model = fetch(ASSETS["minilm"], args.cache)
    data = rotten_tomatoes_splits(fetch(ASSETS["rotten-tomatoes"], args.cache), tmp / "rt", limit=args.examples)
    teacher = minilm_classifier(model, args.cache / "minilm-l6-rt3", RT_LABELS)
    store = tmp / "store.zarr"
    build_store(BuildConfig(teachers=(teacher,), data=str(data), out=store))
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores; MiniLM-L6 teacher, {args.layers}-layer "
             f"students, {args.examples} Rotten Tomatoes examples, {args.max_steps} steps per run."]
    parts = args.parts.split(",")
    if "overhead" in parts:
        lines += ["", *overhead_part(store, tmp, args)]
    if "executors" in parts:
        lines += ["", *executors_part(store, tmp, args)]
    text = "\n".join(lines)
    print(text)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
