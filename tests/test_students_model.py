"""Skip-layer students: which teacher layers are copied, and the errors for impossible students."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import LABELS, WORDS, make_teacher
from students.errors import StudentInitError
from logitstore.tasks import get_task
from students.model import build_student, layer_map

CLS = get_task("classification")

VOCAB = 5 + len(WORDS) + 2  # the tiny teachers' vocabulary (conftest.make_tokenizer)


@pytest.mark.parametrize("n,k,expected", [
    (4, 4, (0, 1, 2, 3)), (4, 2, (1, 3)), (4, 1, (3,)), (6, 3, (1, 3, 5)), (12, 4, (2, 5, 8, 11)),
    (12, 5, (1, 3, 6, 8, 11)),
])
def test_layer_map_is_evenly_spaced_and_ends_at_the_top(n, k, expected):
    assert layer_map(n, k) == expected


def test_skip_layer_init_copies_the_documented_tensors(tiny_teachers):
    source = tiny_teachers / "checkpoint-10"
    teacher = AutoModelForSequenceClassification.from_pretrained(source).state_dict()
    student, init = build_student(str(source), 2, LABELS, VOCAB, CLS)
    assert init.layer_map == (1, 3) and init.layer_prefix == "bert.encoder.layer"
    state = student.state_dict()
    layer_keys = [k for k in state if k.startswith("bert.encoder.layer.")]
    assert {k.split(".")[3] for k in layer_keys} == {"0", "1"}
    prefix, source_layer = "bert.encoder.layer.", {0: 1, 1: 3}
    for key, value in state.items():
        src = key
        if key.startswith(prefix):
            j, rest = key[len(prefix):].split(".", 1)
            src = f"{prefix}{source_layer[int(j)]}.{rest}"
        assert torch.equal(value, teacher[src]), key
    # The copies are of layers 1 and 3, not of 0 and 1 (random layers differ).
    q = "attention.self.query.weight"
    assert not torch.equal(state[f"bert.encoder.layer.0.{q}"], teacher[f"bert.encoder.layer.0.{q}"])
    for part in ("bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.weight"):
        assert torch.equal(state[part], teacher[part])


def test_all_layers_is_the_teacher_itself(tiny_teachers):
    source = tiny_teachers / "checkpoint-20"
    teacher = AutoModelForSequenceClassification.from_pretrained(source).eval()
    student, _ = build_student(str(source), 4, LABELS, VOCAB, CLS)
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 8, 3, 0, 0]])  # (B, T)
    mask = (ids != 0).long()  # (B, T)
    with torch.no_grad():
        assert torch.equal(student.eval()(input_ids=ids, attention_mask=mask).logits,
                           teacher(input_ids=ids, attention_mask=mask).logits)


def test_more_layers_than_the_teacher_is_an_error(tiny_teachers):
    with pytest.raises(StudentInitError, match="cannot be built from a model with 4; pick --layers between 1 and 4"):
        build_student(str(tiny_teachers / "checkpoint-10"), 5, LABELS, VOCAB, CLS)


def test_init_model_with_another_vocabulary_is_an_error(tmp_path: Path):
    other = make_teacher(tmp_path / "other", seed=5)
    model = AutoModelForSequenceClassification.from_pretrained(other)
    model.resize_token_embeddings(VOCAB + 10)
    model.save_pretrained(other)
    with pytest.raises(StudentInitError, match=f"vocabulary of {VOCAB + 10} tokens .* for {VOCAB}"):
        build_student(str(other), 2, LABELS, VOCAB, CLS)


def test_init_from_a_model_with_another_head_gets_a_fresh_head(tmp_path: Path):
    """A compatible --init model with two labels: body copied, head replaced by one with three."""
    source = make_teacher(tmp_path / "two", seed=6, num_labels=2)
    body = AutoModelForSequenceClassification.from_pretrained(source).state_dict()
    torch.manual_seed(0)
    student, init = build_student(str(source), 1, LABELS, VOCAB, CLS)
    state = student.state_dict()
    assert state["classifier.weight"].shape == (3, 32)
    assert torch.equal(state["bert.encoder.layer.0.output.dense.weight"], body["bert.encoder.layer.3.output.dense.weight"])
    assert init.layer_map == (3,)
