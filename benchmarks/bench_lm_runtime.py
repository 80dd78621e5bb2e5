"""Causal-LM teacher runtimes side by side (issue 12): build tokens/s of the exported ONNX graph
(top-k and log-sum-exp inside the graph, ONNX Runtime CPU) against PyTorch eager + torch.topk
(`logitstore build --runtime torch`), on the same rows, in one run.

Teacher: the real SmolLM2-135M-Instruct (demo.assets.smollm2_checkpoint; the `lm` extra
converts it once). Text: Rotten Tomatoes validation snippets packed as the build packs them.
Both runtimes run the build's own block code (CausalLM.run_rows: batches by --token-budget,
every graph output, back to numpy) on the same threads; the order alternates over --repeats
rounds and the best round of each counts (the machine is shared). The ONNX export (and its
parity check) is timed apart: a build pays it once per checkpoint, and the export cache
keeps it. Also reported: agreement of the two runtimes' outputs.

    python benchmarks/bench_lm_runtime.py --tokens 1024 --max-length 256 --threads 2
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # root, benchmarks/

from bench_lm_topk import packed_rows  # noqa: E402
from demo.assets import smollm2_checkpoint  # noqa: E402
from logitstore.store import SplitData  # noqa: E402
from logitstore.tasks import get_task  # noqa: E402


def lm_task(name: str, k: int, sample: int, vocab: int) -> object:
    """The build's task with its store settings (top-k K, or N draws), lse at tau = 1."""
    task = copy.copy(get_task(name))
    task.top_k, task.sample, task.temperatures, task.vocab_size = k, sample, (1.0,), vocab
    return task


def sessions(model_dir: Path, task: object, rows: np.ndarray, threads: int) -> tuple[dict[str, object], float, bool]:
    """{"onnx": session, "torch": session} for ``task``, the export's seconds (parity included)
    and whether the export cache held it already."""
    from logitstore.export import export_checkpoint
    from logitstore.runtime import make_session
    from logitstore.torch_runtime import torch_session

    sample = [{"input_ids": rows[:2], "attention_mask": np.ones_like(rows[:2])}]
    tick = time.perf_counter()
    exp = export_checkpoint(model_dir, sample, task=task)  # the build's export cache: a rerun reuses it
    export_s = time.perf_counter() - tick
    onnx = make_session(exp.onnx_path, "cpu", threads)
    return {"onnx": onnx, "torch": torch_session(model_dir, task, threads)}, export_s, exp.cached


def run_all(task: object, session: object, split: SplitData, budget: int) -> tuple[float, dict[str, np.ndarray]]:
    cfg = argparse.Namespace(token_budget=budget)
    tick = time.perf_counter()
    out = task.run_rows(split, np.arange(len(split)), session, cfg, 0)
    return time.perf_counter() - tick, out


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of equal ids, max |diff| of the float outputs (over equal ids for the values)."""
    ids = next(n for n in a if n.endswith("ids"))
    same = a[ids] == b[ids]
    vals = next(n for n in a if n.endswith("values"))
    return {"ids_equal": float(same.mean()),
            "values_max_abs_diff": float(np.abs(np.where(same, a[vals] - b[vals], 0)).max()),
            "lse_max_abs_diff": float(np.abs(a["lse"] - b["lse"]).max()),
            "nll_max_abs_diff": float(np.abs(a["nll"] - b["nll"]).max())}


def measure(model_dir: Path, rows: np.ndarray, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    import torch

    torch.set_num_threads(args.threads)
    flat = rows.reshape(-1).astype(np.int32)
    offsets = np.arange(0, flat.size + 1, rows.shape[1], dtype=np.int64)
    split = SplitData("validation", flat, offsets, np.full(flat.size, -100), np.arange(len(rows)))
    vocab = 49_152
    modes = {f"top-k {args.top_k}": lm_task("causal-lm", args.top_k, 0, vocab)}
    if args.sample:
        modes[f"sample {args.sample}"] = lm_task("causal-lm-sampled", 50, args.sample, vocab)
    res = {}
    for mode, task in modes.items():
        sess, export_s, cached = sessions(model_dir, task, rows, args.threads)
        best = {"onnx": float("inf"), "torch": float("inf")}
        outs = {}
        for r in range(args.repeats):
            for name in (("onnx", "torch") if r % 2 == 0 else ("torch", "onnx")):
                sec, outs[name] = run_all(task, sess[name], split, args.token_budget)
                best[name] = min(best[name], sec)
        res[mode] = {"tokens": int(flat.size), "export_s": export_s, "export_cached": cached,
                     "onnx_tokens_per_s": flat.size / best["onnx"], "torch_tokens_per_s": flat.size / best["torch"],
                     "onnx_over_torch": best["torch"] / best["onnx"], **compare(outs["onnx"], outs["torch"])}
    return res


def report(res: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    lines = [f"SmolLM2-135M-Instruct, {next(iter(res.values()))['tokens']:,} tokens of Rotten Tomatoes validation "
             f"snippets in rows of {args.max_length}, token budget {args.token_budget}; "
             f"{platform.machine()}, {os.cpu_count()} cores (shared with other processes), {args.threads} threads, "
             f"no GPU; best of {args.repeats} alternating rounds.", "",
             "| targets | ONNX Runtime tokens/s | PyTorch eager tokens/s | ONNX / PyTorch | ONNX export + parity s "
             "| ids equal | max abs diff values / lse / nll |", "|---|---|---|---|---|---|---|"]
    for mode, r in res.items():
        lines.append(f"| {mode} | {r['onnx_tokens_per_s']:.1f} | {r['torch_tokens_per_s']:.1f} "
                     f"| {r['onnx_over_torch']:.2f}x | {r['export_s']:.0f}{' (cached)' if r['export_cached'] else ''} "
                     f"| {r['ids_equal']:.4f} "
                     f"| {r['values_max_abs_diff']:.1e} / {r['lse_max_abs_diff']:.1e} / {r['nll_max_abs_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--token-budget", type=int, default=1024, help="padded tokens per forward (the build's flag)")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--sample", type=int, default=0, help="also the sampled mode with N draws (0: top-k only)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=Path(".cache/assets"))
    p.add_argument("--report", type=Path, default=Path("benchmarks/results/lm_runtime.md"))
    args = p.parse_args()
    model_dir = smollm2_checkpoint(args.cache)
    rows = packed_rows(model_dir, args.cache, args.tokens, args.max_length)
    res = measure(model_dir, rows, args)
    text = report(res, args)
    print(text)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text + "\n")
    args.report.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
