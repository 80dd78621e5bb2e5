"""Streaming a student's batches from a store on S3 vs a local folder (issue 13).

The same store (the real MiniLM-L6 teacher with a fresh 3-label head over real Rotten
Tomatoes snippets, fp16, small chunks so that a run reads many of them) in a local folder
and on a real S3 endpoint started on 127.0.0.1 (moto's server, `moto[server]`; the store's
objects are copied there byte for byte). The same 1-layer student is trained, interleaved,
four ways for each store location:

  plain             fine-tuning on the gold labels (alpha 0: no logits read)
  cached            KD from the store's logits, streamed (loader "stream"), the next
                    chunk group read in a background thread (students/data.py)
  cached-no-prefetch the same, each chunk group read when it is needed (the loader before
                    issue 13), to show what the prefetch hides

and reports examples/s over the training steps (start-up and evaluation excluded) and the
cached / plain ratio per location (target >= 0.95, design.md). The endpoint is local, so a
read costs a loopback round trip (~5 ms per request here), not a data centre's (~10-50 ms).

    python benchmarks/bench_s3.py --examples 2000 --steps 40 --rounds 3
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: demo/ is not installed

from demo.assets import ASSETS, RT_LABELS, fetch, minilm_classifier  # noqa: E402
from demo.splits import rotten_tomatoes_splits  # noqa: E402
from logitstore.build import BuildConfig, build_store  # noqa: E402
from students.data import SplitBatches  # noqa: E402
from students.train import TrainConfig, train  # noqa: E402

BUCKET = "logitstore-bench"
MODES = {"plain": 0.0, "cached": 0.5, "cached-no-prefetch": 0.5}  # name -> alpha


def start_endpoint() -> str:
    """A moto S3 server on 127.0.0.1 with one bucket; the environment points boto at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    import fsspec

    fsspec.filesystem("s3").mkdir(BUCKET)
    return f"http://{host}:{port}"


def copy_to_s3(local: Path) -> str:
    """Upload every file of the local store to s3://BUCKET/<name> (the same bytes) and return the URL."""
    import fsspec

    fs = fsspec.filesystem("s3")
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.pipe_file(f"{BUCKET}/{local.name}/{path.relative_to(local).as_posix()}", path.read_bytes())
    return f"s3://{BUCKET}/{local.name}"


def _sequential(self: SplitBatches, groups: list[np.ndarray]) -> Iterator[tuple[np.ndarray, object]]:
    """The loader without prefetch: each group's logits read when the group is reached."""
    for rows in groups:
        yield rows, self._buffer_logits(rows) if self.read_logits else None


def run(store: str, mode: str, args: argparse.Namespace, out: Path, seed: int) -> float:
    cfg = TrainConfig(store=store, out=str(out), alpha=MODES[mode], layers=args.layers, max_steps=args.steps,
                      batch_size=args.batch_size, device="cpu", warmup_ratio=0.0, seed=seed, progress=False,
                      loader="stream", buffer_chunks=args.buffer_chunks)
    prefetching = SplitBatches._with_logits
    if mode == "cached-no-prefetch":
        SplitBatches._with_logits = _sequential  # type: ignore[method-assign]
    try:
        return train(cfg).examples_per_s
    finally:
        SplitBatches._with_logits = prefetching  # type: ignore[method-assign]


