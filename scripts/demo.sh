#!/usr/bin/env bash
# The main job: install into .venv, then train the embedded demo with CISPO.
# Every hyper-parameter is on the command line below; extra flags are passed through
# (e.g. `bash scripts/demo.sh --max_steps 50 --output_dir output/short`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
set -x
exec .venv/bin/swift rlhf \
  --rlhf_type grpo \
  --loss_type cispo \
  --epsilon_high 5.0 \
  "$@"
