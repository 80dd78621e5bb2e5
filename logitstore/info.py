"""`logitstore info`: a store's splits, checkpoints (with the ths / tll picks) and sizes."""
from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from logitstore.store import LogitStore, open_store


def print_info(path: Path, console: Console | None = None) -> LogitStore:
    """Print the tables for the store at ``path`` (to stdout) and return the open store."""
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    store = open_store(path)
    m = store.meta
    console.print(f"[bold]{path}[/]  format v{m.format_version}, {m.task}, labels: {', '.join(m.label_names)}, "
                  f"text: {' + '.join(m.text_columns)}, max length {m.max_length}")
    splits = Table("split", "rows", "tokens", "mean tokens/row", title="splits")
    for name in store.split_names():
        s = store.split_meta(name)
        splits.add_row(name, f"{s.rows:,}", f"{s.tokens:,}", f"{s.tokens / max(1, s.rows):.1f}")
    console.print(splits)

    done = store.checkpoints()
    ths = store.select("ths").name if done else None
    tll = store.select("tll").name if done else None
    ck = Table("checkpoint", "step", "val loss", "val score", "pick", "dtype", "provider", "parity err",
               "encode err", "bytes/logit", "status", title="checkpoints")
    for c in store.checkpoints(complete_only=False):
        vectors = "tokens" if m.layout == "token" else "rows"  # one logit vector per token or per row
        logits = sum(getattr(store.split_meta(s), vectors) for s in store.split_names()) * c.num_labels
        nbytes = store.nbytes_on_disk(f"checkpoints/{c.name}")
        pick = " ".join(p for p, n in (("ths", ths), ("tll", tll)) if n == c.name)
        ck.add_row(c.name, "" if c.step is None else str(c.step),
                   "" if c.val_loss is None else f"{c.val_loss:.4f}",
                   "" if c.val_score is None else f"{c.metric} {c.val_score:.4f}", pick, c.encoding, c.provider,
                   f"{c.parity_max_abs_err:.1e}", "" if c.encode_max_abs_err is None else f"{c.encode_max_abs_err:.1e}",
                   f"{nbytes / max(1, logits):.2f}", "complete" if c.complete else "[red]incomplete[/]")
    console.print(ck)
    console.print(f"on disk: {store.nbytes_on_disk() / 1e6:.2f} MB "
                  f"(token ids {store.nbytes_on_disk('splits') / 1e6:.2f} MB, "
                  f"logits {store.nbytes_on_disk('checkpoints') / 1e6:.2f} MB)")
    return store
