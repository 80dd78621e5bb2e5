"""Causal-LM top-k storage on real text: bytes/token and reconstruction error (issue 12).

Teacher: the real SmolLM2-135M-Instruct (GGUF asset, converted once to safetensors by
demo.assets.smollm2_checkpoint; needs the `lm` extra: gguf, accelerate). Text: Rotten Tomatoes
snippets (the demo's asset), validation split of the seeded 80/10/10 split, packed as
`logitstore build --task causal-lm` packs it (EOS between documents, blocks of --max-length).
The teacher is run in PyTorch (float32) over --tokens tokens; for each K the rows are encoded
exactly as the store encodes them (logitstore/topk.py) and written with the store's codecs
(Blosc zstd + shuffle + CRC32C, 65,536-token chunks) to count bytes, and the distribution
rebuilt from what is stored (kept ids with their stored log-probabilities, the tail mass
spread evenly over the other ids) is compared with the full one (the teacher never saw this text):

    KL(p_full || p_rebuilt), mean over tokens, split into truncation (exact kept values) and
    truncation + quantisation (the stored values); mean tail mass 1 - sum p_topk.

Also what each trick buys at every K: ids without delta coding, log-probabilities as fp16.
Sampled mode (`--sample N`, RS-KD): N ids drawn per token at tau = 1 by the sampled task's own
graph function (logitstore/tasks/causal_lm_sampled.py), encoded as the store encodes them
(logitstore/sampled.py: distinct ids, counts, log-probabilities, lse), with the same error
measure over the distinct drawn ids (what a sampled store is for is the unbiased KL estimate
of students/sparse_loss.py, not a reconstruction; the measure is reported for comparison).

    python benchmarks/bench_lm_topk.py --tokens 4096 --max-length 512 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: demo/ is not installed

from demo.assets import ASSETS, fetch, smollm2_checkpoint  # noqa: E402
from demo.splits import rotten_tomatoes_splits  # noqa: E402
from logitstore.topk import DEFAULT_STEP, encode_topk  # noqa: E402

KS = (8, 16, 32, 50, 64, 128)
SAMPLES = (8, 16, 32, 64)  # draws per token of the sampled mode
STEPS = (1 / 32, 1 / 16, 1 / 8, 1 / 4)  # quantisation steps compared at k = STEP_K
STEP_K = 50


def packed_rows(model_dir: Path, cache: Path, tokens: int, max_length: int) -> np.ndarray:
    """(rows, max_length) int64 packed token ids of the Rotten Tomatoes validation texts."""
    import datasets
    from transformers import AutoTokenizer

    from logitstore.data import DataConfig
    from logitstore.tasks import get_task

    task = get_task("causal-lm")
    data = rotten_tomatoes_splits(fetch(ASSETS["rotten-tomatoes"], cache), Path(tempfile.mkdtemp()) / "rt")
    texts = [line for line in datasets.load_dataset("csv", data_files=str(data / "validation.csv"),
                                                    split="train")["text"]]
    ds = datasets.Dataset.from_dict({"text": texts, "__example_id": list(range(len(texts)))})
    tok = AutoTokenizer.from_pretrained(model_dir)
    split, _ = task.tokenize("validation", ds, tok, DataConfig("rt", task, ("text",), "", max_length=max_length), {}, ())
    rows = tokens // max_length
    if len(split) - 1 < rows:
        raise SystemExit(f"only {len(split) - 1} full rows of text; ask for fewer --tokens")
    return split.input_ids[:rows * max_length].reshape(rows, max_length).astype(np.int64)


def zarr_bytes(arrays: dict[str, np.ndarray], chunk: int | None = None) -> int:
    """Bytes on disk of ``arrays`` written as the store writes a top-k entry (``chunk`` rows
    per chunk; default the store's 65,536 tokens)."""
    import zarr

    from logitstore.writer import TOKEN_LOGIT_CHUNK, _compressors

    with tempfile.TemporaryDirectory() as tmp:
        g = zarr.open_group(tmp, mode="w")
        for name, a in arrays.items():
            z = g.create_array(name, shape=a.shape, dtype=a.dtype, chunks=(chunk or TOKEN_LOGIT_CHUNK, *a.shape[1:]),
                               compressors=_compressors(a.dtype.itemsize))
            z[:] = a
        return sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file() and p.name != "zarr.json")


