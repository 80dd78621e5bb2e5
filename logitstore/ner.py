"""Named-entity recognition (token classification) helpers for BIO tags; no torch needed.

Read CoNLL-style files, check and enumerate BIO tags, align word labels to sub-tokens
(first-sub-token rule), extract entities and score them like conlleval / seqeval's default
(lenient) mode.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from logitstore.errors import DataError


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
