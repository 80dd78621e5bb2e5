"""Shared fixtures: tiny random BERT teachers, a tiny tokenizer and small text datasets,
all made offline by the tests themselves."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "the a film movie plot story actor great bad boring fun dull brilliant awful good poor "
    "scene script music director funny sad long short best worst love hate watch again never "
    "always drama comedy thriller ending start middle character cast role"
).split()
LABELS = ["negative", "positive", "neutral"]


def make_tokenizer(folder: Path):
    """A WordPiece tokenizer over WORDS, saved to ``folder``."""
    from transformers import BertTokenizer

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ing"])}
    tok = BertTokenizer(vocab=vocab, do_lower_case=True)
    tok.save_pretrained(folder)
    return tok


def make_teacher(folder: Path, seed: int, num_labels: int = 3, layers: int = 4,
                 label_names: list[str] | None = None) -> Path:
    """A tiny random BertForSequenceClassification checkpoint (with tokenizer) in ``folder``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    names = label_names or LABELS[:num_labels]
    cfg = BertConfig(
        vocab_size=5 + len(WORDS) + 2, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # spread the random head so logits are not all ~0
        model.classifier.weight.mul_(20.0)
    model.save_pretrained(folder)
    make_tokenizer(folder)
    return folder


def make_texts(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(WORDS, k=rng.randint(2, 24))
        rows.append({"text": " ".join(words), "label": LABELS[i % 3], "idx": i})
    return rows


def write_csv_splits(folder: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    for k, (split, n) in enumerate(sizes.items()):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label", "idx"])
            w.writeheader()
            w.writerows(make_texts(n, seed + k))
    return folder


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory) -> Path:
    """A training output folder with two checkpoints: run/checkpoint-10, run/checkpoint-20."""
    run = tmp_path_factory.mktemp("teacher-run")
    make_teacher(run / "checkpoint-10", seed=1)
    make_teacher(run / "checkpoint-20", seed=2)
    return run


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """CSV files train/validation/test with columns text, label (string), idx."""
    return write_csv_splits(tmp_path_factory.mktemp("data"), {"train": 120, "validation": 40, "test": 30})


@pytest.fixture(autouse=True)
def _private_hf_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.setenv("LOGITSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "logitstore-cache"))
