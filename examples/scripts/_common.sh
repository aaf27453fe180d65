# Sourced by the example scripts, not run on its own: what they share.
#
# - It moves to the repository root (the scripts name examples/scripts/... from there).
# - $SWIFT is the command (default: swift; the tests set `python -m swift_cispo`).
# - SMOKE=1 turns a recipe into a few steps on the embedded demo model on a CPU: `smoke` tells
#   whether it is set, $DEMO_MODEL and $DEMO_DATA are the demo's model folder and dataset, and
#   `smoke_flags STEPS BATCH LR [FLAG ...]` sets EXTRA to the short run's flags.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SWIFT="${SWIFT:-swift}"
DEMO_DATA="$(python3 -c 'import swift_cispo.demo as d; print(d.DEMO_DATASET_PATH)' 2>/dev/null || echo swift_cispo/demo/addition.jsonl)"
DEMO_MODEL="$(dirname "$DEMO_DATA")/model"

smoke() {
  [ "${SMOKE:-0}" = "1" ]
}

smoke_flags() {
  EXTRA=(--max_steps "$1" --per_device_train_batch_size "$2" --num_generations 4 --max_completion_length 4
         --learning_rate "$3" --logging_steps 1 --gradient_checkpointing false "${@:4}")
}

# What every CISPO recipe here trains: the GRPO family with the CISPO loss, its importance weight
# capped at 5 (MiniMax-M1's setting; see the README's table for what 5.0 means elsewhere).
CISPO=(--rlhf_type grpo --loss_type cispo --epsilon_high 5.0)
