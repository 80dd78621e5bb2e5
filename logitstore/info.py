"""`logitstore info`: a store's splits, checkpoints (with the ths / tll picks), scores on
every split, sizes, and one line about the ONNX export cache."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from logitstore.calibration import CALIBRATION_KEYS, ECE_BINS, picks_calibration
from logitstore.checkpoints import step_of
from logitstore.format import StoreMeta
from logitstore.store import LogitStore, open_store
from logitstore.verify import Entry, scan, summary


def _status(e: Entry) -> str:
    if e.status == "damaged":
        return "[red]damaged[/]"
    return "complete" if e.status == "complete" else "[red]incomplete[/]"


def _by_step(e: Entry) -> tuple[bool, int, str]:
    """Checkpoints in training order: by step (from the metadata, else the name), then name;
    entries without a step last."""
    step = e.meta.step if e.meta is not None else step_of(e.name)
    return step is None, step or 0, e.name


def print_info(path: Path | str, console: Console | None = None) -> LogitStore:
    """Print the tables for the store at ``path`` (to stdout) and return the open store."""
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    store = open_store(path)
    m = store.meta
    keeps = f"top-k {m.top_k}" if m.top_k else f"{m.sample} draws at tau {m.sample_temperature or 1:g}"
    labels = f"labels: {', '.join(m.label_names)}" if m.vocab_size is None else (  # causal-lm: what each token keeps
        f"{keeps} of {m.vocab_size:,} ids, lse at tau {', '.join(f'{t:g}' for t in m.temperatures or [])}")
    console.print(f"[bold]{path}[/]  format v{m.format_version}, {m.task}, {labels}, "
                  f"text: {' + '.join(m.text_columns)}, max length {m.max_length}")
    if m.source_file:
        console.print(f"data: {m.source_file['path']} (one file; `logitstore splits {path} --out DIR` writes "
                      "the splits made from it)")
    # Faults (issue 10): the entries come from a structural check (metadata readable and
    # consistent, every chunk file there; no chunk read), so damaged ones show as damaged
    # instead of complete, and unreadable ones do not stop the listing.
    report = scan(path, read=False)
    split_entries = [e for e in report.entries if e.kind == "split" and e.status != "incomplete"]
    console.print(_splits_table(split_entries, m))
    entries = sorted((e for e in report.entries if e.kind == "checkpoint"), key=_by_step)
    console.print(_checkpoints_table(store, entries, split_entries))
    scores = _scores_table(entries, [e.name for e in split_entries])
    if scores is not None:
        console.print(scores)
    calib = _calibration_table(entries, [e.name for e in split_entries])
    if calib is not None:
        console.print(calib)
    picks = _picks_table(store) if all(e.meta is not None for e in entries) else None
    if picks is not None:
        console.print(picks)
    for e in report.damaged:
        console.print(f"[red]damaged[/] {e.name if e.kind in ('root', 'tokenizer') else e.kind + ' ' + e.name}: "
                      f"{summary(e, limit=2)}")
    if report.damaged:
        console.print(f"[red]damaged entries[/]: `logitstore verify {path}` reads every chunk and lists the damage; "
                      "rerun the same build to repair them")
    console.print(f"on disk: {store.nbytes_on_disk() / 1e6:.2f} MB "
                  f"(token ids {store.nbytes_on_disk('splits') / 1e6:.2f} MB, "
                  f"logits {store.nbytes_on_disk('checkpoints') / 1e6:.2f} MB)")
    from logitstore.cache import summary_line

    console.print(summary_line())
    return store


def _splits_table(split_entries: list[Entry], m: StoreMeta) -> Table:
    """One row per split; "cut" counts rows --max-length truncated (blank in older stores)."""
    splits = Table("split", "rows", "tokens", "mean tokens/row", f"cut at {m.max_length}", "status", title="splits")
    for e in split_entries:
        s = e.meta
        n = None if s is None else s.truncated_rows
        cut = "" if n is None else f"{n:,} ({n / max(1, s.rows):.1%})"
        splits.add_row(e.name, "" if s is None else f"{s.rows:,}", "" if s is None else f"{s.tokens:,}",
                       "" if s is None else f"{s.tokens / max(1, s.rows):.1f}", cut, _status(e))
    return splits


def _checkpoints_table(store: LogitStore, entries: list[Entry], split_entries: list[Entry]) -> Table:
    m = store.meta
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
        vectors = "rows" if m.layout == "row" else "tokens"  # one logit vector per token or per row
        logits = sum(getattr(x.meta, vectors) for x in split_entries if x.meta is not None) * max(1, c.num_labels)  # causal-lm: bytes/token
        nbytes = store.nbytes_on_disk(f"checkpoints/{c.name}", _block_records)
        ck.add_row(c.name, "" if c.step is None else str(c.step),
                   "" if c.val_loss is None else f"{c.val_loss:.4f}",
                   "" if c.val_score is None else f"{c.metric} {c.val_score:.4f}", picks.get(c.name, ""),
                   c.encoding, c.provider,
                   f"{c.parity_max_abs_err:.1e}", "" if c.encode_max_abs_err is None else f"{c.encode_max_abs_err:.1e}",
                   f"{nbytes / max(1, logits):.2f}", _status(e))
    return ck


def _block_records(parts: tuple[str, ...]) -> bool:
    """Objects of an entry's block records (<split>/blocks/...): build bookkeeping, not logits."""
    return len(parts) > 1 and parts[1] == "blocks"