def read_ms(store: str, args: argparse.Namespace) -> tuple[float, int]:
    """Milliseconds to read one shuffle buffer's logits (``buffer_chunks`` whole chunks) from
    ``store``, mean over every buffer of the training split's epoch 0, with no training; and
    the batches each buffer feeds."""
    from logitstore import open_store
    from students.config import LoaderConfig

    st = open_store(store)
    split = st.read_split("train")
    loader = LoaderConfig(batch_size=args.batch_size, mode="stream", buffer_chunks=args.buffer_chunks)
    batches = SplitBatches(st, split, st.checkpoint_names()[0], loader)
    groups = batches._chunk_groups(0)
    started = time.perf_counter()
    for rows in groups:
        batches._buffer_logits(rows)
    return 1000 * (time.perf_counter() - started) / len(groups), len(groups[0]) // args.batch_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=2000, help="examples taken from the corpus (default 2000)")
    p.add_argument("--steps", type=int, default=40, help="training steps per measurement (default 40)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the median is reported (default 3)")
    p.add_argument("--layers", type=int, default=1, help="student layers (default 1: the fastest step, the hardest case)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-rows", type=int, default=64, help="rows per logits chunk (default 64: many reads)")
    p.add_argument("--buffer-chunks", type=int, default=2, help="chunks per shuffle buffer (default 2)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--cache", type=Path, default=Path(".cache/assets"))
    p.add_argument("--report", type=Path, default=Path("benchmarks/results/s3.md"))
    args = p.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    tmp = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    model_dir = fetch(ASSETS["minilm"], args.cache)
    data = rotten_tomatoes_splits(fetch(ASSETS["rotten-tomatoes"], args.cache),
                                  args.cache / f"rotten-tomatoes-{args.examples}-s0", limit=args.examples)
    teacher = minilm_classifier(model_dir, args.cache / "minilm-l6-rt3", RT_LABELS)
    local = tmp / "store.zarr"
    build_store(BuildConfig(teachers=(teacher,), data=str(data), out=local, max_length=args.max_length,
                            chunk_rows=args.chunk_rows))
    endpoint = start_endpoint()
    stores = {"local folder": str(local), "S3 endpoint": copy_to_s3(local)}

    reads = {where: read_ms(store, args) for where, store in stores.items()}
    for where, (ms, per) in reads.items():
        print(f"{where}: {ms:.1f} ms to read one buffer of {args.buffer_chunks} chunks ({per} batches)", flush=True)
    if args.rounds < 1:
        return
    run(stores["S3 endpoint"], "cached", argparse.Namespace(**{**vars(args), "steps": 3}), tmp / "warm-up", 0)
    rates: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for where, store in stores.items():
            for mode in MODES:
                rate = run(store, mode, args, tmp / f"run-{r}-{mode}", seed=r)
                rates.setdefault((where, mode), []).append(rate)
                print(f"round {r + 1} {where} {mode}: {rate:.1f} ex/s", flush=True)

    med = {key: statistics.median(v) for key, v in rates.items()}
    lines = [f"Student training throughput, examples/s: median of {args.rounds} interleaved rounds of {args.steps} "
             f"steps, batch {args.batch_size}, {args.layers}-layer student, max length {args.max_length}, logits "
             f"streamed in chunks of {args.chunk_rows} rows, {args.buffer_chunks} chunks per buffer "
             f"({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, CPU; "
             f"S3 endpoint {endpoint})", "",
             "| store | plain | cached KD | cached / plain | cached KD, no prefetch | no prefetch / plain |",
             "|---|---|---|---|---|---|"]
    for where in stores:
        plain, cached, seq = (med[where, m] for m in MODES)
        lines.append(f"| {where} | {plain:.1f} | {cached:.1f} | {cached / plain:.2f} | {seq:.1f} | {seq / plain:.2f} |")
    lines += ["", "Reading alone (no training): ms per buffer of logits chunks, mean over an epoch; "
              "a plain training step takes 1000 * batch / (plain ex/s) ms", "",
              "| store | ms per buffer | batches per buffer | plain step ms |", "|---|---|---|---|"]
    for where, (ms, per) in reads.items():
        lines.append(f"| {where} | {ms:.1f} | {per} | {1000 * args.batch_size / med[where, 'plain']:.0f} |")
    lines += ["", "Every round (ex/s): " + "; ".join(
        f"{where} {mode} " + ", ".join(f"{x:.1f}" for x in rates[where, mode]) for where, mode in rates)]
    lines += ["", "    python benchmarks/bench_s3.py " + " ".join(
        f"--{k} {v}" for k, v in (("examples", args.examples), ("steps", args.steps), ("rounds", args.rounds),
                                  ("layers", args.layers), ("chunk-rows", args.chunk_rows),
                                  ("buffer-chunks", args.buffer_chunks)))]
    table = "\n".join(lines) + "\n"
    print(table)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(table)


if __name__ == "__main__":
    main()
