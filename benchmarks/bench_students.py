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

``--task ner`` does the same for token-classification students on WNUT-16 tweets (KD per
labelled token), and also reports the store: build throughput and bytes per stored
token logit for fp16, fp32 and int8. ``--teacher`` takes a fine-tuned checkpoint (its
logits compress differently from a fresh head's; throughput does not depend on it).

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

from logitstore import open_store
from logitstore.assets import ASSETS, RT_LABELS, fetch, minilm_classifier, rotten_tomatoes_splits
from logitstore.build import BuildConfig, build_store
from logitstore.tasks.ner import label_names, read_conll, wnut_splits
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
    p.add_argument("--task", default="classification", choices=["classification", "ner"],
                   help="classification: Rotten Tomatoes; ner: WNUT-16 token classification (default classification)")
    p.add_argument("--teacher", type=Path, default=None, help="teacher checkpoint (default: MiniLM-L6, fresh head)")
    p.add_argument("--report", type=Path, default=None,
                   help="default benchmarks/results/students.md (ner: students-ner.md)")
    args = p.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    layers = [int(k) for k in args.layers.split(",")]
    report = args.report or Path(f"benchmarks/results/students{'-ner' if args.task == 'ner' else ''}.md")

    tmp = Path(tempfile.mkdtemp(prefix="bench-students-"))
    store = args.store
    store_lines: list[str] = []
    if store is None:
        model_dir = fetch(ASSETS["minilm"], args.cache)
        if args.task == "ner":
            corpus = fetch(ASSETS["wnut16"], args.cache)
            data = wnut_splits(corpus, args.cache / f"wnut16-{args.examples}-s0", limit=args.examples)
            labels = label_names(tags for _, tags in read_conll(corpus))
            teacher = args.teacher or minilm_classifier(model_dir, args.cache / "minilm-l6-wnut16", labels,
                                                        task="token-classification")
        else:
            data = rotten_tomatoes_splits(fetch(ASSETS["rotten-tomatoes"], args.cache),
                                          args.cache / f"rotten-tomatoes-{args.examples}-s0", limit=args.examples)
            teacher = args.teacher or minilm_classifier(model_dir, args.cache / "minilm-l6-rt3", RT_LABELS)
        task = "token-classification" if args.task == "ner" else "sequence-classification"
        for dtype in ("fp16", "fp32", "int8") if args.task == "ner" else ("fp16",):
            out = tmp / f"store-{dtype}.zarr"
            res = build_store(BuildConfig(teachers=(teacher,), data=str(data), out=out, max_length=args.max_length,
                                          encoding=dtype, task=task))
            st = open_store(out)
            ck = st.checkpoint_names()[0]
            rows = sum(st.split_meta(s).rows for s in st.split_names())
            tokens = sum(st.split_meta(s).tokens for s in st.split_names())
            vectors = tokens if st.meta.layout == "token" else rows
            logit_bytes = st.nbytes_on_disk(f"checkpoints/{ck}")
            secs = st.checkpoint(ck).build_seconds
            store_lines.append(f"| {dtype} | {rows:,} | {tokens:,} | {secs:.1f} | {rows / secs:.0f} | "
                               f"{tokens / secs:.0f} | {logit_bytes / (vectors * st.meta.num_labels):.2f} | "
                               f"{st.checkpoint(ck).encode_max_abs_err:.1e} |")
            if dtype == "fp16":
                store = out
        print("\n".join(store_lines))

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
    if store_lines:
        lines += ["", f"Store build of one checkpoint over every split (export + inference + writes; "
                      f"{'per-token logits, ' if args.task == 'ner' else ''}C = {open_store(store).meta.num_labels})",
                  "", "| dtype | rows | tokens | build s | rows/s | tokens/s | bytes per stored logit | max encode error |",
                  "|---|---|---|---|---|---|---|---|", *store_lines]
    lines += ["", "    python benchmarks/bench_students.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("task", args.task), ("examples", args.examples),
                                                    ("steps", args.steps), ("rounds", args.rounds),
                                                    ("layers", args.layers)))
        + (f" --teacher {args.teacher}" if args.teacher else "")]
    table = "\n".join(lines) + "\n"
    print(table)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(table)


if __name__ == "__main__":
    main()
