#!/usr/bin/env bash
# CISPO on several GPUs of one machine: NPROC_PER_NODE processes (one per GPU) under torchrun, DeepSpeed
# ZeRO-3 sharding parameters, gradients and optimizer state, vLLM colocated in every process.
#
#   DATASET=train.jsonl bash examples/scripts/cispo_multi_gpu.sh                # 8 GPUs, ZeRO-3, full fine-tuning
#   NPROC_PER_NODE=4 DEEPSPEED=zero2 TRAIN_TYPE=lora DATASET=train.jsonl bash examples/scripts/cispo_multi_gpu.sh
#   SMOKE=1 bash examples/scripts/cispo_multi_gpu.sh                            # 2 CPU processes on gloo, demo model
#
# $DEEPSPEED: zero2, zero3, zero2_offload, zero3_offload or a DeepSpeed JSON file (default zero3).
# $TRAIN_TYPE: full or lora (default full).
set -euo pipefail
source "$(dirname "$0")/_common.sh"  # repository root, $SWIFT, the demo for SMOKE=1
PLUGIN=examples/scripts/reward_plugin.py
DEEPSPEED="${DEEPSPEED:-zero3}"
TRAIN_TYPE="${TRAIN_TYPE:-full}"
if smoke; then
  export NPROC_PER_NODE="${NPROC_PER_NODE:-2}"
  MODEL="$DEMO_MODEL"
  DATASET="$DEMO_DATA#64"
  # Rollouts from the trainer's own generate(): vLLM colocated on CPU is slow to start in every process.
  smoke_flags 2 8 1e-3
else
  export NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
  MODEL="${MODEL:-Qwen/Qwen2.5-7B-Instruct}"
  DATASET="${DATASET:?set DATASET to a .jsonl file with prompt and answer columns}"
  # 8 x 8 completions per micro-batch x 4 accumulation = 256 completions (32 prompts x 8) per optimizer step.
  EXTRA=(--max_steps 500 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 --num_generations 8
         --max_completion_length 2048 --learning_rate 1e-6 --bf16 true --logging_steps 5 --save_steps 100
         --use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization 0.4 --vllm_max_model_len 4096
         --sleep_level 2)
fi
set -x
$SWIFT rlhf \
  "${CISPO[@]}" \
  --model "$MODEL" \
  --dataset "$DATASET" \
  --external_plugins "$PLUGIN" \
  --reward_funcs answer_match \
  --train_type "$TRAIN_TYPE" \
  --deepspeed "$DEEPSPEED" \
  --output_dir "${OUTPUT_DIR:-output/cispo_multi_gpu-$(date +%Y%m%d-%H%M%S)}" \
  "${EXTRA[@]}" "$@"
