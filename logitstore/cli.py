"""`logitstore` command line: build, export, info, verify, splits, cache. Parses flags, builds a config,
calls the API.

Errors of the LogitStoreError hierarchy print as one line (``error: ...``) with exit code
2; --debug shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from logitstore.errors import DataError, LogitStoreError, run_cli
from logitstore.storage import location
from logitstore.tasks import ALIASES, TASKS
from logitstore.transfer import TRANSFER_HELP

EPILOG = ("The ONNX export cache is $LOGITSTORE_CACHE (default ~/.cache/logitstore); `logitstore cache` lists "
          "and prunes it. A store may be a URL (s3://...: pip install 'logitstore[s3]'); credentials come from the "
          "backend's environment (AWS_*), other fsspec storage options from LOGITSTORE_STORAGE_OPTIONS (JSON).")


def _add_build(sub: argparse._SubParsersAction) -> None:
    """The `build` subcommand and its flags."""
    b = sub.add_parser("build", help="run teacher checkpoints over a dataset and write their logits to a store",
                       description="Tokenize the data once, export each teacher checkpoint to ONNX (parity-checked), "
                                   "run it with ONNX Runtime and write compressed logits into the store. Rerunning "
                                   "resumes an interrupted build; adding --teacher paths adds checkpoints.")
    b.add_argument("--teacher", action="append", default=[], type=Path, metavar="PATH",
                   help="a checkpoint folder (config.json + safetensors), or a training output folder whose "
                        "checkpoint-* subfolders are checkpoints; repeat for more")
    b.add_argument("--tokenizer", type=Path, default=None, metavar="PATH",
                   help="tokenizer folder (default: the first teacher's); with no --teacher, builds a store of "
                        "token ids only, e.g. to fine-tune a teacher with `students train --alpha 0`")
    b.add_argument("--labels", default=None, metavar="A,B,...",
                   help="label names in id order (default: the teacher's id2label, or the data's sorted labels)")
    b.add_argument("--data", required=True, metavar="PATH",
                   help="CSV/JSON/JSONL/parquet file, a folder of split files (train.csv, validation.csv, ...), "
                        "a datasets save_to_disk folder, or a hub dataset name where a hub is reachable; "
                        "NER: also CoNLL two-column .conll/.txt files; QA: also SQuAD .json files")
    b.add_argument("--transfer", default=None, metavar="FILE_OR_FOLDER", help=TRANSFER_HELP)
    b.add_argument("--task", default=None, choices=[*ALIASES, *TASKS],
                   help="classification (one label per example), ner (BIO tag per word: per-token logits) or "
                        "qa (extractive: start/end logits per token) or causal-lm (packed text: top-k per token); default: what the teacher's "
                        "config.architectures says, else classification")
    b.add_argument("--stride", type=int, default=32,
                   help="QA: tokens shared by consecutive windows of a context longer than --max-length "
                        "(default: 32)")
    b.add_argument("--out", required=True, type=location, metavar="STORE",
                   help="the store folder or URL (s3://bucket/key.zarr; created or resumed)")
    b.add_argument("--text-column", action="append", metavar="NAME",
                   help="text column; give it twice for text pairs (default: text; ner: tokens; "
                        "qa: question, context)")
    b.add_argument("--label-column", default=None, metavar="NAME",
                   help="gold label column (default: label; ner: ner_tags; qa: answers)")
    b.add_argument("--validation-split", default="validation", metavar="NAME",
                   help="split used for each checkpoint's validation loss and score (default: validation)")
    b.add_argument("--split-fractions", default="0.8,0.1,0.1", metavar="TR,VA,TE",
                   help="train,validation,test fractions used when the data has no validation split "
                        "(default: 0.8,0.1,0.1)")
    b.add_argument("--split-seed", type=int, default=0, help="seed of that split (default: 0)")
    b.add_argument("--max-length", type=int, default=128, help="truncate examples to this many tokens (default: 128)")
    b.add_argument("--dtype", default="fp16", choices=["fp16", "fp32", "int8"],
                   help="stored logit type: fp16 (default, lossless codec), fp32 (exact), int8 (lossy, per-row "
                        "scale; its max error is measured and recorded)")
    b.add_argument("--chunk-rows", type=int, default=8192, help="rows per Zarr chunk and per resumable block (default: 8192)")
    b.add_argument("--token-budget", type=int, default=16384,
                   help="max padded tokens per inference batch; rows are batched by length (default: 16384)")
    b.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"],
                   help="ONNX Runtime execution provider (default: auto = CUDA when working, else CPU)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime (default: all cores)")
    _add_ray(b)
    _add_lm_flags(b)
    b.add_argument("--metric", default=None, choices=sorted({m for t in TASKS.values() for m in t.metrics}),
                   help="validation score that ranks checkpoints for ths (default: accuracy; ner: entity f1; "
                        "qa: f1)")


def _add_lm_flags(b: argparse.ArgumentParser) -> None:
    """The causal-LM flags of `build` (issue 12) and --runtime."""
    b.add_argument("--top-k", type=int, default=50,
                   help="causal-lm: teacher token ids kept per position, with their log-probabilities (default: 50)")
    b.add_argument("--temperatures", default="1", metavar="T1,T2,...",
                   help="causal-lm: temperatures at which each position's log-sum-exp is stored, so the tail mass "
                        "is exact there; students may use only these (default: 1)")
    b.add_argument("--logp-step", type=float, default=0.125, metavar="NATS",
                   help="causal-lm: quantisation step of the stored log-probabilities (default: 0.125; 0.0625 halves "
                        "the error for ~6%% more bytes)")
    b.add_argument("--sample", type=int, default=0, metavar="N",
                   help="causal-lm: instead of the top-k, draw N ids per position from the teacher's distribution "
                        "(RS-KD) and store them with their counts (1-255; default: 0 = top-k)")
    b.add_argument("--sample-temperature", type=float, default=1.0, metavar="T",
                   help="causal-lm --sample: temperature of the distribution the ids are drawn from (default: 1)")
    b.add_argument("--sample-seed", type=int, default=0, help="causal-lm --sample: seed of the draws (default: 0)")
    b.add_argument("--runtime", default="onnx", choices=["onnx", "torch"],
                   help="run teachers as exported ONNX graphs (default) or in PyTorch eager, for models that "
                        "cannot be exported; recorded per checkpoint")


def _add_ray(b: argparse.ArgumentParser) -> None:
    """The build's Ray flags (issue 13: logitstore/ray_build.py)."""
    b.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="compute the blocks on Ray actors (pip install 'logitstore[ray]'): on a new local Ray "
                        "cluster, or on the cluster at ADDRESS (HOST:PORT of its head, or auto); docs/cluster.md")
    b.add_argument("--actors", type=int, default=None, metavar="N",
                   help="with --ray: number of actors, one ONNX Runtime session each, of --threads threads (default "
                        "1) on CPU actors (default: one actor per GPU of the cluster, else one per CPU)")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise DataError(f"--temperatures must be numbers like 1,2; got {text!r} instead") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="logitstore", description=
                                "Cache teacher logits for knowledge distillation: export checkpoints to ONNX, "
                                "run them once over a dataset, store the logits in a Zarr store.", epilog=EPILOG)
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_build(sub)

    e = sub.add_parser("export", help="export one checkpoint to ONNX and check it against PyTorch",
                       description="Export a checkpoint to ONNX (dynamic batch and sequence axes, output 'logits'), "
                                   "check parity with PyTorch on probe sentences, and cache it by content hash.")
    e.add_argument("checkpoint", type=Path, help="a checkpoint folder")
    e.add_argument("--out", type=Path, default=None, help="also copy model.onnx to this path")

    i = sub.add_parser("info", help="show a store's splits, checkpoints, sizes and the ths/tll picks")
    i.add_argument("store", type=location, help="a store folder or URL (s3://bucket/key.zarr)")

    # Faults (issue 10): read every chunk and say what is damaged (logitstore/verify.py).
    v = sub.add_parser("verify", help="read every chunk of a store and report damaged entries (exit 1 if any)",
                       description="Read and checksum every chunk of every array, check shapes against the "
                                   "metadata and look for lost chunks. Exit 0 when clean, 1 when damaged; a rerun "
                                   "of the same `logitstore build` command rewrites exactly the damaged parts.")
    v.add_argument("store", type=location, help="a store folder or URL (s3://bucket/key.zarr)")
    _add_splits_and_cache(sub)
    return p


