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
cd "$(dirname "$0")/../.."
SWIFT="${SWIFT:-swift}"
PLUGIN=examples/scripts/reward_plugin.py
OUTPUT_DIR="${OUTPUT_DIR:-output/cispo_lora-$(date +%Y%m%d-%H%M%S)}"
DEMO_DATA="$(python3 -c 'import swift_cispo.demo as d; print(d.DEMO_DATASET_PATH)' 2>/dev/null || echo swift_cispo/demo/addition.jsonl)"
if [ "${SMOKE:-0}" = "1" ]; then
  MODEL="$(dirname "$DEMO_DATA")/model"
  DATASET="$DEMO_DATA#64"
  EXTRA=(--max_steps 2 --per_device_train_batch_size 16 --num_generations 4 --max_completion_length 4
         --learning_rate 1e-2 --logging_steps 1 --gradient_checkpointing false)
else
  MODEL="${MODEL:-Qwen/Qwen2.5-7B-Instruct}"
  DATASET="${DATASET:?set DATASET to a .jsonl file with prompt and answer columns}"
  # Adapters learn at a higher rate than full fine-tuning; 7B in bf16 plus adapters fits one 80 GB GPU.
  EXTRA=(--max_steps 500 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 --num_generations 8
         --max_completion_length 1024 --learning_rate 1e-5 --bf16 true --logging_steps 5 --save_steps 100)
fi
set -x
$SWIFT rlhf \
  --rlhf_type grpo \
  --model "$MODEL" \
  --dataset "$DATASET" \
  --external_plugins "$PLUGIN" \
  --reward_funcs answer_match \
  --loss_type cispo \
  --epsilon_high 5.0 \
  --train_type lora \
  --lora_rank 16 \
  --lora_alpha 32 \
  --lora_dropout 0.05 \
  --target_modules all-linear \
  --output_dir "$OUTPUT_DIR" \
  "${EXTRA[@]}" "$@"
# The merged model: OUTPUT_DIR-merged (loads with AutoModelForCausalLM.from_pretrained).
$SWIFT export --adapters "$OUTPUT_DIR" --merge_lora true
