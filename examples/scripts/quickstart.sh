#!/usr/bin/env bash
# Quickstart: CISPO on a math dataset from the hub, scored by the built-in `accuracy` reward.
#
#   bash examples/scripts/quickstart.sh            # Qwen2.5-0.5B-Instruct on 1000 NuminaMath-TIR problems (one GPU)
#   SMOKE=1 bash examples/scripts/quickstart.sh    # two steps of the embedded demo (CPU, seconds)
#
# MODEL and DATASET override the defaults; extra flags are passed on to `swift rlhf`.
set -euo pipefail
source "$(dirname "$0")/_common.sh"  # repository root, $SWIFT, the demo for SMOKE=1
OUTPUT_DIR="${OUTPUT_DIR:-output/quickstart-$(date +%Y%m%d-%H%M%S)}"
if smoke; then
  # No --model and no --dataset: the embedded demo (a 0.36M-parameter model learning two-number
  # addition, rewarded by exact_match) with its tuned settings; only the length is cut.
  set -x
  $SWIFT rlhf --max_steps 2 --logging_steps 1 --output_dir "$OUTPUT_DIR" "$@"
  exit
fi
set -x
# NuminaMath-TIR rows have a `messages` column (the user's problem is the prompt) and a `solution`
# column (a worked solution ending in \boxed{}), which `accuracy` checks the answer against.
$SWIFT rlhf \
  "${CISPO[@]}" \
  --model "${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}" \
  --dataset "${DATASET:-AI-MO/NuminaMath-TIR#1000}" \
  --reward_funcs accuracy \
  --num_generations 8 \
  --per_device_train_batch_size 8 \
  --gradient_accumulation_steps 4 \
  --max_completion_length 1024 \
  --learning_rate 1e-6 \
  --bf16 true \
  --logging_steps 5 \
  --save_steps 100 \
  --output_dir "$OUTPUT_DIR" \
  "$@"