def _add_splits_and_cache(sub: argparse._SubParsersAction) -> None:
    """The `splits` and `cache` subcommands (issue 15)."""
    s = sub.add_parser("splits", help="write the splits a build made from one --data file, with its original columns",
                       description="When the build read one data file (and divided it with --split-fractions), write "
                                   "each split's rows back out, in the store's order, with the file's own columns: "
                                   "e.g. to fine-tune the teacher on exactly the train split. Reads the file again "
                                   "and refuses it when its sha256 differs from the one the store recorded.")
    s.add_argument("store", type=location, help="a store folder or URL (s3://bucket/key.zarr)")
    s.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for <split>.csv / <split>.jsonl")
    s.add_argument("--format", choices=["csv", "jsonl"], default=None,
                   help="file type (default: csv for a .csv source, else jsonl; columns of lists need jsonl)")
    s.add_argument("--data", type=Path, default=None, metavar="FILE",
                   help="where the source file is now, when it moved (default: the path the store recorded)")
    from logitstore.cache import location_line

    c = sub.add_parser("cache", help="list the ONNX export cache, or prune it (--prune)",
                       description="List the ONNX exports builds cached (key, source checkpoint, whether it still "
                                   "exists, size, last use), or remove them. " + location_line() + ".")
    c.add_argument("--prune", action="store_true",
                   help="remove entries whose source checkpoint is gone, damaged entries and leftovers of killed "
                        "exports; refused while a build or export runs")
    c.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                   help="with --prune: also remove entries not used for DAYS days")
    c.add_argument("--all", action="store_true", help="with --prune: remove every entry")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_cli(_run, args, LogitStoreError, "interrupted: rerun the same command to resume")


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.command == "build":
        from logitstore.build import BuildConfig, build_store
        from logitstore.info import print_info

        try:
            fractions = tuple(float(x) for x in args.split_fractions.split(","))
        except ValueError:
            raise DataError(f"--split-fractions must be three numbers like 0.8,0.1,0.1; got {args.split_fractions!r} instead")
        cfg = BuildConfig(
            teachers=tuple(args.teacher), data=args.data, out=args.out, tokenizer=args.tokenizer,
            labels=tuple(args.labels.split(",")) if args.labels else None,
            text_columns=tuple(args.text_column) if args.text_column else None, label_column=args.label_column,
            validation_split=args.validation_split, split_fractions=fractions, split_seed=args.split_seed,
            max_length=args.max_length, encoding=args.dtype, chunk_rows=args.chunk_rows,
            token_budget=args.token_budget, provider=args.provider, threads=args.threads, metric=args.metric,
            task=args.task, stride=args.stride, top_k=args.top_k, temperatures=_floats(args.temperatures),
            logp_step=args.logp_step, sample=args.sample, sample_temperature=args.sample_temperature,
            sample_seed=args.sample_seed, runtime=args.runtime, transfer=args.transfer, ray=args.ray,
            actors=args.actors,
        )
        result = build_store(cfg)
        print_info(result.store)
        return 0
    if args.command == "export":
        import shutil

        from logitstore.export import export_checkpoint

        res = export_checkpoint(args.checkpoint)  # the task its config.architectures names
        if args.out:
            shutil.copyfile(res.onnx_path, args.out)
        print(f"{'cached' if res.cached else 'exported'}: {args.out or res.onnx_path} "
              f"(inputs {', '.join(res.input_names)}; parity max |err| {res.parity_max_abs_err:.2e})")
        return 0
    if args.command == "info":
        from logitstore.info import print_info

        print_info(args.store)
        return 0
    if args.command in ("splits", "cache"):
        return _run_splits(args) if args.command == "splits" else _run_cache(args)
    if args.command == "verify":
        from logitstore.verify import print_report, scan

        report = scan(args.store)
        print_report(report)
        return 0 if report.clean else 1
    raise AssertionError(args.command)


def _run_splits(args: argparse.Namespace) -> int:
    from logitstore.splits import export_splits

    written = export_splits(args.store, args.out, args.format, args.data)
    print(f"wrote {args.out}: " + ", ".join(f"{path.name} ({n:,} rows)" for path, n in written.values()))
    return 0


def _run_cache(args: argparse.Namespace) -> int:
    from rich.console import Console

    from logitstore.cache import prune, print_cache

    if (args.older_than is not None or args.all) and not args.prune:
        raise DataError("--older-than and --all choose what --prune removes; add --prune")
    removed = prune(args.older_than, args.all) if args.prune else None
    print_cache(Console(width=None if sys.stdout.isatty() else 150), removed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
