#!/usr/bin/env bash
# CISPO for math reasoning: rewards for a correct answer (`accuracy`, math-verify) and for the
# <think>...</think><answer>...</answer> layout (`format`), a system prompt asking for that layout (GPU run),
# dataset columns renamed with --columns, and 1% of the rows held out and evaluated during training.
#
#   bash examples/scripts/cispo_math_accuracy_format.sh            # Qwen2.5-1.5B-Instruct on NuminaMath-TIR (one GPU)
#   SMOKE=1 bash examples/scripts/cispo_math_accuracy_format.sh    # a few steps on the embedded demo model (CPU)
set -euo pipefail
source "$(dirname "$0")/_common.sh"  # repository root, $SWIFT, the demo for SMOKE=1
SYSTEM='A conversation between User and Assistant. The Assistant first thinks about the reasoning process and then gives the answer. The reasoning goes in <think> </think> tags and the answer in <answer> </answer> tags, i.e. <think> reasoning here </think><answer> answer here </answer>.'
if smoke; then
  MODEL="$DEMO_MODEL"
  DATASET="$DEMO_DATA#80"
  COLUMNS='{"answer": "solution"}'  # the demo's reference column, under the name accuracy reads first
  SYSTEM_FLAG=()  # the demo model knows only bare "12+7=" prompts, not chat conversations
  smoke_flags 2 16 1e-3 --split_dataset_ratio 0.1 --eval_steps 1 --per_device_eval_batch_size 16
else
  MODEL="${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}"
  DATASET="${DATASET:-AI-MO/NuminaMath-TIR#5000}"
  COLUMNS='{"problem": "prompt"}'  # the problem text as a plain prompt (the system prompt makes it a chat)
  SYSTEM_FLAG=(--system "$SYSTEM")
  EXTRA=(--max_steps 1000 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 --num_generations 8
         --max_completion_length 2048 --learning_rate 1e-6 --bf16 true --logging_steps 5 --save_steps 200
         --split_dataset_ratio 0.01 --eval_steps 100)
fi
set -x
$SWIFT rlhf \
  "${CISPO[@]}" \
  --model "$MODEL" \
  --dataset "$DATASET" \
  --columns "$COLUMNS" \
  "${SYSTEM_FLAG[@]}" \
  --reward_funcs accuracy format \
  --reward_weights 1.0 0.5 \
  --output_dir "${OUTPUT_DIR:-output/cispo_math-$(date +%Y%m%d-%H%M%S)}" \
  "${EXTRA[@]}" "$@"
