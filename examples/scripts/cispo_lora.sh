#!/usr/bin/env bash
# CISPO with LoRA on one GPU: only low-rank adapters train (the base weights stay frozen), the output
# dir holds the adapter, and `swift export --merge_lora true` then folds it into a plain checkpoint
# that transformers and vLLM load without peft.
#
#   DATASET=train.jsonl bash examples/scripts/cispo_lora.sh   # a real model on one GPU
#   SMOKE=1 bash examples/scripts/cispo_lora.sh               # a few steps on the embedded demo model (CPU)
#
# $DATASET: a .jsonl file with a `prompt` (or `messages`) column and an `answer` column.
set -euo pipefail
source "$(dirname "$0")/_common.sh"  # repository root, $SWIFT, the demo for SMOKE=1
PLUGIN=examples/scripts/reward_plugin.py
OUTPUT_DIR="${OUTPUT_DIR:-output/cispo_lora-$(date +%Y%m%d-%H%M%S)}"
if smoke; then
  MODEL="$DEMO_MODEL"
  DATASET="$DEMO_DATA#64"
  smoke_flags 2 16 1e-2
else
  MODEL="${MODEL:-Qwen/Qwen2.5-7B-Instruct}"
  DATASET="${DATASET:?set DATASET to a .jsonl file with prompt and answer columns}"
  # Adapters learn at a higher rate than full fine-tuning; 7B in bf16 plus adapters fits one 80 GB GPU.
  EXTRA=(--max_steps 500 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 --num_generations 8
         --max_completion_length 1024 --learning_rate 1e-5 --bf16 true --logging_steps 5 --save_steps 100)
fi
set -x
$SWIFT rlhf \
  "${CISPO[@]}" \
  --model "$MODEL" \
  --dataset "$DATASET" \
  --external_plugins "$PLUGIN" \
  --reward_funcs answer_match \
  --train_type lora \
  --lora_rank 16 \
  --lora_alpha 32 \
  --lora_dropout 0.05 \
  --target_modules all-linear \
  --output_dir "$OUTPUT_DIR" \
  "${EXTRA[@]}" "$@"
# The merged model: OUTPUT_DIR-merged (loads with AutoModelForCausalLM.from_pretrained).
$SWIFT export --adapters "$OUTPUT_DIR" --merge_lora true