def rebuild_kl(neg_entropy: torch.Tensor, log_p_kept: torch.Tensor, log_r_kept: torch.Tensor, v: int,
               kept: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p || r) per token, r = the rebuilt distribution: the kept ids with log-probabilities
    ``log_r_kept`` (n, K), the rest of the mass spread evenly over the other V - K ids.
    ``neg_entropy`` (n,) = sum_V p log p; ``log_p_kept`` (n, K) the exact kept log-probabilities;
    ``kept`` (n, K) bool: which slots hold a kept id (sampled rows: the distinct draws).
    KL = sum_V p log p - sum_kept p log r - P_tail * log(R_tail / (V - K))."""
    if kept is not None:
        log_p_kept, log_r_kept = (x.masked_fill(~kept, float("-inf")) for x in (log_p_kept, log_r_kept))
        k = kept.sum(-1)  # (n,)
        p_kept = log_p_kept.exp()
        p_tail = (1 - p_kept.sum(-1)).clamp_min(0)
        r_tail = (1 - log_r_kept.exp().sum(-1)).clamp_min(1e-12)
        return neg_entropy - torch.where(kept, p_kept * log_r_kept, 0).sum(-1) - p_tail * (r_tail.log() - (v - k).log())
    k = log_p_kept.shape[1]
    p_kept = log_p_kept.exp()
    p_tail = (1 - p_kept.sum(-1)).clamp_min(0)  # (n,)
    r_tail = (1 - log_r_kept.exp().sum(-1)).clamp_min(1e-12)  # (n,)
    return neg_entropy - (p_kept * log_r_kept).sum(-1) - p_tail * (r_tail.log() - np.log(v - k))


def sample_block(z: torch.Tensor, lse: torch.Tensor, neg_ent: torch.Tensor, draws: int, seed: int, step: float,
                 acc: dict[str, Any]) -> None:
    """Draw ``draws`` ids per token of ``z`` (n, V) with the sampled task's graph function,
    encode them as the store does and add their encoding and rebuild KL to ``acc``."""
    import copy
    from types import SimpleNamespace

    from logitstore.sampled import encode_sampled
    from logitstore.tasks import get_task

    task = copy.copy(get_task("causal-lm-sampled"))
    task.sample, task.temperatures, task.vocab_size, task.sample_temperature = draws, (1.0,), z.shape[1], 1.0
    u = torch.from_numpy(np.random.default_rng(seed).random((1, len(z), draws), dtype=np.float32))
    feed = {"input_ids": torch.zeros((1, len(z)), dtype=torch.long), "draws": u}
    ids, vals, zmax, lse_abs, _ = (t[0] for t in task.graph_outputs(SimpleNamespace(logits=z[None]), feed))
    e = encode_sampled(ids.numpy(), vals.numpy(), zmax.numpy(), lse_abs.numpy(), (1.0,), step, z.shape[1])
    acc["enc"].append(e)
    kept = torch.from_numpy(e.counts > 0)
    sorted_ids = torch.from_numpy(np.cumsum(e.ids.astype(np.int64), axis=1))
    stored = torch.from_numpy(-e.logp.astype(np.float64) * step - e.lse.astype(np.float64))  # (n, N)
    exact = z.gather(1, sorted_ids).double() - lse.double()
    acc["kl_trunc"] += float(rebuild_kl(neg_ent, exact, exact, z.shape[1], kept).sum())
    acc["kl_stored"] += float(rebuild_kl(neg_ent, exact, stored, z.shape[1], kept).sum())
    acc["tail"] += float((1 - torch.where(kept, exact.exp(), 0).sum(-1)).sum())
    acc["distinct"] += float(kept.sum())


def measure(model_dir: Path, rows: np.ndarray, batch: int, step: float) -> dict[float, dict[str, float]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    v = model.config.vocab_size
    enc: dict[int, list] = {k: [] for k in KS}
    sums = {k: {"kl_trunc": 0.0, "kl_stored": 0.0, "tail": 0.0} for k in KS}
    dense_sample = None
    forward_s = 0.0
    steps: dict[float, dict] = {}
    sampled = {d: {"enc": [], "kl_trunc": 0.0, "kl_stored": 0.0, "tail": 0.0, "distinct": 0.0} for d in SAMPLES}
    for a in range(0, len(rows), batch):
        tick = time.perf_counter()
        with torch.no_grad():
            z = model(torch.from_numpy(rows[a:a + batch]), use_cache=False).logits.float().reshape(-1, v)  # (n, V)
        forward_s += time.perf_counter() - tick
        if dense_sample is None:
            dense_sample = z[:512].numpy().astype(np.float16)
        lse = torch.logsumexp(z, -1, keepdim=True)  # (n, 1)
        neg_ent = torch.cat([(torch.log_softmax(c.double(), -1).exp() * torch.log_softmax(c.double(), -1)).sum(-1)
                             for c in z.split(256)])  # (n,) sum_V p log p
        for d in SAMPLES:
            sample_block(z, lse, neg_ent, d, a, step, sampled[d])
        for k in KS:
            values, ids = torch.topk(z, k, -1)  # (n, k)
            e = encode_topk(values.numpy(), ids.numpy(), lse.numpy(), (1.0,), step, v)
            enc[k].append(e)
            sorted_ids = torch.from_numpy(np.cumsum(e.ids.astype(np.int64), axis=1))
            stored = torch.from_numpy(-e.logp.astype(np.float64) * step - e.lse.astype(np.float64))  # (n, k)
            exact = z.gather(1, sorted_ids).double() - lse.double()  # (n, k)
            sums[k]["kl_trunc"] += float(rebuild_kl(neg_ent, exact, exact, v).sum())
            sums[k]["kl_stored"] += float(rebuild_kl(neg_ent, exact, stored, v).sum())
            sums[k]["tail"] += float((1 - exact.exp().sum(-1)).sum())
            if k == STEP_K:
                for st in STEPS:
                    es = encode_topk(values.numpy(), ids.numpy(), lse.numpy(), (1.0,), st, v)
                    steps.setdefault(st, {"enc": [], "kl": 0.0})["enc"].append(es)
                    stored_s = torch.from_numpy(-es.logp.astype(np.float64) * st - es.lse.astype(np.float64))
                    steps[st]["kl"] += float(rebuild_kl(neg_ent, exact, stored_s, v).sum())
    n = rows.size
    out = {}
    for k in KS:
        ids = np.concatenate([e.ids for e in enc[k]])
        logp = np.concatenate([e.logp for e in enc[k]])
        lse = np.concatenate([e.lse for e in enc[k]])
        store = zarr_bytes({"ids": ids, "logp": logp, "lse": lse}) / n
        no_delta = zarr_bytes({"ids": np.cumsum(ids.astype(np.int64), 1).astype(ids.dtype), "logp": logp,
                               "lse": lse}) / n
        fp16 = zarr_bytes({"ids": ids, "logp": (-logp.astype(np.float32) * step).astype(np.float16), "lse": lse}) / n
        out[k] = {"bytes": store, "bytes_no_delta": no_delta, "bytes_fp16_values": fp16,
                  **{m: s / n for m, s in sums[k].items()}}
    for st, d in steps.items():
        ids, logp, lse = (np.concatenate([getattr(e, a) for e in d["enc"]]) for a in ("ids", "logp", "lse"))
        out[-st] = {"bytes": zarr_bytes({"ids": ids, "logp": logp, "lse": lse}) / n,
                    "bytes_lse_fp16": zarr_bytes({"ids": ids, "logp": logp, "lse": lse.astype(np.float16)}) / n,
                    "kl_stored": d["kl"] / n, "kl_trunc": out[STEP_K]["kl_trunc"]}
    for d, acc in sampled.items():
        arrays = {name: np.concatenate([getattr(e, name) for e in acc["enc"]]) for name in ("ids", "counts", "logp", "lse")}
        out[1000 + d] = {"bytes": zarr_bytes(arrays) / n, **{m: acc[m] / n for m in ("kl_trunc", "kl_stored", "tail",
                                                                                     "distinct")}}
    out[0] = {"dense_fp16_raw": 2.0 * v, "dense_fp16_zstd": zarr_bytes({"z": dense_sample}, 64) / len(dense_sample),
              "forward_tokens_per_s": n / forward_s, "vocab": v}
    return out


def report(res: dict[float, dict[str, float]], tokens: int, max_length: int, threads: int) -> str:
    d = res[0]
    lines = [f"SmolLM2-135M-Instruct (vocabulary {int(d['vocab']):,}), {tokens:,} tokens of Rotten Tomatoes "
             f"validation snippets packed into rows of {max_length}; {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, torch threads {threads}, no GPU. Quantisation step {DEFAULT_STEP:g} nat.",
             "", f"Dense fp16 row: {d['dense_fp16_raw']:,.0f} B/token raw, {d['dense_fp16_zstd']:,.0f} B/token with "
             "the store's codec.", "",
             "| k | store B/token | x smaller than dense fp16 | ids not delta-coded | values fp16 instead of uint8 "
             "| mean tail mass | KL truncation | KL stored (trunc. + quant.) |", "|---|---|---|---|---|---|---|---|"]
    for k in KS:
        r = res[k]
        lines.append(f"| {k} | {r['bytes']:.1f} | {d['dense_fp16_raw'] / r['bytes']:,.0f} | {r['bytes_no_delta']:.1f} "
                     f"| {r['bytes_fp16_values']:.1f} | {r['tail']:.3f} | {r['kl_trunc']:.4f} | {r['kl_stored']:.4f} |")
    lines += ["", f"At k = {STEP_K}, by quantisation step of the stored log-probabilities:", "",
              "| step (nat) | B/token | B/token with lse in fp16 | KL stored | KL stored - KL truncation |",
              "|---|---|---|---|---|"]
    for st in STEPS:
        r = res[-st]
        lines.append(f"| 1/{round(1 / st)} | {r['bytes']:.1f} | {r['bytes_lse_fp16']:.1f} | {r['kl_stored']:.4f} "
                     f"| {r['kl_stored'] - r['kl_trunc']:.5f} |")
    lines += ["", "Sampled (`--sample N`, drawn at tau = 1; the rebuilt distribution keeps the distinct drawn ids):", "",
              "| N draws | store B/token | x smaller than dense fp16 | distinct ids/token | mass of the drawn ids "
              "| KL exact values | KL stored |", "|---|---|---|---|---|---|---|"]
    for nd in SAMPLES:
        r = res[1000 + nd]
        lines.append(f"| {nd} | {r['bytes']:.1f} | {d['dense_fp16_raw'] / r['bytes']:,.0f} | {r['distinct']:.1f} "
                     f"| {1 - r['tail']:.3f} | {r['kl_trunc']:.4f} | {r['kl_stored']:.4f} |")
    lines.append(f"\nPyTorch forward (float32, eager): {d['forward_tokens_per_s']:.0f} tokens/s.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch", type=int, default=4, help="rows per forward")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=Path(".cache/assets"))
    p.add_argument("--report", type=Path, default=Path("benchmarks/results/lm_topk.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = smollm2_checkpoint(args.cache)
    rows = packed_rows(model_dir, args.cache, args.tokens, args.max_length)
    res = measure(model_dir, rows, args.batch, DEFAULT_STEP)
    text = report(res, rows.size, args.max_length, args.threads)
    print(text)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text + "\n")
    args.report.with_suffix(".json").write_text(json.dumps({str(k): v for k, v in res.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
