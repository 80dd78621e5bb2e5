"""`logitstore info`: a store's splits, checkpoints (with the ths / tll picks) and sizes."""
from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from logitstore.store import LogitStore, open_store
from logitstore.verify import Entry, scan, summary


def _status(e: Entry) -> str:
    if e.status == "damaged":
        return "[red]damaged[/]"
    return "complete" if e.status == "complete" else "[red]incomplete[/]"


def print_info(path: Path | str, console: Console | None = None) -> LogitStore:
    """Print the tables for the store at ``path`` (to stdout) and return the open store."""
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    store = open_store(path)
    m = store.meta
    console.print(f"[bold]{path}[/]  format v{m.format_version}, {m.task}, labels: {', '.join(m.label_names)}, "
                  f"text: {' + '.join(m.text_columns)}, max length {m.max_length}")
    # Faults (issue 10): the entries come from a structural check (metadata readable and
    # consistent, every chunk file there; no chunk read), so damaged ones show as damaged
    # instead of complete, and unreadable ones do not stop the listing.
    report = scan(path, read=False)
    split_entries = [e for e in report.entries if e.kind == "split" and e.status != "incomplete"]
    splits = Table("split", "rows", "tokens", "mean tokens/row", "status", title="splits")
    for e in split_entries:
        s = e.meta
        splits.add_row(e.name, "" if s is None else f"{s.rows:,}", "" if s is None else f"{s.tokens:,}",
                       "" if s is None else f"{s.tokens / max(1, s.rows):.1f}", _status(e))
    console.print(splits)

    entries = [e for e in report.entries if e.kind == "checkpoint"]
    picks: dict[str, str] = {}
    if all(e.meta is not None for e in entries):  # ths / tll only over a readable checkpoint list
        for pick in ("ths", "tll"):
            if any(e.status == "complete" for e in entries):
                picks[store.select(pick).name] = " ".join(filter(None, (picks.get(store.select(pick).name), pick)))
    ck = Table("checkpoint", "step", "val loss", "val score", "pick", "dtype", "provider", "parity err",
               "encode err", "bytes/logit", "status", title="checkpoints")
    for e in entries:
        c = e.meta
        if c is None:
            ck.add_row(e.name, *[""] * 9, _status(e))
            continue
        vectors = "tokens" if m.layout == "token" else "rows"  # one logit vector per token or per row
        logits = sum(getattr(x.meta, vectors) for x in split_entries if x.meta is not None) * c.num_labels
        nbytes = store.nbytes_on_disk(f"checkpoints/{c.name}")
        ck.add_row(c.name, "" if c.step is None else str(c.step),
                   "" if c.val_loss is None else f"{c.val_loss:.4f}",
                   "" if c.val_score is None else f"{c.metric} {c.val_score:.4f}", picks.get(c.name, ""),
                   c.encoding, c.provider,
                   f"{c.parity_max_abs_err:.1e}", "" if c.encode_max_abs_err is None else f"{c.encode_max_abs_err:.1e}",
                   f"{nbytes / max(1, logits):.2f}", _status(e))
    console.print(ck)
    for e in report.damaged:
        console.print(f"[red]damaged[/] {e.name if e.kind in ('root', 'tokenizer') else e.kind + ' ' + e.name}: "
                      f"{summary(e, limit=2)}")
    if report.damaged:
        console.print(f"[red]damaged entries[/]: `logitstore verify {path}` reads every chunk and lists the damage; "
                      "rerun the same build to repair them")
    console.print(f"on disk: {store.nbytes_on_disk() / 1e6:.2f} MB "
                  f"(token ids {store.nbytes_on_disk('splits') / 1e6:.2f} MB, "
                  f"logits {store.nbytes_on_disk('checkpoints') / 1e6:.2f} MB)")
    return store