def _scores_table(entries: list[Entry], splits: list[str]) -> Table | None:
    """Loss and metric of each checkpoint on every split (CheckpointMeta.split_scores);
    None when no checkpoint records them (stores built before they were recorded)."""
    done = [e.meta for e in entries if e.meta is not None and e.meta.split_scores]
    if not done:
        return None
    metrics = sorted({c.metric for c in done})
    splits = [s for s in splits if any(s in c.split_scores for c in done)]  # not transfer: it has no labels
    return _split_table(done, splits, ("loss", *metrics),
                        "loss and " + ", ".join(metrics) + " on every split (from the stored logits)")


def _calibration_table(entries: list[Entry], splits: list[str]) -> Table | None:
    """ECE and Brier of each checkpoint on every split; None when no checkpoint records them
    (stores built before issue 14: their cells would all be blank)."""
    done = [e.meta for e in entries if e.meta is not None and e.meta.split_scores]
    keys = tuple(k for k in CALIBRATION_KEYS if any(k in v for c in done for v in c.split_scores.values()))
    if not keys:
        return None
    splits = [s for s in splits if any(s in c.split_scores for c in done)]
    return _split_table(done, splits, keys, f"calibration on every split (ECE over {ECE_BINS} equal-width bins, "
                                            "Brier; lower is better)")


def _split_table(done: list[Any], splits: list[str], cols: tuple[str, ...], title: str) -> Table:
    table = Table("checkpoint", *[f"{s} {what}" for s in splits for what in cols], title=title)
    for c in done:
        cells = []
        for s in splits:
            got = c.split_scores.get(s, {})
            cells += [f"{got[k]:.4f}" if k in got else "" for k in cols]
        table.add_row(c.name, *cells)
    return table


def _picks_table(store: LogitStore) -> Table | None:
    """ths against tll on validation: loss, score, ECE and Brier side by side (the study ties
    tll to better probability estimates); None without a complete checkpoint. Blank cells:
    a store built before calibration was recorded."""
    rows = picks_calibration(store)
    if not rows:
        return None
    fmt = lambda x: "" if x is None else f"{x:.4f}"  # noqa: E731
    table = Table("pick", "checkpoint", "val loss", "val score", f"val ECE ({ECE_BINS} bins)", "val Brier",
                  title="ths vs tll on validation (ECE, Brier: lower is better)")
    for r in rows:
        table.add_row(r["pick"], r["checkpoint"], fmt(r["val_loss"]),
                      "" if r["val_score"] is None else f"{r['metric']} {r['val_score']:.4f}", fmt(r["ece"]),
                      fmt(r["brier"]))
    return table
