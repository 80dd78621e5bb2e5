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


def test_lm_demo_end_to_end_at_reduced_size(tmp_path):
    """`bash scripts/demo.sh --task causal-lm` at reduced size (40 snippets, one fine-tune
    step, 1-layer students): two teacher checkpoints in the store (the original and the
    domain fine-tune, which lowers the validation loss), a student, a greedy sweep that
    tries the renormalised tail, the report; a rerun skips every stage."""
    import json
    import os
    import subprocess
    import sys

    from logitstore import open_store

    root = Path(__file__).parents[1]
    out = tmp_path / "lm"
    env = dict(os.environ, DEMO_SKIP_SETUP="1", EXAMPLES="40", MAX_LENGTH="24", TOP_K="8", TEACHER_STEPS="1",
               TEACHER_BATCH="2", STUDENT_LAYERS="1", SWEEP_LAYERS="1", SWEEP_DISTANCES="ce",
               SWEEP_TAILS="bucket,renormalize", BATCH="8",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = ["bash", str(root / "scripts" / "demo.sh"), "--task", "causal-lm", str(out)]
    run = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == f"report: {out}/sweep"

    store = open_store(out / "lm.zarr")
    assert store.meta.task == "causal-lm" and store.meta.top_k == 8 and store.meta.vocab_size == 49152
    ckpts = {c.name: c for c in store.checkpoints()}
    assert set(ckpts) == {"smollm2-135m", "checkpoint-1"}
    assert all(c.complete and c.parity_max_abs_err < 1e-3 for c in ckpts.values())
    assert ckpts["checkpoint-1"].val_loss < ckpts["smollm2-135m"].val_loss  # the domain fine-tune helped
    student = json.loads((out / "students" / "L1-kd" / "summary.json").read_text())
    assert student["checkpoint"] == store.select("tll").name
    assert student["test"]["perplexity"] > 1 and 0 <= student["test"]["top1_agreement"] <= 1
    records = [json.loads(x) for x in (out / "sweep" / "results.jsonl").read_text().splitlines()]
    assert any(r["point"].get("tail") == "renormalize" for r in records)
    assert any(r["point"]["alpha"] == 0 for r in records)  # the no-KD baseline
    for name in ("report.md", "rewards.png", "metrics.png"):
        assert (out / "sweep" / name).stat().st_size > 500
    assert "top1_agreement" in run.stdout and "total: " in run.stdout

    again = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") == 5  # token ids, fine-tune, store, student, sweep
