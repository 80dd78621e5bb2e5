"""The real SmolLM2-135M-Instruct teacher (GGUF asset converted once; needs the `lm` extra:
gguf, accelerate) on real Rotten Tomatoes snippets, at reduced size: a causal-LM build with
the top-k in the ONNX graph, parity, stored log-probabilities == PyTorch, a 1-layer student."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ASSET_CACHE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smol(tmp_path_factory, _env):
    from demo.assets import ASSETS, fetch, smollm2_checkpoint
    from demo.splits import rotten_tomatoes_splits

    model = smollm2_checkpoint(ASSET_CACHE)
    base = tmp_path_factory.mktemp("smol")
    data = rotten_tomatoes_splits(fetch(ASSETS["rotten-tomatoes"], ASSET_CACHE), base / "rt", limit=60, seed=0)
    return model, data, base


def test_real_smollm2_build_and_student(smol, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from logitstore import open_store
    from logitstore.cli import main
    from logitstore.tasks import get_task
    from students.train import TrainConfig, train

    model, data, base = smol
    out = base / "lm.zarr"
    assert main(["build", "--task", "causal-lm", "--teacher", str(model), "--data", str(data), "--out", str(out),
                 "--top-k", "16", "--max-length", "64", "--threads", "2"]) == 0
    store = open_store(out)
    ck = store.checkpoints()[0]
    assert ck.parity_max_abs_err < 1e-3 and store.meta.vocab_size == 49152
    split = store.read_split("validation")
    top = get_task("causal-lm").read_topk(store, ck.name, "validation")
    m = AutoModelForCausalLM.from_pretrained(model, attn_implementation="eager").eval()
    with torch.no_grad():
        z = torch.cat([m(torch.from_numpy(split.row(i).astype(np.int64))[None], use_cache=False).logits[0]
                       for i in range(len(split))]).double()
    ref = np.take_along_axis(torch.log_softmax(z, -1).numpy(), top.ids, 1)
    assert np.abs(top.logp() - ref).max() < store.meta.logp_step / 2 + 1e-3
    r = train(TrainConfig(store=str(out), out=str(base / "s1"), layers=1, max_steps=2, batch_size=2,
                          eval_batch_size=4, temperature=1.0, progress=False, device="cpu"))
    assert r.best.to_dict()["perplexity"] > 1
    assert Path(base / "s1" / "config.json").exists()
