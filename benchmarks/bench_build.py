"""Teacher-side benchmark on the real MiniLM-L6 teacher and real Rotten Tomatoes data.

Measures, in one run and interleaved (machines here are noisy, ~25%):
  1. ONNX Runtime vs PyTorch eager examples/s on the same length-bucketed batches;
  2. length-bucketed batching vs padding every batch to the max length (ONNX Runtime);
  3. `logitstore build` examples/s and bytes per stored logit for fp16 / fp32 / int8.

    python benchmarks/bench_build.py --examples 2000 --rounds 3

Prints a markdown table (paste into docs/benchmarks.md) and writes it to --report.
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: demo/ is not installed

from demo.assets import ASSETS, RT_LABELS, fetch, minilm_classifier  # noqa: E402
from demo.splits import rotten_tomatoes_splits  # noqa: E402
from logitstore.build import BuildConfig, build_store
from logitstore.export import export_checkpoint, load_model
from logitstore.tasks import get_task
from logitstore.infer import infer_rows, make_session, pad_batch
from logitstore.store import open_store


def torch_rows(model, split, rows, pad_id, budget, names) -> np.ndarray:
    from logitstore.infer import plan_batches

    out = np.empty((len(rows), model.config.num_labels), dtype=np.float32)
    lengths = split.lengths[rows]
    with torch.inference_mode():
        for b in plan_batches(lengths, budget):
            feed = pad_batch(split.input_ids, split.offsets, None, rows[b], pad_id, names)
            out[b] = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    return out


def padded_rows(session, split, rows, pad_id, batch, max_len) -> np.ndarray:
    out = []
    for s in range(0, len(rows), batch):
        feed = pad_batch(split.input_ids, split.offsets, None, rows[s:s + batch], pad_id, session.input_names)
        width = feed["input_ids"].shape[1]
        feed = {k: np.pad(v, ((0, 0), (0, max_len - width))) for k, v in feed.items()}  # pad to max length
        out.append(session.run(feed))
    return np.concatenate(out)


def timed(fn) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    res = fn()
    return time.perf_counter() - t, res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=2000, help="rows timed in parts 1-2 (default 2000)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--token-budget", type=int, default=16384)
    p.add_argument("--pad-batch", type=int, default=64, help="batch size of the pad-to-max baseline")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--cache", type=Path, default=Path(".cache/assets"))
    p.add_argument("--report", type=Path, default=Path("benchmarks/results/build.md"))
    args = p.parse_args()
    threads = torch.get_num_threads()

    model_dir = fetch(ASSETS["minilm"], args.cache)
    data = rotten_tomatoes_splits(fetch(ASSETS["rotten-tomatoes"], args.cache), args.cache / "rotten-tomatoes-all-s0")
    teacher = minilm_classifier(model_dir, args.cache / "minilm-l6-rt3", RT_LABELS)

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    results: dict[str, dict[str, float]] = {}
    for enc in ("fp16", "fp32", "int8"):  # 3. full builds over all splits
        out = tmp / f"{enc}.zarr"
        t, res = timed(lambda: build_store(BuildConfig(teachers=(teacher,), data=str(data), out=out, encoding=enc,
                                                        max_length=args.max_length, token_budget=args.token_budget)))
        store = open_store(out)
        rows = sum(store.split_meta(s).rows for s in store.split_names())
        c = store.checkpoint(store.checkpoint_names()[0])
        results[enc] = {"seconds": t, "rows": rows, "ex_s": rows / c.build_seconds,
                        "bytes_per_logit": store.nbytes_on_disk(f"checkpoints/{c.name}") / (rows * c.num_labels),
                        "err": c.encode_max_abs_err or 0.0}

    store = open_store(tmp / "fp32.zarr")
    split = store.read_split("train")
    rows = np.arange(min(args.examples, len(split)))
    names = tuple(store.meta.input_names)
    exp = export_checkpoint(teacher)
    session = make_session(exp.onnx_path, "cpu", threads)
    model = load_model(teacher, get_task("classification"))
    pad = store.meta.pad_token_id
    t_ort, t_pt, t_pad = [], [], []
    for _ in range(args.rounds):  # 1-2. interleaved
        dt, a = timed(lambda: infer_rows(session, split.input_ids, split.offsets, None, rows, pad, args.token_budget))
        t_ort.append(dt)
        dt, b = timed(lambda: torch_rows(model, split, rows, pad, args.token_budget, names))
        t_pt.append(dt)
        dt, c = timed(lambda: padded_rows(session, split, rows, pad, args.pad_batch, args.max_length))
        t_pad.append(dt)
    err = float(max(np.abs(a - b).max(), np.abs(a - c).max()))
    ort_s, pt_s, pad_s = (statistics.median(x) for x in (t_ort, t_pt, t_pad))
    n = len(rows)
    mean_len = float(split.lengths[rows].mean())
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch threads {threads}, ORT intra-op threads "
        f"{threads}; MiniLM-L6 (22.7M params) 3-label head; Rotten Tomatoes, {n} train rows, mean "
        f"{mean_len:.1f} tokens, max length {args.max_length}; median of {args.rounds} interleaved rounds.",
        "",
        "| teacher pass | examples/s | ratio |",
        "|---|---:|---:|",
        f"| PyTorch eager, length-bucketed (budget {args.token_budget} tokens) | {n / pt_s:,.0f} | 1.00 |",
        f"| ONNX Runtime, length-bucketed | {n / ort_s:,.0f} | {pt_s / ort_s:.2f}x PyTorch |",
        f"| ONNX Runtime, batches of {args.pad_batch} padded to {args.max_length} | {n / pad_s:,.0f} | "
        f"bucketing = {pad_s / ort_s:.2f}x this |",
        "",
        f"Max |logit difference| between the three: {err:.1e}.",
        "",
        "| storage | build examples/s (all splits, incl. export) | bytes per stored logit | max abs error |",
        "|---|---:|---:|---:|",
    ]
    for enc, r in results.items():
        lines.append(f"| {enc} | {r['ex_s']:,.0f} ({int(r['rows']):,} rows) | {r['bytes_per_logit']:.2f} | {r['err']:.1e} |")
    text = "\n".join(lines)
    print(text)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
