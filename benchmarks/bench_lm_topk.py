"""Causal-LM top-k storage on real text: bytes/token and reconstruction error (issue 12).

Teacher: the real SmolLM2-135M-Instruct (GGUF asset, converted once to safetensors by
demo.assets.smollm2_checkpoint; needs the `lm` extra: gguf, accelerate). Text: Rotten Tomatoes
snippets (the demo's asset), validation split of the seeded 80/10/10 split, packed as
`logitstore build --task causal-lm` packs it (EOS between documents, blocks of --max-length).
The teacher is run in PyTorch (float32) over --tokens tokens; for each K the rows are encoded
exactly as the store encodes them (logitstore/topk.py) and written with the store's codecs
(Blosc zstd + shuffle + CRC32C, 65,536-token chunks) to count bytes, and the distribution
rebuilt from what is stored (kept ids with their stored log-probabilities, the tail mass
spread evenly over the other ids) is compared with the full one:

    KL(p_full || p_rebuilt), mean over tokens, split into truncation (exact kept values) and
    truncation + quantisation (the stored values); mean tail mass 1 - sum p_topk.

Also what each trick buys at every K: ids without delta coding, log-probabilities as fp16.

    python benchmarks/bench_lm_topk.py --tokens 4096 --max-length 512 --threads 2
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: demo/ is not installed

from demo.assets import ASSETS, fetch, smollm2_checkpoint  # noqa: E402
from demo.splits import rotten_tomatoes_splits  # noqa: E402
from logitstore.topk import DEFAULT_STEP, encode_topk  # noqa: E402

KS = (8, 16, 32, 50, 64, 128)


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


def zarr_bytes(arrays: dict[str, np.ndarray]) -> int:
    """Bytes on disk of ``arrays`` written as the store writes a top-k entry."""
    import zarr

    from logitstore.writer import TOKEN_LOGIT_CHUNK, _compressors

    with tempfile.TemporaryDirectory() as tmp:
        g = zarr.open_group(tmp, mode="w")
        for name, a in arrays.items():
            z = g.create_array(name, shape=a.shape, dtype=a.dtype, chunks=(TOKEN_LOGIT_CHUNK, *a.shape[1:]),
                               compressors=_compressors(a.dtype.itemsize))
            z[:] = a
        return sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file() and p.name != "zarr.json")


def rebuild_kl(z: torch.Tensor, ids: torch.Tensor, logp_kept: torch.Tensor) -> torch.Tensor:
    """KL(p || p_rebuilt) per token: z (n, V) float64 logits; ids (n, K); logp_kept (n, K) the
    rebuilt log-probabilities of the kept ids; the tail mass is spread over the other V - K ids."""
    n, v = z.shape
    k = ids.shape[1]
    log_p = torch.log_softmax(z, -1)  # (n, V)
    tail = (1 - logp_kept.exp().sum(-1)).clamp_min(1e-12)  # (n,)
    log_r = (tail.log() - np.log(v - k))[:, None].expand(n, v).clone()  # (n, V)
    log_r.scatter_(1, ids, logp_kept)
    return (log_p.exp() * (log_p - log_r)).sum(-1)


def measure(model_dir: Path, rows: np.ndarray, batch: int, step: float) -> dict[int, dict[str, float]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    v = model.config.vocab_size
    enc: dict[int, list] = {k: [] for k in KS}
    sums = {k: {"kl_trunc": 0.0, "kl_stored": 0.0, "tail": 0.0} for k in KS}
    dense_sample = None
    started = time.perf_counter()
    for a in range(0, len(rows), batch):
        with torch.no_grad():
            z = model(torch.from_numpy(rows[a:a + batch]), use_cache=False).logits.float().reshape(-1, v)  # (n, V)
        if dense_sample is None:
            dense_sample = z[:512].numpy().astype(np.float16)
        lse = torch.logsumexp(z, -1, keepdim=True)  # (n, 1)
        for k in KS:
            values, ids = torch.topk(z, k, -1)  # (n, k)
            e = encode_topk(values.numpy(), ids.numpy(), lse.numpy(), (1.0,), step, v)
            enc[k].append(e)
            sorted_ids = torch.from_numpy(np.cumsum(e.ids.astype(np.int64), axis=1))
            stored = torch.from_numpy(-e.logp.astype(np.float64) * step - e.lse.astype(np.float64))  # (n, k)
            exact = (z.double().gather(1, sorted_ids) - lse.double())
            for c in range(0, len(z), 256):
                zc = z[c:c + 256].double()
                sums[k]["kl_trunc"] += float(rebuild_kl(zc, sorted_ids[c:c + 256], exact[c:c + 256]).sum())
                sums[k]["kl_stored"] += float(rebuild_kl(zc, sorted_ids[c:c + 256], stored[c:c + 256]).sum())
            sums[k]["tail"] += float((1 - exact.exp().sum(-1)).sum())
    seconds = time.perf_counter() - started
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
    out[0] = {"dense_fp16_raw": 2.0 * v, "dense_fp16_zstd": zarr_bytes({"z": dense_sample}) / len(dense_sample),
              "forward_tokens_per_s": n / seconds, "vocab": v}
    return out


def report(res: dict[int, dict[str, float]], tokens: int, max_length: int, threads: int) -> str:
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
    text = report(measure(model_dir, rows, args.batch, DEFAULT_STEP), rows.size, args.max_length, args.threads)
    print(text)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
