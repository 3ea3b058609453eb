#!/usr/bin/env bash
# The main job: set up, apply patches/ to a fresh copy of the base (as a user does), then evaluate
# stock against ours with the judge's protocol and write eval_output/report.md.
#   bash test.sh [eval/run.py options, e.g. --families qwen2_moe --max-new-tokens 20]
#   bash test.sh --device-check [eval/device_check.py options]   (on a machine with an Ascend 910B)
# Families whose weights download.sh laid under llm/ run on them; the others on generated fixtures.
set -euo pipefail
cd "$(dirname "$0")"
bash init.sh
# A tree of this run's own: a second run from the same checkout cannot replace it under this one.
mkdir -p .build
tree=$(mktemp -d "$PWD/.build/eval-tree.XXXXXX")
trap 'rm -rf "$tree"' EXIT
python3 scripts/series.py apply "$tree"
script=eval/run.py
if [[ "${1:-}" == "--device-check" ]]; then
    script=eval/device_check.py
    shift
fi
PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}" .venv/bin/python "$script" "$@"
