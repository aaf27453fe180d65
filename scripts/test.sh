#!/usr/bin/env bash
# The test command: install into .venv, then run the whole test suite.
# Two pytest workers (TEST_WORKERS to change; 0 runs in this process), each taking whole test files, so that
# module fixtures run once. Extra arguments go to pytest: `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder tests "$@"
