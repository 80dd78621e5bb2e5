"""The on-disk format does not drift: tiny stores committed under tests/fixtures/ (written by
the builder's write calls of format versions 2 and 4) read back exactly, and writing the same
content today gives the files of the latest version with the same metadata and values.

To see what a format change would break, run the tests; to record a deliberate new format
version, add a new fixture folder next to the old one (old stores must stay readable).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from logitstore.encode import decode, encode
from logitstore.format import CheckpointMeta, StoreMeta
from logitstore.store import SplitData, open_store, ragged
from logitstore.writer import StoreWriter

#: Committed stores by format version; today's writer must give the files of the last one.
VERSIONS = {2: Path(__file__).parent / "fixtures" / "store-v2", 4: Path(__file__).parent / "fixtures" / "store-v4"}
FIXTURES = VERSIONS[4]
KINDS = ("classification", "qa")


def _rows(rng: np.random.Generator, n: int, vocab: int = 30) -> list[list[int]]:
    return [rng.integers(5, vocab, size=int(rng.integers(2, 8))).tolist() for _ in range(n)]


def _classification_splits() -> dict[str, SplitData]:
    rng = np.random.default_rng(11)
    out = {}
    for name, n in (("train", 6), ("validation", 4)):
        ids, offsets = ragged(_rows(rng, n), np.int32)
        out[name] = SplitData(name, ids, offsets, rng.integers(0, 3, size=n), np.arange(n) * 2)
    return out


def _qa_split() -> SplitData:
    rng = np.random.default_rng(12)
    ids, offsets = ragged(_rows(rng, 3), np.int32)
    types = (rng.random(len(ids)) < 0.5).astype(np.int8)
    spans = np.stack([np.arange(len(ids)), np.arange(len(ids)) + 1], axis=1)
    spans[::3] = -1  # question and special tokens
    return SplitData("validation", ids, offsets, np.array([[1, 2], [0, 0], [2, 3]]), np.array([0, 1, 2]),
                     types, spans, np.array([0, 0, 1]), ["un café à Porto", "plain context"],
                     [["café", "à Porto"], ["plain"]])


def _logits(rows: int, columns: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, columns)) * 4).astype(np.float32)  # (R, C)


def _store_meta(kind: str) -> StoreMeta:
    common = dict(tokenizer_fingerprint="f" * 64, dataset_fingerprint="d" * 64, validation_split="validation",
                  created_by="logitstore 0.1.0", max_length=16)
    if kind == "qa":
        return StoreMeta(task="question-answering", label_names=["start", "end"], text_columns=["question", "context"],
                         label_column="answers", input_names=["input_ids", "attention_mask", "token_type_ids"],
                         stride=4, **common)
    return StoreMeta(task="sequence-classification", label_names=["negative", "positive", "neutral"],
                     text_columns=["text"], label_column="label", input_names=["input_ids", "attention_mask"],
                     **common)


def expected(kind: str) -> tuple[StoreMeta, dict[str, SplitData], dict[str, tuple[str, dict[str, np.ndarray]]]]:
    """A fixture store's metadata, splits, and per checkpoint its encoding and the float32
    logits it was given per split (rows (R, C), or for QA tokens (T, 2))."""
    meta = _store_meta(kind)
    if kind == "qa":
        split = _qa_split()
        return meta, {"validation": split}, {"qa-1": ("fp16", {"validation": _logits(int(split.offsets[-1]), 2, 3)})}
    splits = _classification_splits()
    return meta, splits, {name: (enc, {s: _logits(len(d), 3, seed + k) for k, (s, d) in enumerate(splits.items())})
                          for name, enc, seed in (("checkpoint-1", "fp16", 1), ("checkpoint-2", "int8", 5),
                                                  ("partial", "fp32", 9))}


def write_fixture(path: Path, kind: str) -> None:
    """Write one fixture store through the builder's write calls (what `build_store` does)."""
    meta, splits, checkpoints = expected(kind)
    store = StoreWriter.create(path, meta)
    for data in splits.values():
        store.write_split(data, f"sha-of-{data.name}")
    tok = path.parent / f"{path.name}-tokenizer"
    tok.mkdir(exist_ok=True)
    (tok / "vocab.txt").write_text("[PAD]\n[UNK]\ncafé\n", encoding="utf-8")
    store.write_tokenizer(tok, ["vocab.txt"])
    per_token = kind == "qa"
    for k, (name, (encoding, logits)) in enumerate(checkpoints.items()):
        ck = CheckpointMeta(name=name, source_path=f"teacher/{name}", weights_sha256="w" * 64,
                            num_labels=meta.num_labels, encoding=encoding, parity_max_abs_err=1e-6,
                            parity_tolerance=1e-3, provider="CPU", layout=meta.layout, step=10 * (k + 1))
        store.put_checkpoint(ck)
        for split, data in splits.items():
            block = 2
            store.prepare_logits(name, split, len(data), meta.num_labels, encoding, block,
                                 tokens=int(data.offsets[-1]) if per_token else None)
            err = 0.0
            for index, start in enumerate(range(0, len(data), block)):
                stop = min(start + block, len(data))
                first, last = (int(data.offsets[start]), int(data.offsets[stop])) if per_token else (start, stop)
                enc = encode(logits[split][first:last], encoding)
                store.write_logits_block(name, split, first, enc, index)  # its arrays, then its record
                err = max(err, float(np.float32(enc.max_abs_err)))
                store.note_blocks(name, split, stop, err)  # the driver's progress count
                if name == "partial":
                    break  # a killed build: one block written, never completed
            if name != "partial":
                assert store.finish_entry(name, split)
        if name != "partial":
            store.put_checkpoint(replace(ck, val_loss=0.5 + k, val_score=0.9 - k / 10, val_scores={"f1": 0.25},
                                         encode_max_abs_err=0.0, build_seconds=1.5, complete=True))
    (tok / "vocab.txt").unlink()
    tok.rmdir()


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_committed_store_reads_back_exactly(kind, version):
    meta, splits, checkpoints = expected(kind)
    store = open_store(VERSIONS[version] / kind)
    assert store.meta == replace(meta, format_version=version) and store.meta.layout == ("token" if kind == "qa" else "row")
    assert store.split_names() == sorted(splits)
    for name, want in splits.items():
        got = store.read_split(name)
        for field in ("input_ids", "offsets", "labels", "example_ids", "token_type_ids", "offset_mapping",
                      "window_of"):
            a, b = getattr(got, field), getattr(want, field)
            assert (a is None) == (b is None), field
            if a is not None:
                np.testing.assert_array_equal(a, b, err_msg=field)
        assert (got.contexts, got.answers) == (want.contexts, want.answers)
        assert store.split_meta(name).content_sha256 == f"sha-of-{name}"
    complete = [n for n in checkpoints if n != "partial"]
    assert store.checkpoint_names() == complete
    # fields added within format 2 read as unknown from stores written before them
    assert store.meta.source_file is None and store.split_meta(name).truncated_rows is None
    assert all(store.checkpoint(n).split_scores == {} for n in complete)
    assert store.checkpoint_names(complete_only=False) == sorted(checkpoints)
    for name in complete:
        encoding, logits = checkpoints[name]
        assert store.checkpoint(name).encoding == encoding
        for split, values in logits.items():
            e = encode(values, encoding)
            np.testing.assert_array_equal(store.read_logits(name, split), decode(e.values, e.scale))
    if kind == "classification":
        assert store.logits_meta("partial", "train").rows_done == 2
        assert (store.select("tll").name, store.select("ths").name) == ("checkpoint-1", "checkpoint-1")
    else:
        assert store.logits_chunk_rows("qa-1", "validation") == 2


