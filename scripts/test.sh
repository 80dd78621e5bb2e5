#!/usr/bin/env bash
# Install (scripts/setup.sh) and run the whole test suite offline, with a private HF_HOME.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
HF_HOME="$(mktemp -d)"; export HF_HOME
exec python -m pytest -q "$@"
