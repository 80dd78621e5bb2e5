"""Named-entity recognition (token classification): BIO tags, one logit vector per token.

Reads a column of word lists and one of BIO tag lists (or CoNLL two-column ``.conll`` /
``.txt`` files). Labels follow the first-sub-token rule: the first token of each word
carries the word's tag id; later sub-tokens and special tokens carry -100 (IGNORE).
Scores: mean CE over labelled tokens (the validation loss), entity-level precision,
recall and F1 (conlleval / seqeval's default lenient rules), token accuracy, and ECE and
Brier per labelled token. The KD
loss covers the labelled tokens only. Unlabelled (transfer) rows store -2 (UNLABELLED, "a
word start with no gold label") at each word's first sub-token and -100 elsewhere, so their
KD term covers exactly the positions a labelled row's covers, with no CE term. The BIO
helpers here need no torch.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from logitstore.calibration import calibration
from logitstore.errors import DataError
from logitstore.metrics import accuracy, cross_entropy
from logitstore.store import SplitData, ragged
from logitstore.tasks.base import (UNLABELLED, KDTerm, Task, content_sha256, count_truncated, generic_label_names,
                                   need_fast)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from logitstore.data import DataConfig


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    """Sentences of a CoNLL-style file as (tokens, tags) pairs.

    One word a line: the token is the first whitespace-separated field, the tag the last
    (columns in between, as in CoNLL-2003, are ignored). Blank lines end sentences and
    ``-DOCSTART-`` lines are skipped. Raises DataError for a short line or an empty file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read CoNLL file {path} ({type(exc).__name__}: {exc}); "
                        "check the path and that it is UTF-8 text") from exc
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        if fields[0].startswith("-DOCSTART-"):
            continue
        if len(fields) < 2:
            raise DataError(f"{path}:{lineno}: line {line.strip()!r} has {len(fields)} field, expected "
                            "'token<whitespace>tag'; add the tag or separate sentences with a blank line")
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        sentences.append((tokens, tags))
    if not sentences:
        raise DataError(f"{path} holds no sentences; point at a CoNLL file with 'token tag' lines")
    return sentences


def _split_tag(tag: str, where: str, i: int) -> tuple[str, str]:
    """(prefix, type) of a BIO tag: ("O", "") or ("B"/"I", type); DataError otherwise."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[0] in "BI" and tag[1] == "-":
        return tag[0], tag[2:]
    raise DataError(f"{where}: tag {tag!r} at word {i + 1} is not BIO (expected 'O', 'B-<type>' or "
                    "'I-<type>'); fix the tags or convert them to BIO")


def check_bio(tags: Sequence[str], where: str) -> None:
    """Strict BIO check: tags are O / B-type / I-type, and I-X follows B-X or I-X.

    ``where`` starts the message (e.g. "train.jsonl sentence 12"); words count from 1.
    Raises DataError at the first bad tag.
    """
    prev = "O"
    prev_type = ""
    for i, tag in enumerate(tags):
        prefix, kind = _split_tag(tag, where, i)
        if prefix == "I" and prev_type != kind:
            after = f"follows {prev!r}" if i else "starts the sentence"
            raise DataError(f"{where}: tag {tag!r} at word {i + 1} {after} (inconsistent BIO: an entity must "
                            f"start with B-{kind}); fix the tags or convert IOB1 to BIO")
        prev, prev_type = tag, kind


def label_names(tag_seqs: Iterable[Sequence[str]]) -> list[str]:
    """"O", then each entity type in alphabetical order as B-type, I-type (both always).

    Raises DataError for a tag that is not BIO.
    """
    kinds: set[str] = set()
    for n, tags in enumerate(tag_seqs):
        for i, tag in enumerate(tags):
            prefix, kind = _split_tag(tag, f"sequence {n}", i)
            if prefix != "O":
                kinds.add(kind)
    return ["O"] + [f"{p}-{k}" for k in sorted(kinds) for p in "BI"]


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int], ignore: int = -100) -> list[int]:
    """Token labels by the first-sub-token rule.

    ``word_ids`` is a fast tokenizer's ``encoding.word_ids()``. The first token of each word
    gets the word's label; later sub-tokens and special tokens (None) get ``ignore``. Words
    cut off by truncation have no token. Raises DataError for a word id with no label.
    """
    out: list[int] = []
    prev: int | None = None
    for w in word_ids:
        if w is None:
            out.append(ignore)
        elif w == prev:
            out.append(ignore)
        else:
            if not 0 <= w < len(word_labels):
                raise DataError(f"token of word {w} but only {len(word_labels)} word labels; "
                                "tokenize the same words the labels belong to")
            out.append(int(word_labels[w]))
        prev = w
    return out


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities as (type, start word, end word exclusive), conlleval's lenient rules.

    An entity starts at B-X, or at I-X after O or another type; it goes on over I-X.
    Raises DataError for a tag that is not BIO.
    """
    found: list[tuple[str, int, int]] = []
    kind: str | None = None
    start = 0
    for i, tag in enumerate(tags):
        prefix, t = _split_tag(tag, "entities", i)
        if prefix == "I" and t == kind:
            continue
        if kind is not None:
            found.append((kind, start, i))
        kind, start = (t, i) if prefix != "O" else (None, i)
    if kind is not None:
        found.append((kind, start, len(tags)))
    return found


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over exact-match entities (type and span).

    A ratio with a zero denominator is 0. Raises ValueError when the sequences' numbers or
    lengths differ.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sequences but {len(pred)} predicted; pass one prediction per sequence")
    n_gold = n_pred = n_ok = 0
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sequence {i} has {len(g)} gold tags but {len(p)} predicted; "
                             "predict one tag per word")
        ge, pe = set(entities(g)), set(entities(p))
        n_gold += len(ge)
        n_pred += len(pe)
        n_ok += len(ge & pe)
    precision = n_ok / n_pred if n_pred else 0.0
    recall = n_ok / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# ---------------------------------------------------------------------------- the task