def _nodes(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


#: Attributes added to format 2 after its fixtures were written (older readers ignore them):
#: the tokenizer files' sizes and sha256, and the checkpoints a store has held.
ADDED = {"tokenizer/zarr.json": "logitstore", "zarr.json": "logitstore_checkpoints"}
#: Metadata fields added to format 2 after these fixtures were written (docs/store-format.md;
#: older readers ignore unknown keys), with the value a writer records when it does not know
#: them: StoreMeta.source_file, SplitMeta.truncated_rows, CheckpointMeta.split_scores.
ADDED_FIELDS = {"source_file": None, "truncated_rows": None, "split_scores": {}}


def _added(rel: str, meta: dict, kind: str) -> None:
    """Check and drop what was added since the fixture at node ``rel`` of a new store."""
    fields = meta["attributes"].get("logitstore")
    for name, unknown in ADDED_FIELDS.items():
        if isinstance(fields, dict) and name in fields:
            assert fields.pop(name) == unknown, (rel, name)
    key = ADDED.get(rel)
    if key is None:
        return
    value = meta["attributes"].pop(key)
    if rel == "zarr.json":
        assert value == sorted(n for n in expected(kind)[2] if n != "partial")
    else:
        assert value["complete"] and set(value["files"]) == {"vocab.txt"}


@pytest.mark.parametrize("kind", KINDS)
def test_writing_today_gives_the_committed_files(kind, tmp_path):
    write_fixture(tmp_path / kind, kind)
    old, new = _nodes(FIXTURES / kind), _nodes(tmp_path / kind)
    assert sorted(new) == sorted(old)
    for rel, path in old.items():
        if path.name == "zarr.json":
            assert json.loads(new[rel].read_text()) == json.loads(path.read_text()), rel
        else:  # chunk bytes
            assert new[rel].read_bytes() == path.read_bytes(), rel


@pytest.mark.parametrize("kind", KINDS)
def test_version_4_differs_from_version_2_by_block_records_only(kind, tmp_path):
    """What format 4 changed: each entry's ``blocks`` array (one record per build block) and
    the version number; plus what format 2 gained after its fixtures were written."""
    write_fixture(tmp_path / kind, kind)
    old, new = _nodes(VERSIONS[2] / kind), _nodes(tmp_path / kind)
    records = {rel for rel in new if "/blocks/" in f"/{rel}"}
    assert records and sorted(set(new) - records) == sorted(old)
    for rel, path in old.items():
        if path.name == "zarr.json":
            got = json.loads(new[rel].read_text())
            _added(rel, got, kind)
            want = json.loads(path.read_text())
            if rel == "zarr.json":
                assert got["attributes"]["logitstore"].pop("format_version") == 4
                assert want["attributes"]["logitstore"].pop("format_version") == 2
            for meta in (got, want):  # format 4 keeps each block's error as float32
                fields = meta["attributes"].get("logitstore")
                if isinstance(fields, dict) and "max_abs_err" in fields:
                    fields["max_abs_err"] = float(np.float32(fields["max_abs_err"]))
            assert got == want, rel
            if want["node_type"] == "array":
                a, b = zarr.open_array(path.parent, mode="r"), zarr.open_array(new[rel].parent, mode="r")
                np.testing.assert_array_equal(b[:], a[:], err_msg=rel)


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_committed_tokenizer_bytes(kind, version, tmp_path):
    folder = open_store(VERSIONS[version] / kind).save_tokenizer(tmp_path / "tok")
    assert (folder / "vocab.txt").read_text(encoding="utf-8") == "[PAD]\n[UNK]\ncafé\n"


if __name__ == "__main__":  # how the fixtures were made: python tests/test_store_format.py (never overwrites)
    for kind in KINDS:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        write_fixture(FIXTURES / kind, kind)  # zarr refuses (mode "w-") a folder that holds a store
