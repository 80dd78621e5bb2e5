"""Extractive question answering (SQuAD style): read, check, window, decode and score.

Records are flat: ``{"id", "question", "context", "answers": {"text": [...],
"answer_start": [...]}}`` (SQuAD layout columns, or official SQuAD ``.json`` files).
Long contexts are cut into overlapping windows the way the HF ``run_qa`` example does;
each window is a store row whose label is the (start, end) token of the first answer, or
(0, 0) (the [CLS] position) when the answer is not wholly inside it. The store keeps
start and end logits per token, (T, 2). Scores: mean over windows of (CE(start) +
CE(end)) / 2, each a softmax over the window's tokens (the validation loss); exact match
and F1 (SQuAD v1.1 rules) of the best span of each question over all its windows; ECE and
Brier over every window's start and end distributions pooled. The
helpers need no torch. A ``transfer`` split (logitstore/transfer.py) holds unlabelled
(question, context) pairs windowed the same way, start and end -100 and no answers; a
student distils both distributions of each of its windows with the KD term alone.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from logitstore.calibration import pooled
from logitstore.errors import DataError
from logitstore.metrics import log_softmax, squad_scores
from logitstore.store import SplitData, ragged
from logitstore.tasks.base import KDTerm, Task, need_fast

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from logitstore.data import DataConfig

_FORMAT_FIX = ("use official SQuAD JSON ({\"data\": [{\"paragraphs\": [...]}]}) or JSON lines / a JSON list of "
               "{\"question\", \"context\", \"answers\": {\"text\": [...], \"answer_start\": [...]}}")


# ---------------------------------------------------------------------------- reading

def read_squad(path: Path) -> list[dict]:
    """Flat records from official SQuAD JSON, or from JSON lines / a JSON list of flat records.

    Missing ids become the row number as a string. Raises DataError naming the path.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"QA data file {path} does not exist; pass an existing SQuAD .json or .jsonl file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read QA data {path} ({type(exc).__name__}: {exc}); check the path and that it is UTF-8 JSON") from exc
    if not text.strip():
        raise DataError(f"QA data file {path} is empty; add examples")
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError:
        raw = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {n} is not valid JSON ({exc.msg}); {_FORMAT_FIX}") from None
    try:
        if isinstance(raw, dict) and isinstance(raw.get("data"), list) and all(
                isinstance(a, dict) and "paragraphs" in a for a in raw["data"]):
            records = _from_official(raw["data"])
        elif isinstance(raw, dict) and isinstance(raw.get("data"), list):
            records = [_flat_record(r, i) for i, r in enumerate(raw["data"])]
        elif isinstance(raw, list):
            records = [_flat_record(r, i) for i, r in enumerate(raw)]
        elif isinstance(raw, dict) and "question" in raw:
            records = [_flat_record(raw, 0)]
        else:
            raise _Bad(f"top level is a {type(raw).__name__} without a \"data\" list")
    except _Bad as exc:
        raise DataError(f"{path} is not SQuAD data: {exc}; {_FORMAT_FIX}") from None
    if not records:
        raise DataError(f"{path} holds no questions; add examples")
    return records


class _Bad(Exception):
    """Internal: a structural problem, turned into a DataError naming the path."""


def _from_official(articles: list) -> list[dict]:
    out: list[dict] = []
    for a, article in enumerate(articles):
        paragraphs = article["paragraphs"]
        if not isinstance(paragraphs, list):
            raise _Bad(f"data[{a}].paragraphs is not a list")
        for p, para in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(para, dict) or not isinstance(para.get("context"), str) or not isinstance(para.get("qas"), list):
                raise _Bad(f"{where} needs a string \"context\" and a list \"qas\"")
            for q, qa in enumerate(para["qas"]):
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
                    raise _Bad(f"{where}.qas[{q}] has no string \"question\"")
                answers = qa.get("answers", [])
                if not isinstance(answers, list) or not all(
                        isinstance(x, dict) and "text" in x and "answer_start" in x for x in answers):
                    raise _Bad(f"{where}.qas[{q}].answers must be a list of {{\"text\", \"answer_start\"}}")
                record = {"id": qa.get("id"), "question": qa["question"], "context": para["context"],
                          "answers": {"text": [x["text"] for x in answers],
                                      "answer_start": [x["answer_start"] for x in answers]}}
                out.append(_flat_record(record, len(out)))
    return out


