#!/usr/bin/env bash
# CISPO on several machines: run this same script on every node, each with its own NODE_RANK. The
# processes meet at MASTER_ADDR:MASTER_PORT (node 0's address, reachable from all nodes); OUTPUT_DIR
# must be the same path on every node (a shared file system: only global rank 0 writes).
#
#   node 0:  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 OUTPUT_DIR=/shared/run1 DATASET=train.jsonl bash examples/scripts/cispo_multi_node.sh
#   node 1:  NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 OUTPUT_DIR=/shared/run1 DATASET=train.jsonl bash examples/scripts/cispo_multi_node.sh
#   SMOKE=1 bash examples/scripts/cispo_multi_node.sh   # both "nodes" on this machine, 1 CPU process each, demo model
set -euo pipefail
source "$(dirname "$0")/_common.sh"  # repository root, $SWIFT, the demo for SMOKE=1
PLUGIN=examples/scripts/reward_plugin.py
if smoke; then
  MODEL="$DEMO_MODEL"
  DATASET="$DEMO_DATA#64"
  OUTPUT_DIR="${OUTPUT_DIR:-output/cispo_multi_node-$(date +%Y%m%d-%H%M%S)}"
  smoke_flags 2 8 1e-3
else
  MODEL="${MODEL:-Qwen/Qwen2.5-32B-Instruct}"
  DATASET="${DATASET:?set DATASET to a .jsonl file with prompt and answer columns}"
  OUTPUT_DIR="${OUTPUT_DIR:?set OUTPUT_DIR to the same shared path on every node}"
  : "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK (0 on the master node)}" "${MASTER_ADDR:?set MASTER_ADDR to node 0s address}"
  export NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
  EXTRA=(--max_steps 500 --per_device_train_batch_size 4 --gradient_accumulation_steps 4 --num_generations 8
         --max_completion_length 4096 --learning_rate 1e-6 --bf16 true --logging_steps 5 --save_steps 50
         --use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization 0.4 --vllm_tensor_parallel_size 2
         --vllm_max_model_len 8192 --sleep_level 2)
fi
train() {
  $SWIFT rlhf \
    "${CISPO[@]}" \
    --model "$MODEL" \
    --dataset "$DATASET" \
    --external_plugins "$PLUGIN" \
    --reward_funcs answer_match \
    --deepspeed zero3 \
    --output_dir "$OUTPUT_DIR" \
    "${EXTRA[@]}" "$@"
}
if smoke; then
  # Two launchers, as two nodes would run them; node 1 in the background, node 0 here.
  export NNODES=2 NPROC_PER_NODE=1 MASTER_ADDR=127.0.0.1
  export MASTER_PORT="${MASTER_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
  set -x
  NODE_RANK=1 train "$@" &
  NODE1=$!
  NODE_RANK=0 train "$@"
  wait "$NODE1"
else
  set -x
  train "$@"
fi
