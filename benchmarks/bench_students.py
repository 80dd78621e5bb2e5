"""Student-side benchmark on the real MiniLM-L6 teacher and real Rotten Tomatoes data.

Measures training throughput (examples/s over the training steps only; evaluation and
start-up excluded) of 1-, 2- and 3-layer students, in one run and interleaved (machines
here are noisy, ~25%), for four ways of producing each step's loss:

  plain        fine-tuning on the gold labels (alpha 0, no teacher at all)
  cached       KD from the store's logits (alpha 0.5, CE distance, tau 2)
  online-pt    the same KD with the PyTorch teacher run on every step
  online-onnx  the same KD with the exported ONNX teacher run on every step

Targets (design.md): cached >= 0.95x plain; cached/online (the speed-up of the cache over
running the teacher in the loop) is reported per student size.

    python benchmarks/bench_students.py --examples 2000 --steps 40 --rounds 2

Prints a markdown table (paste into docs/benchmarks.md) and writes it to --report. The
teacher is the pretrained MiniLM-L6 with a fresh 3-label head (logitstore.assets): its
accuracy is irrelevant to throughput.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from logitstore.assets import ASSETS, RT_LABELS, fetch, minilm_classifier, rotten_tomatoes_splits
from logitstore.build import BuildConfig, build_store
from students.train import TrainConfig, train

MODES = {  # name -> (alpha, online)
    "plain": (0.0, None),
    "cached": (0.5, None),
    "online-pt": (0.5, "pytorch"),
    "online-onnx": (0.5, "onnx"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=2000, help="examples taken from the corpus (default 2000)")
    p.add_argument("--steps", type=int, default=40, help="training steps per measurement (default 40)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the median is reported (default 2)")
    p.add_argument("--layers", default="1,2,3", help="student sizes (default 1,2,3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", type=Path, default=Path(".cache/assets"))
    p.add_argument("--store", type=Path, default=None, help="reuse this store instead of building one")
    p.add_argument("--report", type=Path, default=Path("benchmarks/results/students.md"))
    args = p.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    layers = [int(k) for k in args.layers.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-students-"))
    store = args.store
    if store is None:
        model_dir = fetch(ASSETS["minilm"], args.cache)
        data = rotten_tomatoes_splits(fetch(ASSETS["rotten-tomatoes"], args.cache),
                                      args.cache / f"rotten-tomatoes-{args.examples}-s0", limit=args.examples)
        teacher = minilm_classifier(model_dir, args.cache / "minilm-l6-rt3", RT_LABELS)
        store = tmp / "store.zarr"
        build_store(BuildConfig(teachers=(teacher,), data=str(data), out=store, max_length=args.max_length))

    # One short untimed run first, so allocator and thread-pool start-up fall on no measurement.
    train(TrainConfig(store=str(store), out=str(tmp / "warm-up"), layers=layers[0], max_steps=3,
                      batch_size=args.batch_size, device=args.device, progress=False))
    rates: dict[tuple[int, str], list[float]] = {}
    for r in range(args.rounds):
        for k in layers:
            for mode, (alpha, online) in MODES.items():
                cfg = TrainConfig(store=str(store), out=str(tmp / f"run-{k}-{mode}"), alpha=alpha, online=online,
                                  layers=k, max_steps=args.steps, batch_size=args.batch_size, device=args.device,
                                  warmup_ratio=0.0, seed=r, progress=False)
                res = train(cfg)
                rates.setdefault((k, mode), []).append(res.examples_per_s)
                print(f"round {r + 1} K={k} {mode}: {res.examples_per_s:.1f} ex/s")

    med = {key: statistics.median(v) for key, v in rates.items()}
    lines = [
        f"Student training throughput, examples/s (median of {args.rounds} interleaved rounds of {args.steps} steps, "
        f"batch {args.batch_size}, max length {args.max_length}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {args.device})",
        "",
        "| student | plain | cached KD | cached/plain | online PyTorch | online ONNX | cached/online-pt | cached/online-onnx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in layers:
        plain, cached, opt, onx = (med[k, m] for m in MODES)
        lines.append(f"| {k} layer{'s' if k > 1 else ''} | {plain:.1f} | {cached:.1f} | {cached / plain:.2f} | "
                     f"{opt:.1f} | {onx:.1f} | {cached / opt:.2f} | {cached / onx:.2f} |")
    lines += ["", "    python benchmarks/bench_students.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("examples", args.examples), ("steps", args.steps),
                                                    ("rounds", args.rounds), ("layers", args.layers)))]
    table = "\n".join(lines) + "\n"
    print(table)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(table)


if __name__ == "__main__":
    main()