def _flat_record(r: Any, row: int) -> dict:
    if not isinstance(r, dict):
        raise _Bad(f"row {row} is a {type(r).__name__}, not an object")
    for key in ("question", "context"):
        if not isinstance(r.get(key), str):
            raise _Bad(f"row {row} has no string {key!r}")
    answers = r.get("answers", {"text": [], "answer_start": []})
    if isinstance(answers, list):  # a list of {"text", "answer_start"} is accepted too
        if not all(isinstance(x, dict) and "text" in x and "answer_start" in x for x in answers):
            raise _Bad(f"row {row} answers must be {{\"text\": [...], \"answer_start\": [...]}}")
        answers = {"text": [x["text"] for x in answers], "answer_start": [x["answer_start"] for x in answers]}
    if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
            or not isinstance(answers.get("answer_start"), list):
        raise _Bad(f"row {row} answers must be {{\"text\": [...], \"answer_start\": [...]}}")
    texts, starts = answers["text"], answers["answer_start"]
    if len(texts) != len(starts):
        raise _Bad(f"row {row} has {len(texts)} answer texts but {len(starts)} answer starts")
    if not all(isinstance(t, str) for t in texts) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in starts):
        raise _Bad(f"row {row} answer texts must be strings and answer starts integers")
    rid = r.get("id")
    return {"id": str(row) if rid is None else str(rid), "question": r["question"], "context": r["context"],
            "answers": {"text": list(texts), "answer_start": list(starts)}}


def check_answers(records: Sequence[dict], where: str) -> None:
    """Raise DataError unless every record has answers and each lies exactly at its answer_start."""
    for rec in records:
        context, answers = rec["context"], rec["answers"]
        if not answers["text"]:
            raise DataError(
                f"{where}: question {rec['id']} has no answer; unanswerable questions (SQuAD 2.0) are not "
                "supported, drop them or give an answer"
            )
        for text, start in zip(answers["text"], answers["answer_start"]):
            if not (0 <= start and start + len(text) <= len(context) and context[start:start + len(text)] == text):
                raise DataError(
                    f"{where}: answer {text!r} of question {rec['id']} is not at character {start} of its context "
                    "(span outside the context or text mismatch); fix answer_start"
                )


# ---------------------------------------------------------------------------- windows

@dataclass(frozen=True)
class Windows:
    """Tokenized (question, context window) pairs, ragged and unpadded.

    Window r is ``input_ids[offsets[r]:offsets[r + 1]]``; ``offset_mapping`` is the
    character span in the context of each context token, (-1, -1) for the others;
    ``window_of[r]`` is the record of window r; ``labels[r]`` the (start, end) token of
    the first answer within window r, or (0, 0) when it is not wholly inside.
    """

    input_ids: np.ndarray       # (T,) int32
    offsets: np.ndarray         # (R + 1,) int64
    token_type_ids: np.ndarray  # (T,) int8
    offset_mapping: np.ndarray  # (T, 2) int32
    window_of: np.ndarray       # (R,) int64
    labels: np.ndarray          # (R, 2) int64

    def __len__(self) -> int:
        return len(self.window_of)


