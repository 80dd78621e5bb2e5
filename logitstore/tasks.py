"""The tasks a store can hold, and what differs between them (one place for both sides).

=========================  =======  ==============================  =====================================
task                       layout   logits (per split)              labels (per split)
=========================  =======  ==============================  =====================================
sequence-classification    row      (R, C): one vector per example   (R,) class id
token-classification       token    (T, C): one vector per token     (T,) class id, -100 = no label
question-answering         token    (T, 2): start, end per token     (R, 2) start/end token of the answer
=========================  =======  ==============================  =====================================

``R`` rows (examples, or windows for QA), ``T`` tokens of the split, ``C`` classes.
Token-classification labels follow the first-sub-token rule: the first token of each
word carries the word's BIO tag id; later sub-tokens and special tokens carry -100.
QA rows are windows of (question, context) pairs; a window whose span does not hold the
whole first answer has the label (0, 0), the [CLS] position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100  # label of tokens without a label (later sub-tokens, special tokens)


@dataclass(frozen=True)
class Task:
    name: str
    layout: str  # "row" or "token"
    auto_class: str  # the transformers Auto class of its models
    metrics: tuple[str, ...]  # the task metrics, default (validation score) first

    @property
    def default_metric(self) -> str:
        return self.metrics[0]


TASKS: dict[str, Task] = {
    "sequence-classification": Task("sequence-classification", "row", "AutoModelForSequenceClassification",
                                    ("accuracy", "macro_f1")),
    "token-classification": Task("token-classification", "token", "AutoModelForTokenClassification",
                                 ("f1", "precision", "recall", "accuracy")),
    "question-answering": Task("question-answering", "token", "AutoModelForQuestionAnswering",
                               ("f1", "exact_match")),
}
#: Short names for the command line.
ALIASES = {"classification": "sequence-classification", "cls": "sequence-classification",
           "ner": "token-classification", "token": "token-classification", "qa": "question-answering"}


def get_task(name: str) -> Task:
    """The task called ``name`` (or an alias); ValueError naming the choices otherwise."""
    task = TASKS.get(ALIASES.get(name, name))
    if task is None:
        raise ValueError(f"unknown task {name!r}; use one of {', '.join(TASKS)} (or ner, qa)")
    return task


def auto_model_class(task: str) -> Any:
    """The transformers Auto class that loads models of ``task``."""
    import transformers

    return getattr(transformers, get_task(task).auto_class)


def task_of_architecture(architectures: list[str] | None) -> str | None:
    """The task a checkpoint's ``config.architectures`` names, or None when it names none."""
    for arch in architectures or []:
        if arch.endswith("ForTokenClassification"):
            return "token-classification"
        if arch.endswith("ForQuestionAnswering"):
            return "question-answering"
        if arch.endswith("ForSequenceClassification"):
            return "sequence-classification"
    return None


def model_logits(output: Any, task: str) -> Any:
    """The tensor the store keeps from a model's output: ``logits`` (B, C) or (B, T, C);
    for QA the start and end logits stacked on the last axis, (B, T, 2)."""
    if get_task(task).name == "question-answering":
        import torch

        return torch.stack([output.start_logits, output.end_logits], dim=-1)  # (B, T, 2)
    return output.logits
