#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the whole test suite and verify the series.
set -euo pipefail
cd "$(dirname "$0")/.."
bash init.sh
python3 scripts/series.py base >/dev/null
status=0
.venv/bin/python -m pytest tests -q -p no:cacheprovider "$@" || status=$?
if [ "$status" = 5 ]; then
  echo "run_tests.sh: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
[ "$status" = 0 ] || exit "$status"
bash scripts/verify.sh
