#!/usr/bin/env bash
# CISPO with a reward from a plugin file.
#
#   bash examples/scripts/cispo_custom_reward.sh            # a real model (GPU), your dataset in $DATASET
#   SMOKE=1 bash examples/scripts/cispo_custom_reward.sh    # a few steps on the embedded demo model (CPU)
#
# $DATASET: a .jsonl file with a `prompt` (or `messages`) column and an `answer` column.
set -euo pipefail
source "$(dirname "$0")/_common.sh"  # repository root, $SWIFT, the demo for SMOKE=1
PLUGIN=examples/scripts/reward_plugin.py
if smoke; then
  MODEL="$DEMO_MODEL"
  DATASET="$DEMO_DATA#64"
  smoke_flags 2 16 1e-3
else
  MODEL="${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}"
  DATASET="${DATASET:?set DATASET to a .jsonl file with prompt and answer columns}"
  EXTRA=(--max_steps 500 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 --num_generations 8
         --max_completion_length 512 --learning_rate 1e-6 --bf16 true --logging_steps 5 --save_steps 100)
fi
set -x
$SWIFT rlhf \
  "${CISPO[@]}" \
  --model "$MODEL" \
  --dataset "$DATASET" \
  --external_plugins "$PLUGIN" \
  --reward_funcs answer_match \
  --output_dir "${OUTPUT_DIR:-output/cispo_custom_reward-$(date +%Y%m%d-%H%M%S)}" \
  "${EXTRA[@]}" "$@"