class TokenClassification(Task):
    name = "token-classification"
    aliases = ("ner", "token")
    layout = "token"
    auto_class = "AutoModelForTokenClassification"
    architecture_suffix = "ForTokenClassification"
    metrics = ("f1", "precision", "recall", "accuracy")
    text_columns = ("tokens",)
    label_column = "ner_tags"
    file_suffixes = (".conll", ".txt")
    token_labels = True
    transfer_split = True
    transfer_marker = UNLABELLED  # a transfer row's word starts: distilled, never a CE target

    def read_files(self, suffix: str, files: Sequence[Path]) -> Any | None:
        if suffix not in self.file_suffixes:
            return None
        import datasets

        sentences = [s for f in files for s in read_conll(f)]
        return datasets.Dataset.from_dict({"tokens": [w for w, _ in sentences], "ner_tags": [t for _, t in sentences]})

    def resolve_labels(self, splits: dict[str, Any], label_column: str,
                       model_names: list[str] | None) -> tuple[list[str], dict[Any, int]]:
        """BIO label names and a map from the data's tags (strings, or ClassLabel ids) to
        label ids. Every tag sequence must be valid BIO; the tags must be among
        ``model_names`` when it has real names. Raises DataError naming split, row and tag."""
        import datasets

        feature = next(iter(splits.values())).features[label_column]
        inner = getattr(feature, "feature", None)
        names_of_ids = list(inner.names) if isinstance(inner, datasets.ClassLabel) else None
        seqs = _tag_sequences(splits, label_column, names_of_ids)
        generic = model_names is not None and generic_label_names(model_names)
        if model_names is None or generic:
            names = label_names(seqs)
            if generic and len(names) != len(model_names):
                raise DataError(f"the data has {len(names)} BIO labels but the teacher has {len(model_names)} "
                                "outputs; use a teacher trained on these labels")
        else:
            names = list(model_names)
            unknown = sorted({t for tags in seqs for t in tags} - set(names))
            if unknown:
                raise DataError(
                    f"tags {', '.join(map(repr, unknown[:5]))} are not in the teacher's label set "
                    f"({', '.join(names[:12])}); fix the data or use the matching teacher"
                )
        ids = {n: i for i, n in enumerate(names)}
        mapping: dict[Any, int] = dict(ids)
        if names_of_ids:
            mapping.update({i: ids[n] for i, n in enumerate(names_of_ids) if n in ids})
        return names, mapping

    def tokenize(self, name: str, ds: Any, tokenizer: Any, cfg: "DataConfig", label_map: dict[Any, int],
                 input_names: Sequence[str]) -> tuple[SplitData, str]:
        """Words -> sub-word tokens; the first sub-token of each word carries its tag id."""
        need_fast(tokenizer, "token classification")
        words_col, tags_col = cfg.text_columns[0], cfg.label_column
        words, tags = ds[words_col], ds[tags_col]
        for i, (w, t) in enumerate(zip(words, tags)):
            if not isinstance(w, (list, tuple)) or len(w) != len(t) or not w:
                raise DataError(f"split {name!r} row {i}: {words_col!r} must be a non-empty list of words as long "
                                f"as its {tags_col!r} list ({len(t) if isinstance(t, (list, tuple)) else '?'}); "
                                "fix the row")
        texts = [list(map(str, w)) for w in words]
        enc = tokenizer(texts, is_split_into_words=True, truncation=True, max_length=cfg.max_length)
        labels = [align_labels(enc.word_ids(i), [label_map[x] for x in t]) for i, t in enumerate(tags)]
        flat, offsets = ragged(enc["input_ids"], np.int32)
        flat_labels, _ = ragged(labels, np.int64)
        example_ids = np.asarray(ds["__example_id"], dtype=np.int64)
        sha = content_sha256(zip(words, labels, example_ids.tolist()))
        # a row is cut when it lost tokens (words past the cap have no token, so no label)
        cut = count_truncated(tokenizer, np.diff(offsets), cfg.max_length, texts, is_split_into_words=True)
        return SplitData(name, flat, offsets, flat_labels, example_ids, truncated_rows=cut), sha

    def placeholder_labels(self, ds: Any, cfg: "DataConfig", label_map: dict[Any, int]) -> list[Any]:
        """One valid tag per word of each row (a row that is not a word list gets none, and
        ``tokenize`` names it)."""
        tag = next(iter(label_map))
        return [[tag] * len(w) if isinstance(w, (list, tuple)) else [] for w in ds[cfg.text_columns[0]]]

    def scores(self, logits: np.ndarray, split: SplitData, label_names: list[str]) -> dict[str, float]:
        """Over the labelled tokens of ``logits`` (T, C): mean CE, entity scores, accuracy, and
        ECE and Brier per labelled token."""
        labels = split.labels  # (T,)
        mask = labels >= 0  # (T,) gold labels only: never IGNORE or UNLABELLED
        pred = logits.argmax(axis=-1)  # (T,)
        gold_seqs, pred_seqs = [], []
        for a, b in zip(split.offsets[:-1], split.offsets[1:]):
            m = mask[a:b]
            gold_seqs.append([label_names[x] for x in labels[a:b][m]])
            pred_seqs.append([label_names[x] for x in pred[a:b][m]])
        return {"loss": cross_entropy(logits[mask], labels[mask]), **entity_scores(gold_seqs, pred_seqs),
                "accuracy": accuracy(pred[mask], labels[mask]), **calibration(logits[mask], labels[mask])}

    def kd_terms(self, student: "torch.Tensor", labels: "torch.Tensor", teacher: "torch.Tensor | None",
                 attention_mask: "torch.Tensor") -> tuple[list[KDTerm], int]:
        """The labelled tokens (labels (B, T) >= 0) as if they were examples: padding,
        special tokens and later sub-tokens (IGNORE) take no part in either term, nor does a
        transfer row's UNLABELLED word start (``unlabelled_terms`` distils those)."""
        keep = labels >= 0  # (B, T)
        return [KDTerm(student[keep], labels[keep], None if teacher is None else teacher[keep])], int(keep.sum())

    def unlabelled_terms(self, student: "torch.Tensor", labels: "torch.Tensor", teacher: "torch.Tensor",
                         attention_mask: "torch.Tensor") -> tuple[list[KDTerm], int]:
        """The word starts of rows without gold labels (labels (B, T) == UNLABELLED) as one term
        with no labels: the positions ``kd_terms`` keeps on a labelled row, so special tokens,
        later sub-tokens and padding (IGNORE) take no part. ``student``/``teacher`` (B, T, C)."""
        keep = labels == UNLABELLED  # (B, T)
        return [KDTerm(student[keep], None, teacher[keep])], int(keep.sum())


def _tag_sequences(splits: dict[str, Any], column: str, names_of_ids: list[str] | None) -> list[list[str]]:
    """Every split's tag lists as strings, each checked to be valid BIO."""
    seqs: list[list[str]] = []
    for split, ds in splits.items():
        for i, tags in enumerate(ds[column]):
            if not isinstance(tags, (list, tuple)):
                raise DataError(f"split {split!r} row {i}: column {column!r} holds {type(tags).__name__}, "
                                "not a list of tags; name the tag column with --label-column")
            tags = [names_of_ids[t] for t in tags] if names_of_ids else [str(t) for t in tags]
            check_bio(tags, f"split {split!r} row {i}")
            seqs.append(tags)
    return seqs
