"""The real MiniLM-L6 teacher on real Rotten Tomatoes snippets (assets fetched as pinned
wheels from the package index): build, ONNX parity, stored logits == PyTorch."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import real_asset

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from demo.assets import RT_LABELS, minilm_classifier
    from demo.splits import rotten_tomatoes_splits

    model = real_asset("minilm")
    corpus = real_asset("rotten-tomatoes")
    base = tmp_path_factory.mktemp("real")
    data = rotten_tomatoes_splits(corpus, base / "rt", limit=300, seed=0)
    teacher = minilm_classifier(model, base / "minilm-rt3", RT_LABELS, seed=0)
    return data, teacher, base


def test_real_minilm_build(real):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from logitstore import open_store
    from logitstore.build import BuildConfig, build_store

    data, teacher, base = real
    out = base / "rt.zarr"
    build_store(BuildConfig(teachers=(teacher,), data=str(data), out=out, encoding="fp32", chunk_rows=100))
    store = open_store(out)
    assert store.meta.label_names == ["fresh", "rotten", "plot"]
    assert {s: store.split_meta(s).rows for s in store.split_names()} == {"train": 240, "validation": 30, "test": 30}
    c = store.checkpoint("minilm-rt3")
    assert c.complete and c.parity_max_abs_err < 1e-4 and c.provider == "CPU"
    assert 0.0 <= c.val_score <= 1.0 and np.isfinite(c.val_loss)
    rows = list(csv.DictReader(open(data / "validation.csv")))
    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    got = store.read_logits("minilm-rt3", "validation")
    with torch.no_grad():
        for i in (0, 11, 29):
            ref = model(**tok(rows[i]["text"], return_tensors="pt", truncation=True, max_length=128)).logits[0]
            np.testing.assert_allclose(got[i], ref.numpy(), atol=1e-4)
