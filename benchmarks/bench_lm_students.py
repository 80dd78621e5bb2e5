"""Causal-LM students (issue 12): cached vs online teacher, training steps/s, side by side.

For each student size and each way of producing a step's loss, in one run and interleaved
(the machines here are shared and noisy), run ``--steps`` training steps of `students train`
(students/lm.py: the run prepared by ``_prepare_lm``, then ``_step``, the function the
trainer calls) and time them; start-up, model loading and evaluation are not timed:

  plain        next-token CE only (alpha 0, no teacher)
  cached       KD from the store's sparse top-k targets (alpha 0.5, forward KL, bucket tail, tau 2)
  online-pt    the same KD with the PyTorch teacher run on every step (its full (B, T, V) logits,
               then the store's own top-k encoding: cached and online train the same student)
  online-onnx  the same with the exported ONNX teacher (top-k and lse inside the graph)

The store is an existing causal-LM store (``--store``, e.g. the demo's runs/lm/lm.zarr from
`bash scripts/demo.sh --task causal-lm`), or one built here from SmolLM2-135M-Instruct on
``--examples`` Rotten Tomatoes snippets. Prints a markdown table and writes it to --report.

    python benchmarks/bench_lm_students.py --store runs/lm/lm.zarr --steps 4 --rounds 2 --layers 2
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: demo/ is not installed

from demo.assets import ASSETS, fetch, smollm2_checkpoint  # noqa: E402
from demo.splits import rotten_tomatoes_splits  # noqa: E402
from logitstore import open_store  # noqa: E402
from logitstore.build import BuildConfig, build_store  # noqa: E402
from rich.console import Console  # noqa: E402

from students.lm import _prepare_lm, _step  # noqa: E402
from students.train import TrainConfig, _optimizer  # noqa: E402

MODES = {  # name -> (alpha, online)
    "plain": (0.0, None),
    "cached": (0.5, None),
    "online-pt": (0.5, "pytorch"),
    "online-onnx": (0.5, "onnx"),
}


def _store(args: argparse.Namespace, tmp: Path) -> Path:
    if args.store is not None:
        return args.store
    cache = args.cache
    data = rotten_tomatoes_splits(fetch(ASSETS["rotten-tomatoes"], cache), cache / f"rotten-tomatoes-{args.examples}-s0",
                                  limit=args.examples)
    out = tmp / "lm.zarr"
    build_store(BuildConfig(teachers=(smollm2_checkpoint(cache),), data=str(data), out=out, task="causal-lm",
                            top_k=50, temperatures=(1.0, 2.0), max_length=args.max_length))
    return out


def _steps_per_s(config: TrainConfig) -> float:
    """Training steps per second of ``config.max_steps`` steps of a causal-LM run."""
    run = _prepare_lm(config, Console(quiet=True))
    opt, sched = _optimizer(run.student, config.optim, config.max_steps)
    batches = iter(run.train_batches.epoch(0))
    started = time.perf_counter()
    for _ in range(config.max_steps):
        _step(run, next(batches).to(run.device), config, opt, sched)
    return config.max_steps / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=None, help="an existing causal-LM store (default: build one)")
    p.add_argument("--examples", type=int, default=200, help="snippets when building the store (default 200)")
    p.add_argument("--max-length", type=int, default=32, help="block length when building the store (default 32)")
    p.add_argument("--steps", type=int, default=8, help="training steps per measurement (default 8)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the median is reported (default 2)")
    p.add_argument("--layers", default="2", help="student sizes (default 2)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cache", type=Path, default=Path(".cache/assets"))
    p.add_argument("--report", type=Path, default=Path("benchmarks/results/lm_students.md"))
    args = p.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    layers = [int(k) for k in args.layers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-lm-students-"))
    store = _store(args, tmp)
    meta = open_store(store).meta
    common = dict(store=str(store), max_steps=args.steps, batch_size=args.batch_size, eval_batch_size=32,
                  temperature=2.0, distance="ce", tail="bucket", teacher="tll", warmup_ratio=0.0, device="cpu",
                  progress=False)
    _steps_per_s(TrainConfig(out=str(tmp / "warm-up"), layers=layers[0], **{**common, "max_steps": 2}))  # untimed
    rates: dict[tuple[int, str], list[float]] = {}
    for r in range(args.rounds):
        for k in layers:
            for mode, (alpha, online) in MODES.items():
                cfg = TrainConfig(out=str(tmp / f"run-{k}-{mode}"), alpha=alpha, online=online, layers=k, seed=r,
                                  **common)
                rates.setdefault((k, mode), []).append(_steps_per_s(cfg))
                print(f"round {r + 1} L{k} {mode}: {rates[k, mode][-1]:.3f} steps/s", flush=True)
    med = {key: statistics.median(v) for key, v in rates.items()}
    tokens = args.batch_size * int(open_store(store).split_meta("train").tokens
                                   / max(open_store(store).split_meta("train").rows, 1))
    lines = [
        f"Causal-LM student training, steps/s (median of {args.rounds} interleaved rounds of {args.steps} steps; batch "
        f"{args.batch_size} blocks, ~{tokens} tokens/step; teacher SmolLM2-135M-Instruct, top-{meta.top_k} of "
        f"{meta.vocab_size:,}; {platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, no GPU)",
        "",
        "| student | plain | cached KD | cached/plain | online PyTorch | online ONNX | cached/online-pt | "
        "cached/online-onnx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in layers:
        plain, cached, opt, onx = (med[k, m] for m in MODES)
        lines.append(f"| {k} layers | {plain:.3f} | {cached:.3f} | {cached / plain:.2f} | {opt:.3f} | {onx:.3f} | "
                     f"{cached / opt:.2f} | {cached / onx:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)


if __name__ == "__main__":
    main()
