"""The tasks a store can hold: the registry. Each task is one file of this package.

=========================  =======  ==============================  =====================================
task (file)                layout   logits (per split)              labels (per split)
=========================  =======  ==============================  =====================================
sequence-classification    row      (R, C): one vector per example   (R,) class id
(classification.py)
token-classification       token    (T, C): one vector per token     (T,) class id, -100 = no label
(ner.py)
question-answering (qa.py) token    (T, 2): start, end per token     (R, 2) start/end token of the answer
causal-lm (causal_lm.py)   causal-  (T, K) top-k ids + quantised     (T,) next token id, -100 at a row's end
                           lm-topk  log-probs, (T, n_tau) lse
causal-lm-sampled          causal-  (T, N) drawn ids, counts and     (T,) next token id, -100 at a row's end
(causal_lm_sampled.py)     lm-      quantised log-probs, (T, n_tau)
                           sampled  lse (``--sample N``)
=========================  =======  ==============================  =====================================

``R`` rows (examples, or windows for QA), ``T`` tokens of the split, ``C`` classes.
Everything that differs between tasks is a method or attribute of ``Task``
(logitstore/tasks/base.py); adding a task is one new file and one line in ``TASKS``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from logitstore.tasks.base import IGNORE, UNLABELLED, KDTerm, Task
from logitstore.tasks.causal_lm import CausalLM
from logitstore.tasks.causal_lm_sampled import CausalLMSampled
from logitstore.tasks.classification import SequenceClassification
from logitstore.tasks.ner import TokenClassification
from logitstore.tasks.qa import QuestionAnswering

#: Every task by its canonical name, in the order `--help` lists them.
TASKS: dict[str, Task] = {t.name: t for t in (SequenceClassification(), TokenClassification(), QuestionAnswering(),
                                              CausalLM(), CausalLMSampled())}
#: Short names for the command line.
ALIASES: dict[str, str] = {alias: t.name for t in TASKS.values() for alias in t.aliases}
#: The task of a teacher whose config names no known architecture.
DEFAULT_TASK = "sequence-classification"


def get_task(name: str) -> Task:
    """The task called ``name`` (or an alias); ValueError naming the choices otherwise."""
    task = TASKS.get(ALIASES.get(name, name))
    if task is None:
        raise ValueError(f"unknown task {name!r}; use one of {', '.join(TASKS)} (or {', '.join(ALIASES)})")
    return task


def task_of_architecture(architectures: list[str] | None) -> Task | None:
    """The task a checkpoint's ``config.architectures`` names, or None when it names none."""
    for arch in architectures or []:
        for task in TASKS.values():
            if arch.endswith(task.architecture_suffix):
                return task
    return None


def task_of_folders(folders: Sequence[Path]) -> Task:
    """The task the first config.json found names (each folder, then its checkpoint-*
    subfolders), else sequence classification (DEFAULT_TASK)."""
    import json

    for folder in map(Path, folders):
        for cfg in [folder / "config.json", *sorted(folder.glob("checkpoint-*/config.json"))]:
            if cfg.is_file():
                try:
                    task = task_of_architecture(json.loads(cfg.read_text()).get("architectures"))
                except (OSError, ValueError, AttributeError):
                    continue  # loading the checkpoint reports an unreadable config
                if task:
                    return task
    return TASKS[DEFAULT_TASK]


__all__ = ["ALIASES", "DEFAULT_TASK", "IGNORE", "KDTerm", "TASKS", "Task", "UNLABELLED", "get_task",
           "task_of_architecture", "task_of_folders"]
