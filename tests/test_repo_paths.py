"""No tracked file depends on one machine's layout.

A test once read its tokenizer by an absolute path into the developer's checkout cache:
it passed on that machine and failed on every other one. This check fails when a tracked
file names an absolute path into a home, checkout, cache or scratch folder, or the
absolute path of this checkout itself.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Absolute paths under the usual roots of homes, checkouts, caches and scratch space.
MACHINE_PATH = re.compile(r"(?<![A-Za-z0-9_.~-])/(?:work|home|root|Users|tmp|opt|mnt|srv|var|scratch|data)/[A-Za-z0-9_.-]")
THIS_FILE = Path(__file__).name


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but caches and the venv
        skip = {".git", ".venv", ".cache", "__pycache__", ".pytest_cache"}
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    return [ROOT / n for n in names if Path(n).name != THIS_FILE]


def _machine_paths(text: str, checkout: str) -> list[str]:
    hits = [m.group(0) for m in MACHINE_PATH.finditer(text)]
    if checkout in text:
        hits.append(checkout)
    return hits


def test_the_pattern_catches_what_it_must_and_passes_relative_paths():
    root = "/"  # the examples are assembled so that this file itself names no machine path
    bad = (f'TOKENIZER = Path("{root}work/main/.cache/assets/minilm")\nHOME = "{root}home/alice/x"\n'
           f"cd {root}root/.cache\n")
    assert len(_machine_paths(bad, "/nowhere/checkout")) == 3
    good = 'ASSETS = Path(__file__).parents[1] / ".cache" / "assets"\nurl = "s3://bucket/key"\n'
    good += "default ~/.cache/logitstore, see docs/store-format.md, http://host/work/x"
    assert _machine_paths(good, "/nowhere/checkout") == []
    assert _machine_paths("x = '/nowhere/checkout/tests'", "/nowhere/checkout") == ["/nowhere/checkout"]


def test_no_tracked_file_holds_an_absolute_machine_path():
    files = _tracked_files()
    assert len(files) > 20, "found too few tracked files; is ROOT right?"
    found = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files (PNG plots) hold no paths we could act on
        found += [f"{f.relative_to(ROOT)}: {hit}" for hit in _machine_paths(text, str(ROOT))]
    assert not found, "absolute machine paths in tracked files (use paths relative to the checkout):\n" + "\n".join(found)
