"""`logitstore build` in one process vs on Ray actors (issue 13): the overhead of Ray per block.

The real MiniLM-L6 teacher (a seeded 3-label head) over real Rotten Tomatoes snippets, the
same data and settings three ways, interleaved in each round, each into a new store:

  1 process     the single-process build, ONNX Runtime on --threads threads
  Ray, 1 actor  `--ray --actors 1`: the same work on one actor of --threads threads
  Ray, 2 actors `--ray --actors 2`: two such actors

``--teacher tiny`` swaps MiniLM for a 2-layer, 32-wide random BERT with MiniLM's tokenizer,
so that a block computes in milliseconds and Ray's own cost per block (sending the block to
an actor, its result back, the driver's metadata write) is what the difference shows.

The local Ray cluster (``ray.init(num_cpus=...)``) is started once, before the rounds, and its
start-up is reported on its own. Timed per build: the block phase (``fill_blocks``: every
split's blocks computed, written and recorded; for Ray including starting the actors, which
each open an ONNX Runtime session, reported too) and the whole build (tokenizing, export from
the cache, scores). The Ray overhead per block is (Ray 1 actor - 1 process) block-phase time,
less the actors' start-up, divided by the number of blocks, within each round; medians of the rounds.

    python benchmarks/bench_ray_build.py --examples 1000 --chunk-rows 128 --rounds 3 --worker-niceness 0
    python benchmarks/bench_ray_build.py --teacher tiny --examples 3000 --chunk-rows 32 --rounds 3 --worker-niceness 0
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: demo/ is not installed

from demo.assets import ASSETS, RT_LABELS, fetch, minilm_classifier  # noqa: E402
from logitstore import build as build_module  # noqa: E402
from logitstore import ray_build  # noqa: E402
from logitstore.build import BuildConfig, build_store  # noqa: E402
from logitstore.store import open_store  # noqa: E402

MODES = {"1 process": None, "Ray, 1 actor": 1, "Ray, 2 actors": 2}  # name -> actors


class Timers:
    """Wall time spent in fill_blocks and in starting actor pools, per build."""

    def __init__(self) -> None:
        self.fill = self.start = 0.0
        fill, init = build_module.fill_blocks, ray_build.ActorPool.__init__

        def timed_fill(*a, **kw):
            t = time.perf_counter()
            try:
                return fill(*a, **kw)
            finally:
                self.fill += time.perf_counter() - t

        def timed_init(pool, *a, **kw):
            t = time.perf_counter()
            try:
                return init(pool, *a, **kw)
            finally:
                self.start += time.perf_counter() - t

        build_module.fill_blocks = timed_fill
        ray_build.ActorPool.__init__ = timed_init  # type: ignore[method-assign]


def tiny_teacher(model_dir: Path, out: Path) -> Path:
    """A 2-layer, 32-wide random BERT classifier over RT_LABELS with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=len(RT_LABELS), id2label=dict(enumerate(RT_LABELS)),
                     label2id={n: i for i, n in enumerate(RT_LABELS)})
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run(args: argparse.Namespace, teacher: Path, data: Path, out: Path, actors: int | None, timers: Timers) -> dict:
    timers.fill = timers.start = 0.0
    cfg = BuildConfig(teachers=(teacher,), data=str(data), out=out, max_length=args.max_length,
                      chunk_rows=args.chunk_rows, threads=args.threads, ray="local" if actors else None,
                      actors=actors)
    t = time.perf_counter()
    build_store(cfg)
    total = time.perf_counter() - t
    store = open_store(out)
    blocks = sum(-(-store.split_meta(s).rows // args.chunk_rows) for s in store.split_names())
    rows = sum(store.split_meta(s).rows for s in store.split_names())
    return {"total": total, "fill": timers.fill, "start": timers.start, "blocks": blocks, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", choices=["minilm", "tiny"], default="minilm",
                   help="minilm: the real MiniLM-L6 (default); tiny: a 2-layer 32-wide BERT (Ray's cost per block)")
    p.add_argument("--examples", type=int, default=1500, help="examples taken from the corpus (default 1500)")
    p.add_argument("--chunk-rows", type=int, default=128, help="rows per block (default 128: many blocks)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per process / actor (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the median is reported")
    p.add_argument("--worker-niceness", type=int, default=None,
                   help="nice value of the Ray workers (RAY_worker_niceness; Ray's default is 15, which on a "
                        "machine shared with other busy processes gives the actors less CPU than the 1-process build)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--cache", type=Path, default=Path(".cache/assets"))
    p.add_argument("--report", type=Path, default=Path("benchmarks/results/ray_build.md"))
    args = p.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import ray

    from demo.splits import rotten_tomatoes_splits

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-build-"))
    model_dir = fetch(ASSETS["minilm"], args.cache)
    data = rotten_tomatoes_splits(fetch(ASSETS["rotten-tomatoes"], args.cache),
                                  args.cache / f"rotten-tomatoes-{args.examples}-s0", limit=args.examples)
    teacher = (tiny_teacher(model_dir, args.cache / "tiny-bert-rt3") if args.teacher == "tiny"
               else minilm_classifier(model_dir, args.cache / "minilm-l6-rt3", RT_LABELS))
    timers = Timers()
    run(args, teacher, data, tmp / "warm-up.zarr", None, timers)  # the ONNX export, cached for every build
    # the workers import this checkout, as the driver does
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH")]))
    if args.worker_niceness is not None:
        os.environ["RAY_worker_niceness"] = str(args.worker_niceness)
    t = time.perf_counter()
    ray.init(num_cpus=2 * args.threads, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_start = time.perf_counter() - t
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode, actors in MODES.items():
            res = run(args, teacher, data, tmp / f"{r}-{actors or 0}.zarr", actors, timers)
            results[mode].append(res)
            print(f"round {r + 1} {mode}: blocks {res['fill']:.1f} s (actor start {res['start']:.1f} s), "
                  f"build {res['total']:.1f} s", flush=True)
    ray.shutdown()
    print(report(args, results, ray_start))


def report(args: argparse.Namespace, results: dict[str, list[dict]], ray_start: float) -> str:
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("total", "fill", "start")} for m, rs in results.items()}
    blocks, rows = results["1 process"][0]["blocks"], results["1 process"][0]["rows"]
    base = med["1 process"]["fill"]
    lines = [f"`logitstore build`, {rows:,} rows in {blocks} blocks of {args.chunk_rows} rows (all splits), "
             f"{'a tiny 2-layer 32-wide BERT' if args.teacher == 'tiny' else 'real MiniLM-L6'}, max length {args.max_length}, {args.threads} ONNX Runtime thread(s) per process/actor; "
             f"median of {args.rounds} interleaved rounds ({platform.machine()}, {os.cpu_count()} cores, CPU). "
             f"Ray workers at nice {15 if args.worker_niceness is None else args.worker_niceness}. "
             f"Local Ray cluster start: {ray_start:.1f} s (once).", "",
             "| build | block phase s | of which actor start s | ex/s in the block phase | vs 1 process | whole build s |",
             "|---|---:|---:|---:|---:|---:|"]
    for mode, m in med.items():
        lines.append(f"| {mode} | {m['fill']:.1f} | {m['start']:.1f} | {rows / m['fill']:.0f} | "
                     f"{base / m['fill']:.2f}x | {m['total']:.1f} |")
    one = med["Ray, 1 actor"]
    per_block = statistics.median((r["fill"] - r["start"] - s["fill"]) / blocks  # paired within each round
                                  for r, s in zip(results["Ray, 1 actor"], results["1 process"]))
    lines += ["", f"Ray overhead per block (1 actor vs 1 process in the same round, actor start excluded; median of "
              f"the rounds): {1000 * per_block:.0f} ms "
              f"(a block computes in {1000 * base / blocks:.0f} ms here); actor start-up: {one['start']:.1f} s per "
              "checkpoint.", "",
              "Every round, block phase s: " + "; ".join(f"{m} " + ", ".join(f"{r['fill']:.1f}" for r in rs)
                                                         for m, rs in results.items()), "",
              f"    python benchmarks/bench_ray_build.py --teacher {args.teacher} --examples {args.examples} --chunk-rows {args.chunk_rows} "
              f"--threads {args.threads} --rounds {args.rounds}"
              + ("" if args.worker_niceness is None else f" --worker-niceness {args.worker_niceness}")]
    table = "\n".join(lines) + "\n"
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(table)
    return table


if __name__ == "__main__":
    main()