def make_windows(tokenizer: Any, records: Sequence[dict], max_length: int, stride: int) -> Windows:
    """Tokenize records into overlapping windows of at most ``max_length`` tokens (HF run_qa style)."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{type(tokenizer).__name__} is not a fast tokenizer; load it with AutoTokenizer(use_fast=True)")
    if stride < 0 or max_length <= stride:
        raise DataError(f"need 0 <= stride < max_length; got stride {stride}, max_length {max_length}: lower the stride")
    if not records:
        raise DataError("no QA records to tokenize; pass at least one")
    try:
        enc = tokenizer([r["question"] for r in records], [r["context"] for r in records], truncation="only_second",
                        max_length=max_length, stride=stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True, return_token_type_ids=True)
    except Exception as exc:
        raise DataError(
            f"cannot cut QA records into windows of {max_length} tokens with stride {stride} ({type(exc).__name__}: "
            f"{exc}); raise max_length, lower the stride or shorten the questions"
        ) from exc
    ids = enc["input_ids"]
    n_win = len(ids)
    flat, offsets = ragged(ids, np.int32)
    tt, _ = ragged(enc["token_type_ids"], np.int8)
    total = int(offsets[-1])
    window_of = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
    omap = np.full((total, 2), -1, dtype=np.int32)
    labels = np.zeros((n_win, 2), dtype=np.int64)
    for r in range(n_win):
        seq = np.array([-1 if s is None else s for s in enc.sequence_ids(r)], dtype=np.int64)
        ctx = np.flatnonzero(seq == 1)
        spans = np.asarray(enc["offset_mapping"][r], dtype=np.int64).reshape(-1, 2)
        omap[offsets[r] + ctx] = spans[ctx]
        answers = records[int(window_of[r])]["answers"]
        if len(ctx) == 0 or not answers["text"]:
            continue
        start_char = int(answers["answer_start"][0])
        end_char = start_char + len(answers["text"][0])
        cs = spans[ctx]
        if not (cs[0, 0] <= start_char and cs[-1, 1] >= end_char):
            continue  # answer not wholly inside this window: label [CLS]
        first = ctx[np.flatnonzero(cs[:, 0] <= start_char)[-1]]
        last = ctx[np.flatnonzero(cs[:, 1] >= end_char)[0]]
        labels[r] = (first, last)
    return Windows(flat, offsets, tt, omap, window_of, labels)


# ---------------------------------------------------------------------------- decoding

def best_spans(start_logits: list[np.ndarray], end_logits: list[np.ndarray], windows: Windows,
               contexts: list[str], n_best: int = 20, max_answer_tokens: int = 30) -> list[str]:
    """Best answer text per record: highest start + end logit over context spans of all its windows.

    Only the ``n_best`` top start and end positions of each window are paired; a span must
    have end >= start and at most ``max_answer_tokens`` tokens. "" when no span is valid.
    """
    n_win = len(windows)
    if len(start_logits) != n_win or len(end_logits) != n_win:
        raise DataError(f"got {len(start_logits)} start and {len(end_logits)} end logit rows for {n_win} windows; "
                        "pass one row per window")
    if n_win and int(windows.window_of.max()) >= len(contexts):
        raise DataError(f"windows refer to record {int(windows.window_of.max())} but only {len(contexts)} contexts "
                        "were given; pass the contexts the windows were made from")
    best: list[tuple[float, str] | None] = [None] * len(contexts)
    for r in range(n_win):
        lo, hi = int(windows.offsets[r]), int(windows.offsets[r + 1])
        s = np.asarray(start_logits[r], dtype=np.float64).reshape(-1)
        e = np.asarray(end_logits[r], dtype=np.float64).reshape(-1)
        if len(s) != hi - lo or len(e) != hi - lo:
            raise DataError(f"window {r} has {hi - lo} tokens but {len(s)} start / {len(e)} end logits; "
                            "pass unpadded per-window logits")
        spans = windows.offset_mapping[lo:hi]
        is_ctx = spans[:, 0] >= 0
        top_s = np.argsort(-s, kind="stable")[:n_best]
        top_e = np.argsort(-e, kind="stable")[:n_best]
        si, ei = np.meshgrid(top_s, top_e, indexing="ij")
        ok = is_ctx[si] & is_ctx[ei] & (ei >= si) & (ei - si + 1 <= max_answer_tokens)
        if not ok.any():
            continue
        score = np.where(ok, s[si] + e[ei], -np.inf)
        k = int(np.argmax(score))  # first maximum: ties go to the earlier start, then end
        i, j = int(si.flat[k]), int(ei.flat[k])
        rec = int(windows.window_of[r])
        if best[rec] is None or score.flat[k] > best[rec][0]:
            best[rec] = (float(score.flat[k]), contexts[rec][int(spans[i, 0]):int(spans[j, 1])])
    return ["" if b is None else b[1] for b in best]


# ---------------------------------------------------------------------------- the task
class QuestionAnswering(Task):
    name = "question-answering"
    aliases = ("qa",)
    layout = "token"
    auto_class = "AutoModelForQuestionAnswering"
    architecture_suffix = "ForQuestionAnswering"
    metrics = ("f1", "exact_match")
    text_columns = ("question", "context")
    label_column = "answers"
    uses_stride = True
    transfer_split = True  # unlabelled (question, context) pairs: every window's start and end distilled
    extra_split_arrays = {"offset_mapping": "tokens", "window_of": "rows", "token_type_ids": "tokens",
                          "answers_of": None, "context_utf8": None, "context_offsets": None, "answer_utf8": None,
                          "answer_offsets": None}

    def config_problems(self, cfg: "DataConfig") -> list[str]:
        problems = []
        if not 0 < cfg.stride < cfg.max_length // 2:
            problems.append(f"stride must be in (0, max length / 2); got {cfg.stride} instead")
        if len(cfg.text_columns) != 2:
            problems.append("question answering reads two text columns (question, context); "
                            f"got {list(cfg.text_columns)} instead")
        return problems

    def read_files(self, suffix: str, files: Sequence[Path]) -> Any | None:
        """Official SQuAD JSON files; None for anything else (JSON lines and flat JSON lists
        are the generic json builder's)."""
        if suffix != ".json" or not all(_is_squad_json(f) for f in files):
            return None
        import datasets

        return datasets.Dataset.from_list([r for f in files for r in read_squad(f)])

    def fingerprint(self, cfg: "DataConfig") -> dict[str, Any]:
        return {"task": self.name, "stride": cfg.stride}

    def resolve_labels(self, splits: dict[str, Any], label_column: str,
                       model_names: list[str] | None) -> tuple[list[str], dict[Any, int]]:
        return ["start", "end"], {}  # labels are token positions, found when windowing

    def tokenize(self, name: str, ds: Any, tokenizer: Any, cfg: "DataConfig", label_map: dict[Any, int],
                 input_names: Sequence[str]) -> tuple[SplitData, str]:
        """(question, context) pairs -> overlapping windows with start/end labels."""
        need_fast(tokenizer, "question answering")
        q_col, c_col = cfg.text_columns
        records = [{"id": str(i), "question": q, "context": c, "answers": a}
                   for i, (q, c, a) in enumerate(zip(ds[q_col], ds[c_col], ds[cfg.label_column]))]
        check_answers(records, f"split {name!r}")
        win = make_windows(tokenizer, records, cfg.max_length, cfg.stride)
        example_ids = np.asarray(ds["__example_id"], dtype=np.int64)
        h = hashlib.sha256()
        for r, eid in zip(records, example_ids.tolist()):
            h.update(json.dumps([r["question"], r["context"], r["answers"], eid, cfg.stride],
                                ensure_ascii=False).encode())
        data = SplitData(name, win.input_ids.astype(np.int32), win.offsets, win.labels.astype(np.int64),
                         example_ids[win.window_of], win.token_type_ids.astype(np.int8), win.offset_mapping,
                         win.window_of, [r["context"] for r in records],
                         [list(r["answers"]["text"]) for r in records],
                         truncated_rows=0)  # windows cover the context; a question too long is refused, not cut
        return data, h.hexdigest()

    def placeholder_labels(self, ds: Any, cfg: "DataConfig", label_map: dict[Any, int]) -> list[Any]:
        """An answer at character 0 of each context (valid for ``check_answers``, even for an
        empty context), so that ``tokenize`` windows the rows unchanged; logitstore/transfer.py
        then stores -100 as every window's start and end and keeps no answer."""
        return [{"text": [c[:1]], "answer_start": [0]} for c in ds[cfg.text_columns[1]]]

    def teacher_problem(self, num_labels: int, label_names: list[str], store_labels: list[str]) -> str | None:
        if num_labels != 2:
            return f"has {num_labels} outputs per token; a QA teacher has 2 (start, end)"
        return None

    def model_logits(self, output: Any) -> "torch.Tensor":
        """Start and end logits stacked on the last axis, (B, T, 2)."""
        import torch

        return torch.stack([output.start_logits, output.end_logits], dim=-1)  # (B, T, 2)

    def scores(self, logits: np.ndarray, split: SplitData, label_names: list[str]) -> dict[str, float]:
        """Mean over windows of (CE(start) + CE(end)) / 2; SQuAD EM and F1 of the best spans;
        ECE and Brier over the 2R start and end distributions pooled (logitstore/calibration.py)."""
        starts, ends, ce = [], [], 0.0
        dists: list[tuple[np.ndarray, int]] = []
        for r, (a, b) in enumerate(zip(split.offsets[:-1], split.offsets[1:])):
            win = logits[a:b]  # (L, 2)
            ls = log_softmax(win.T)  # (2, L): start and end distributions over the window's tokens
            ce -= (ls[0, split.labels[r, 0]] + ls[1, split.labels[r, 1]]) / 2
            dists += [(ls[0], int(split.labels[r, 0])), (ls[1], int(split.labels[r, 1]))]
            starts.append(win[:, 0])
            ends.append(win[:, 1])
        windows = Windows(split.input_ids, split.offsets, split.token_type_ids, split.offset_mapping,
                          split.window_of, split.labels)
        preds = best_spans(starts, ends, windows, split.contexts)
        return {"loss": float(ce / len(split)), **squad_scores(preds, split.answers), **pooled(dists)}

    def kd_terms(self, student: "torch.Tensor", labels: "torch.Tensor", teacher: "torch.Tensor | None",
                 attention_mask: "torch.Tensor") -> tuple[list[KDTerm], int]:
        """Two terms, start and end: each a distribution over a window's real tokens
        (logits (B, T), padding masked out) with the gold start (end) position as label,
        the HF QA models' convention for the gold term; the loss is their mean."""
        real = attention_mask.bool()  # (B, T)
        terms = [KDTerm(student[..., k], labels[:, k], None if teacher is None else teacher[..., k], real)
                 for k in (0, 1)]
        return terms, len(student)

    def unlabelled_terms(self, student: "torch.Tensor", labels: "torch.Tensor", teacher: "torch.Tensor",
                         attention_mask: "torch.Tensor") -> tuple[list[KDTerm], int]:
        """``kd_terms`` without labels (a transfer window's start and end are -100): the start
        and end distributions over each window's real tokens, for the KD term alone."""
        terms, n = self.kd_terms(student, labels, teacher, attention_mask)
        return [replace(t, labels=None) for t in terms], n


def _is_squad_json(path: Path) -> bool:
    """True for the official SQuAD layout ({"data": [{"paragraphs": ...}]})."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError:  # JSON lines, or not JSON: the json builder's business
        return False
    return isinstance(obj, dict) and isinstance(obj.get("data"), list)
