"""Demo-only code, not installed with the packages (pyproject installs logitstore* and
students* only): the pinned real assets and their split writers (``python -m demo.assets``,
used by scripts/demo.sh and benchmarks/), and a synthetic SQuAD generator for tests.
Import it from the repository root."""
